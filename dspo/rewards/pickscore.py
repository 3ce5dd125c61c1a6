"""PickScore (Kirstain et al., 2023): a CLIP ViT-H/14 fine-tuned on Pick-a-Pic preferences.

Score = ``logit_scale.exp() * cos(image, prompt)`` (about 18 to 23 on real images), the
published scoring rule; the processor is the base laion ViT-H/14 one, as in its model card.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from dspo.rewards.clip_score import HubClip
from dspo.rewards.hub_defaults import PICKSCORE_MODEL, PICKSCORE_PROCESSOR


class PickScore(HubClip):
    """PickScore from a hub id or local ``CLIPModel`` folder (`model`) and `processor`."""

    def __init__(self, spec: Mapping[str, Any], device: str = "cpu") -> None:
        super().__init__(
            spec, device, default_model=PICKSCORE_MODEL, default_processor=PICKSCORE_PROCESSOR
        )
        self.version = f"pickscore {self.model_name}"

    @torch.no_grad()
    def score(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> np.ndarray:
        scale = self.model.logit_scale.float().exp()
        return (scale * self.cosines(images, prompts)).cpu().numpy().astype(np.float64)
