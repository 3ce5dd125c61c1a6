"""Fault injection: the workflow under bad config, hostile strings and damaged files."""
