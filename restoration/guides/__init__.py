"""Frozen pre-trained feature extractors ("guides") that condition a restoration network."""
