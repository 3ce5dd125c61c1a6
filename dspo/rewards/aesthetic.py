"""LAION aesthetics predictor v2 (improved-aesthetic-predictor): an MLP on CLIP ViT-L/14.

The head (768-1024-128-64-16-1 Linear layers with Dropout between, no activations) reads the
L2-normalised image embedding of OpenAI's CLIP ViT-L/14 and outputs a rating on the AVA
1-10 scale. The original scores with OpenAI's ``clip`` package; ``openai/clip-vit-large-patch14``
is the same weights in transformers' layout, fed with OpenAI CLIP's own transform
(``dspo.rewards.transforms.center_crop``). The CLIP model and the head file load strictly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from dspo.rewards.checks import check_batch, check_keys
from dspo.rewards.common import (
    clip_model,
    linear_stack,
    load_state_dict,
    reject_unused,
    resolve_file,
    spec_dtype,
)
from dspo.rewards.hub_defaults import AESTHETIC_CLIP
from dspo.rewards.transforms import center_crop_pixels


class LaionAesthetics:
    """Aesthetic rating of each image (prompts are ignored)."""

    def __init__(self, spec: Mapping[str, Any], device: str = "cpu") -> None:
        check_keys(spec, {"checkpoint", "repo", "clip_model"})
        path = resolve_file(spec, "checkpoint", None, spec.get("repo"))
        clip_name = spec.get("clip_model", AESTHETIC_CLIP)
        self.device = device
        self.clip = clip_model(clip_name, spec_dtype(spec)).to(device).eval()
        state = load_state_dict(path)
        head = linear_stack(state, "layers.", path)
        reject_unused(state, [f"layers.{k}" for k in head.state_dict()], path)
        self.head = head.to(device).eval()
        if self.head[0].in_features != self.clip.config.projection_dim:
            raise ValueError(
                f"{path} expects {self.head[0].in_features}-d embeddings but {clip_name} "
                f"gives {self.clip.config.projection_dim}-d ones"
            )
        self.size = self.clip.config.vision_config.image_size
        self.version = f"laion_aesthetics {spec['checkpoint']} on {clip_name}"

    @torch.no_grad()
    def score(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> np.ndarray:
        check_batch(images, prompts)
        pixels = center_crop_pixels(images, self.size).to(self.device, self.clip.dtype)
        embeds = self.clip.get_image_features(pixel_values=pixels).pooler_output.float()
        embeds = torch.nn.functional.normalize(embeds, dim=-1)
        return self.head(embeds)[:, 0].cpu().numpy().astype(np.float64)
