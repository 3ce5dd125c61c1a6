"""The config's dtype names (``base_model.dtype``, ``cache.dtype``,
``evaluation.rewards.*.dtype``, the degrader's ``dtype``) and the torch dtypes they name.

Its own module, importing torch alone, so that jobs that only score images (the rewards) do
not import diffusers to read a dtype name.
"""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(name: str) -> torch.dtype:
    """Map a config dtype name to a torch dtype, with an error that lists the valid names."""
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(DTYPES)}")
    return DTYPES[name]
