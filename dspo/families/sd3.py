"""SD3 / SD3.5: an MMDiT transformer trained by flow matching, two CLIP towers and T5."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from transformers import CLIPTextModelWithProjection

from dspo.families.base import Conditions
from dspo.families.flow import FlowFamily
from dspo.families.text import build_t5_tokenizer, build_tokenizer, clip_encoder, t5_encoder


class SD3Family(FlowFamily):
    name = "sd3"
    pipeline_class = StableDiffusion3Pipeline
    pipeline_names = ("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline")
    denoiser = "transformer"
    denoiser_class = SD3Transformer2DModel
    text_keys = ("embeddings", "pooled")
    default_max_sequence_length = 256  # the pipeline's default T5 length

    def encode_prompts(
        self, pipe: DiffusionPipeline, prompts: list[str], batch_size: int = 256
    ) -> dict[str, torch.Tensor]:
        """The pipeline's own encoding: CLIP-L and CLIP-G penultimate states side by side,
        padded to T5's width and followed by T5's tokens; the two pooled outputs joined."""
        hidden, pooled = [], []
        with torch.no_grad():
            for start in range(0, len(prompts), batch_size):
                chunk = prompts[start : start + batch_size]
                embeds, _, pool, _ = pipe.encode_prompt(
                    prompt=chunk,
                    prompt_2=chunk,
                    prompt_3=chunk,
                    device=pipe.text_encoder.device,
                    do_classifier_free_guidance=False,
                    max_sequence_length=self.sequence_length(pipe),
                )
                hidden.append(embeds)
                pooled.append(pool)
        return {"embeddings": torch.cat(hidden), "pooled": torch.cat(pooled)}

    def predict(self, denoiser, x_t: torch.Tensor, t: torch.Tensor, cond: Conditions):
        # The pipeline passes the scheduler's timesteps, sigma * num_train_timesteps.
        return denoiser(
            hidden_states=x_t,
            timestep=t * self.scheduler_config.get("num_train_timesteps", 1000),
            encoder_hidden_states=cond["embeddings"],
            pooled_projections=cond["pooled"],
        ).sample

    @classmethod
    def build(cls, architecture: Mapping[str, Any], words: Sequence[str], seed: int = 0):
        """A random-init SD3-shaped pipeline.

        ``architecture``: ``max_length`` (CLIP tokens), ``text_encoder`` and ``text_encoder_2``
        (CLIPTextConfig with ``projection_dim``), ``text_encoder_3`` (T5Config: ``d_model``,
        ``d_kv``, ``d_ff``, ``num_layers``, ``num_heads``), ``t5_max_length``, ``vae``
        (AutoencoderKL, ``shift_factor`` included), ``transformer`` (SD3Transformer2DModel)
        and ``scheduler`` (FlowMatchEulerDiscreteScheduler). The transformer's channels, joint
        attention and pooled widths follow the VAE and text encoders.
        """
        torch.manual_seed(seed)
        max_length = architecture["max_length"]
        tokenizer = build_tokenizer(words, max_length)
        encoders = [
            clip_encoder(architecture[key], tokenizer, max_length, CLIPTextModelWithProjection)
            for key in ("text_encoder", "text_encoder_2")
        ]
        t5_tokenizer = build_t5_tokenizer(words, architecture["t5_max_length"])
        t5 = t5_encoder(architecture["text_encoder_3"], t5_tokenizer)
        clip_width = sum(e.config.hidden_size for e in encoders)
        if clip_width > t5.config.d_model:
            raise ValueError(
                f"architecture: the CLIP widths add up to {clip_width}, more than T5's d_model "
                f"{t5.config.d_model}; SD3 pads the CLIP states to T5's width"
            )
        vae = AutoencoderKL(**architecture["vae"])
        cfg = dict(architecture["transformer"])
        patches = cfg["sample_size"] // cfg.get("patch_size", 2)
        cfg.setdefault("pos_embed_max_size", patches)
        cfg.setdefault(
            "caption_projection_dim", cfg["attention_head_dim"] * cfg["num_attention_heads"]
        )
        cfg.update(
            in_channels=vae.config.latent_channels,
            out_channels=vae.config.latent_channels,
            joint_attention_dim=t5.config.d_model,
            pooled_projection_dim=sum(e.config.projection_dim for e in encoders),
        )
        return StableDiffusion3Pipeline(
            transformer=SD3Transformer2DModel(**cfg),
            scheduler=FlowMatchEulerDiscreteScheduler(**architecture.get("scheduler", {})),
            vae=vae,
            text_encoder=encoders[0],
            tokenizer=tokenizer,
            text_encoder_2=encoders[1],
            tokenizer_2=copy.deepcopy(tokenizer),
            text_encoder_3=t5,
            tokenizer_3=t5_tokenizer,
        )
