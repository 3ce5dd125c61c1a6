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

from dspo.rewards.common import check_batch, check_keys, cosine, spec_dtype

DEFAULT_CLIP = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


class HubClip:
    """A transformers ``CLIPModel`` with its own tokenizer and (PIL) image processor."""

    def __init__(self, model: str, processor: str, device: str, dtype: torch.dtype) -> None:
        from transformers import AutoTokenizer, CLIPImageProcessorPil, CLIPModel

        self.device = device
        # The PIL image processor is the one the CLIP repos were evaluated with; naming it
        # keeps preprocessing identical whether or not torchvision is installed.
        self.image_processor = CLIPImageProcessorPil.from_pretrained(processor)
        self.tokenizer = AutoTokenizer.from_pretrained(processor)
        self.model = CLIPModel.from_pretrained(model, dtype=dtype).to(device).eval()

    @torch.no_grad()
    def cosines(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> torch.Tensor:
        """Cosine of each image with its prompt (float32, on the model's device)."""
        check_batch(images, prompts)
        pixels = self.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
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
        check_keys(spec, {"model", "processor"})
        model = spec.get("model", DEFAULT_CLIP)
        super().__init__(model, spec.get("processor", model), device, spec_dtype(spec))
        self.version = f"clip_score cosine {model}"

    def score(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> np.ndarray:
        return self.cosines(images, prompts).cpu().numpy().astype(np.float64)
