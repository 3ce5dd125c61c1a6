"""SDXL: the SD family with two text encoders, pooled text and time-id added conditions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from diffusers import DiffusionPipeline, StableDiffusionXLPipeline

from dspo.families.base import Conditions
from dspo.families.sd import SDFamily


class SDXLFamily(SDFamily):
    name = "sdxl"
    pipeline_class = StableDiffusionXLPipeline
    pipeline_names = ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline")
    text_keys = ("embeddings", "pooled")
    image_keys = ("time_ids",)

    @classmethod
    def matches_denoiser(cls, class_name: str, config: Mapping[str, Any]) -> bool:
        return class_name == cls.denoiser_class.__name__ and (
            config.get("addition_embed_type") == "text_time"
        )

    def encode_prompts(
        self, pipe: DiffusionPipeline, prompts: list[str], batch_size: int = 256
    ) -> dict[str, torch.Tensor]:
        """Penultimate states of both encoders side by side, and the second's pooled output."""
        from dspo.families.sd_pipeline import encode_text

        hidden, pooled = encode_text(pipe, prompts, batch_size=batch_size)
        return {"embeddings": hidden, "pooled": pooled}

    def image_conditions(self, original_size, crop, resolution: int) -> dict[str, torch.Tensor]:
        """Time ids (original h, w, crop top, left, target h, w), as SDXL was trained."""
        original_size, crop = torch.as_tensor(original_size), torch.as_tensor(crop)
        target = torch.tensor([resolution] * 2).expand(len(original_size), 2)
        return {"time_ids": torch.cat([original_size, crop, target], dim=1).float()}

    def _added(self, cond: Conditions) -> dict[str, torch.Tensor]:
        return {"text_embeds": cond["pooled"], "time_ids": cond["time_ids"]}
