"""Evaluation of generated images: statistics, tables and plots."""
