"""Preference pairs, prompt sets and the latent cache (the toy world is `dspo.toy`)."""
