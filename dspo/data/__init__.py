"""Preference pairs, prompt sets, the toy world and the latent cache."""
