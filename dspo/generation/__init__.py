"""Sampling evaluation images and editing images with a model."""
