"""SDXL: the SD family with two text encoders, pooled text and time-id added conditions."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from diffusers import DiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextModelWithProjection

from dspo.families.base import Conditions
from dspo.families.sd import SDFamily, base_parts, encode_text
from dspo.families.text import clip_encoder


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

    @classmethod
    def build(cls, architecture: Mapping[str, Any], words: Sequence[str], seed: int = 0):
        """A random-init SDXL-shaped pipeline: SD's architecture mapping (``SDFamily.build``)
        plus ``text_encoder_2`` (CLIPTextConfig of the CLIPTextModelWithProjection) and
        ``addition_time_embed_dim``. The UNet's cross-attention and added embedding widths
        (pooled text + 6 time ids) follow the text encoders so they always fit.
        """
        parts = base_parts(architecture, words, seed)
        tokenizer, max_length = parts["tokenizer"], architecture["max_length"]
        text_encoder_2 = clip_encoder(
            architecture["text_encoder_2"], tokenizer, max_length, CLIPTextModelWithProjection
        )
        time_dim = architecture["addition_time_embed_dim"]
        unet_cfg = {
            **architecture["unet"],
            "cross_attention_dim": parts["text_encoder"].config.hidden_size
            + text_encoder_2.config.hidden_size,
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": time_dim,
            "projection_class_embeddings_input_dim": text_encoder_2.config.projection_dim
            + 6 * time_dim,
        }
        return StableDiffusionXLPipeline(
            **parts,
            text_encoder_2=text_encoder_2,
            tokenizer_2=copy.deepcopy(tokenizer),
            unet=UNet2DConditionModel(**unet_cfg),
        )

    def encode_prompts(
        self, pipe: DiffusionPipeline, prompts: list[str], batch_size: int = 256
    ) -> dict[str, torch.Tensor]:
        """Penultimate states of both encoders side by side, and the second's pooled output."""
        hidden, pooled = encode_text(pipe, prompts, batch_size=batch_size)
        return {"embeddings": hidden, "pooled": pooled}

    def image_conditions(self, original_size, crop, resolution: int) -> dict[str, torch.Tensor]:
        """Time ids (original h, w, crop top, left, target h, w), as SDXL was trained."""
        original_size, crop = torch.as_tensor(original_size), torch.as_tensor(crop)
        target = torch.tensor([resolution] * 2).expand(len(original_size), 2)
        return {"time_ids": torch.cat([original_size, crop, target], dim=1).float()}

    def _added(self, cond: Conditions) -> dict[str, torch.Tensor]:
        return {"text_embeds": cond["pooled"], "time_ids": cond["time_ids"]}
