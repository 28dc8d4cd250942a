"""LightningModules, one per training stage, on the shared base in ``base.py``."""
