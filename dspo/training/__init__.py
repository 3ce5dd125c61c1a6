"""Preference fine-tuning: settings, batches and losses, the policy and its reference, checkpoints, guards, launch and the run's records."""
