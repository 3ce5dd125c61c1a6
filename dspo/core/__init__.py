"""Mechanisms every stage shares.

Atomic files, content keys, seeding, the keys of generated images, and job progress.
"""
