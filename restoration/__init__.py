"""Hydra + PyTorch Lightning experiments for image restoration with pre-trained models."""

__version__ = "0.1.0"
