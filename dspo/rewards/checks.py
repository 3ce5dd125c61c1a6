"""The checks every reward model makes of its config entry and of each batch (no torch:
the toy world's rewards make them too)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from PIL import Image

COMMON_KEYS = frozenset({"kind", "label", "dtype"})


def check_keys(spec: Mapping[str, Any], allowed: Iterable[str]) -> None:
    """Reject config keys a reward kind does not read, naming the kind and the keys."""
    unknown = sorted(set(spec) - COMMON_KEYS - set(allowed))
    if unknown:
        raise ValueError(
            f"reward kind {spec.get('kind')!r} does not take {unknown}; "
            f"expected keys among {sorted(COMMON_KEYS | set(allowed))}"
        )


def check_batch(images: Sequence[Image.Image], prompts: Sequence[str]) -> None:
    """One prompt per image."""
    if len(images) != len(prompts):
        raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
