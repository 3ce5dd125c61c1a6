"""Random generators whose state is a pure function of where they are used.

A batch's rows, noise, timesteps and dropout, a sample's initial noise and an edit's noise
each come from a generator seeded by (run seed, position): the same position draws the same
numbers whatever ran before it, in any process, after any resume.
"""

from __future__ import annotations

import torch

_MIX = 1_000_003
_MODULUS = 2**63 - 1


def seeded_generator(seed: int, *parts: int) -> torch.Generator:
    """A CPU generator seeded by ``seed`` and the position ``parts`` (mixed in order)."""
    mixed = int(seed)
    for part in parts:
        mixed = (mixed * _MIX + int(part)) % _MODULUS
    return torch.Generator().manual_seed(mixed)
