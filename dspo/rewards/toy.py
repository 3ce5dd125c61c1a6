"""The toy world's oracle, split into its parts, as reward models."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from dspo.data.toy import oracle_scores

PARTS = ("alignment", "aesthetic", "total")


class ToyOracleReward:
    """Scores images from pixels against their captions with one part of the toy oracle."""

    def __init__(self, part: str = "total") -> None:
        if part not in PARTS:
            raise ValueError(f"unknown toy oracle part {part!r}; expected one of {PARTS}")
        self.part = part
        self.version = f"toy_oracle {part}"

    def score(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> np.ndarray:
        pixels = np.stack([np.asarray(image.convert("RGB"), dtype=np.uint8) for image in images])
        return oracle_scores(pixels, list(prompts))[self.part]
