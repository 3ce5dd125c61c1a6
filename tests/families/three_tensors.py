"""A model family known only to the tests, with a third prompt tensor of its own.

``ThreeTensorFamily`` is SD with two more prompt tensors (``pooled``, and ``t5``, standing for
T5 hidden states), declared only here: its ``text_keys``, its ``encode_prompts`` and its
``predict``. :func:`register` adds it to the families' registry for one test, ahead of ``sd``
so that it claims the tiny SD pipeline (tests/conftest.py's ``tiny_model``).
"""

from __future__ import annotations

import pytest
import torch

import dspo.families
from dspo.families.sd import SDFamily


class ThreeTensorFamily(SDFamily):
    """SD's cross-attention states, their mean over tokens, and T5-like states of 3 tokens."""

    name = "three"
    text_keys = ("embeddings", "pooled", "t5")

    def encode_prompts(self, pipe, prompts, batch_size=256):
        hidden = super().encode_prompts(pipe, prompts, batch_size)["embeddings"]
        return {"embeddings": hidden, "pooled": hidden.mean(1), "t5": 2 * hidden[:, :3].flip(1)}

    def predict(self, denoiser, x_t, t, cond):
        # Its own forward reads its own tensor: the T5-like states after the CLIP ones.
        states = torch.cat([cond["embeddings"], cond["t5"]], dim=1)
        return super().predict(denoiser, x_t, t, {"embeddings": states})


def register(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``three`` a registered family, first in the registry, until the test ends."""
    registry = {"three": f"{__name__}:ThreeTensorFamily", **dspo.families.REGISTRY}
    monkeypatch.setattr(dspo.families, "REGISTRY", registry)
