"""Preference fine-tuning.

Settings, batches and losses, the policy and its reference, checkpoints and their
fingerprints, guards, the launcher, and the run's records.
"""
