"""CLIP score: the cosine between a CLIP model's image and prompt embeddings.

The DSPO paper's CLIP column uses the ViT-H/14 (laion2B) model also behind PickScore; the
score is the plain cosine (about 0.2 to 0.4), not Hessel et al.'s ``2.5 * max(cos, 0)`` nor
``100 * cos``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from dspo.rewards.checks import check_batch, check_keys
from dspo.rewards.common import clip_model, cosine, spec_dtype
from dspo.rewards.hub_defaults import CLIP_SCORE_MODEL
from dspo.rewards.transforms import to_rgb


class HubClip:
    """A transformers ``CLIPModel`` with its own tokenizer and (PIL) image processor.

    Config keys: `model` (hub id or local folder, ``default_model`` when unset) and
    `processor` (where the tokenizer and image processor live; ``default_processor``, or the
    model's own folder when that is None), plus the shared `dtype`.
    """

    def __init__(
        self,
        spec: Mapping[str, Any],
        device: str,
        default_model: str,
        default_processor: str | None,
    ) -> None:
        from transformers import AutoTokenizer, CLIPImageProcessorPil

        check_keys(spec, {"model", "processor"})
        self.model_name = model = spec.get("model", default_model)
        processor = spec.get("processor", default_processor or model)
        self.device = device
        # The PIL image processor is the one the CLIP repos were evaluated with; naming it
        # keeps preprocessing identical whether or not torchvision is installed.
        self.image_processor = CLIPImageProcessorPil.from_pretrained(processor)
        self.tokenizer = AutoTokenizer.from_pretrained(processor)
        self.model = clip_model(model, spec_dtype(spec)).to(device).eval()

    @torch.no_grad()
    def cosines(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> torch.Tensor:
        """Cosine of each image with its prompt (float32, on the model's device)."""
        check_batch(images, prompts)
        # PIL's plain RGB conversion (alpha and transparent colour dropped), as the processors
        # of transformers 4.x that PickScore was published with did; transformers 5
        # composites either onto white.
        rgb = [to_rgb(image) for image in images]
        pixels = self.image_processor(images=rgb, return_tensors="pt")["pixel_values"]
        text = self.tokenizer(
            list(prompts),
            padding=True,
            truncation=True,
            max_length=self.model.config.text_config.max_position_embeddings,
            return_tensors="pt",
        ).to(self.device)
        image_embeds = self.model.get_image_features(
            pixel_values=pixels.to(self.device, self.model.dtype)
        ).pooler_output
        text_embeds = self.model.get_text_features(**text).pooler_output
        return cosine(image_embeds, text_embeds)


class ClipScore(HubClip):
    """CLIP score = cos(image, prompt) under a CLIP model from the hub or a local folder."""

    def __init__(self, spec: Mapping[str, Any], device: str = "cpu") -> None:
        super().__init__(spec, device, default_model=CLIP_SCORE_MODEL, default_processor=None)
        self.version = f"clip_score cosine {self.model_name}"

    def score(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> np.ndarray:
        return self.cosines(images, prompts).cpu().numpy().astype(np.float64)
