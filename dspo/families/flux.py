"""FLUX.1: a transformer on packed 2x2 latent patches, flow matching, CLIP pooled + T5.

FLUX.1-dev is guidance-distilled: the guidance scale enters as an embedding, not through
classifier-free guidance, so training passes a fixed ``guidance`` (3.5, as diffusers'
FLUX fine-tuning examples do) and sampling's ``guidance_scale`` sets that embedding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
)

from dspo.families.base import Conditions
from dspo.families.flow import FlowFamily, FlowTimesteps
from dspo.families.text import build_t5_tokenizer, build_tokenizer, clip_encoder, t5_encoder


def pack(latents: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, H/2 * W/2, 4C): one token per 2x2 patch, as FLUX reads latents."""
    n, c, h, w = latents.shape
    patches = latents.view(n, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(n, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of `pack` for latents of ``height`` x ``width``."""
    n, _, channels = tokens.shape
    patches = tokens.view(n, height // 2, width // 2, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return patches.reshape(n, channels // 4, height, width)


def image_ids(height: int, width: int, device, dtype) -> torch.Tensor:
    """Positions (0, row, column) of the packed tokens, for FLUX's rotary embedding."""
    ids = torch.zeros(height // 2, width // 2, 3)
    ids[..., 1] += torch.arange(height // 2)[:, None]
    ids[..., 2] += torch.arange(width // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


class FluxFamily(FlowFamily):
    name = "flux"
    pipeline_class = FluxPipeline
    pipeline_names = ("FluxPipeline", "FluxImg2ImgPipeline")
    denoiser = "transformer"
    denoiser_class = FluxTransformer2DModel
    text_keys = ("embeddings", "pooled")
    default_max_sequence_length = 512  # the pipeline's default T5 length
    t5_tokenizer = "tokenizer_2"

    def __init__(
        self,
        scheduler_config: Mapping[str, Any],
        *,
        noise_form: bool = False,
        timesteps: FlowTimesteps | Mapping[str, Any] | None = None,
        max_sequence_length: int | None = None,
        guidance: float = 3.5,
    ) -> None:
        super().__init__(
            scheduler_config,
            noise_form=noise_form,
            timesteps=timesteps,
            max_sequence_length=max_sequence_length,
        )
        self.guidance = guidance

    def encode_prompts(
        self, pipe: DiffusionPipeline, prompts: list[str], batch_size: int = 256
    ) -> dict[str, torch.Tensor]:
        """The pipeline's own encoding: T5 states, and CLIP's pooled output."""
        hidden, pooled = [], []
        with torch.no_grad():
            for start in range(0, len(prompts), batch_size):
                chunk = prompts[start : start + batch_size]
                embeds, pool, _ = pipe.encode_prompt(
                    prompt=chunk,
                    prompt_2=chunk,
                    device=pipe.text_encoder.device,
                    max_sequence_length=self.sequence_length(pipe),
                )
                hidden.append(embeds)
                pooled.append(pool)
        return {"embeddings": torch.cat(hidden), "pooled": torch.cat(pooled)}

    def predict(self, denoiser, x_t: torch.Tensor, t: torch.Tensor, cond: Conditions):
        n, _, h, w = x_t.shape
        text = cond["embeddings"]
        guidance = None
        if denoiser.config.guidance_embeds:
            guidance = torch.full((n,), self.guidance, device=x_t.device, dtype=torch.float32)
        out = denoiser(
            hidden_states=pack(x_t),
            timestep=t.to(x_t.dtype),  # FLUX's transformer takes sigma and scales it itself
            guidance=guidance,
            pooled_projections=cond["pooled"],
            encoder_hidden_states=text,
            txt_ids=torch.zeros(text.shape[1], 3, device=x_t.device, dtype=x_t.dtype),
            img_ids=image_ids(h, w, x_t.device, x_t.dtype),
        ).sample
        return unpack(out, h, w)

    def latent_channels(self, denoiser) -> int:
        return denoiser.config.in_channels // 4  # it reads 2x2 patches of them

    def latent_shape(self, pipe: DiffusionPipeline, resolution: int) -> tuple[int, int, int]:
        # Packing needs even latent sides, as the pipeline rounds them.
        side = 2 * (resolution // (pipe.vae_scale_factor * 2))
        return (pipe.transformer.config.in_channels // 4, side, side)

    def native_resolution(self, pipe: DiffusionPipeline) -> int:
        return pipe.default_sample_size * pipe.vae_scale_factor

    def pipeline_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return pack(latents)

    @classmethod
    def build(cls, architecture: Mapping[str, Any], words: Sequence[str], seed: int = 0):
        """A random-init FLUX-shaped pipeline.

        ``architecture``: ``max_length`` (CLIP tokens), ``text_encoder`` (CLIPTextConfig),
        ``text_encoder_2`` (T5Config), ``t5_max_length``, ``vae`` (AutoencoderKL),
        ``transformer`` (FluxTransformer2DModel; ``axes_dims_rope`` must add up to
        ``attention_head_dim``) and ``scheduler``. Channels and text widths are derived.
        """
        torch.manual_seed(seed)
        max_length = architecture["max_length"]
        tokenizer = build_tokenizer(words, max_length)
        clip = clip_encoder(architecture["text_encoder"], tokenizer, max_length)
        t5_tokenizer = build_t5_tokenizer(words, architecture["t5_max_length"])
        t5 = t5_encoder(architecture["text_encoder_2"], t5_tokenizer)
        vae = AutoencoderKL(**architecture["vae"])
        cfg = {"guidance_embeds": True, **architecture["transformer"]}
        rope = cfg.get("axes_dims_rope", (16, 56, 56))
        if sum(rope) != cfg["attention_head_dim"]:
            raise ValueError(
                f"architecture.transformer: axes_dims_rope {list(rope)} must add up to "
                f"attention_head_dim {cfg['attention_head_dim']}"
            )
        cfg.update(
            in_channels=4 * vae.config.latent_channels,
            joint_attention_dim=t5.config.d_model,
            pooled_projection_dim=clip.config.hidden_size,
        )
        return FluxPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(**architecture.get("scheduler", {})),
            vae=vae,
            text_encoder=clip,
            tokenizer=tokenizer,
            text_encoder_2=t5,
            tokenizer_2=t5_tokenizer,
            transformer=FluxTransformer2DModel(**cfg),
        )
