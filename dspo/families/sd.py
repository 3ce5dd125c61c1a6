"""Stable Diffusion 1.x / 2.x: a UNet on a DDPM noise schedule, epsilon or v-prediction."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)

from dspo.families.base import Conditions, Family
from dspo.families.text import build_tokenizer, clip_encoder

# evaluation.scheduler: the schedulers an SD-shaped pipeline samples with.
SAMPLING_SCHEDULERS = {"ddim": DDIMScheduler, "ddpm": DDPMScheduler}


def sampling_scheduler(pipe: DiffusionPipeline, name: str) -> None:
    """Swap the pipeline's scheduler for sampling, keeping its noise schedule."""
    if name not in SAMPLING_SCHEDULERS:
        raise ValueError(
            f"unknown sampling scheduler {name!r}; expected one of {sorted(SAMPLING_SCHEDULERS)}"
        )
    pipe.scheduler = SAMPLING_SCHEDULERS[name].from_config(pipe.scheduler.config)


@torch.no_grad()
def encode_text(
    pipe: DiffusionPipeline, prompts: list[str], batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Hidden states (N, tokens, dim) for cross-attention and, for SDXL, pooled (N, dim).

    SDXL, as its pipeline does: the penultimate hidden states of both text encoders side by
    side, and the projected pooled output of the second. SD: the last hidden states, no pooled.
    """
    encoders = [(pipe.tokenizer, pipe.text_encoder)]
    if getattr(pipe, "text_encoder_2", None) is not None:
        encoders.append((pipe.tokenizer_2, pipe.text_encoder_2))
    hidden, pooled = [], []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        states = []
        for tokenizer, encoder in encoders:
            ids = tokenizer(
                chunk,
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(encoder.device)
            if len(encoders) == 1:
                states.append(encoder(ids)[0])
                continue
            out = encoder(ids, output_hidden_states=True)
            states.append(out.hidden_states[-2])
            if hasattr(out, "text_embeds"):
                pooled.append(out.text_embeds)
        hidden.append(torch.cat(states, dim=-1))
    return torch.cat(hidden), torch.cat(pooled) if pooled else None


def base_parts(architecture: Mapping[str, Any], words: Sequence[str], seed: int) -> dict[str, Any]:
    """The random-init parts SD and SDXL share: CLIP tokenizer and encoder, VAE, scheduler.

    Drawn in this order after seeding with ``seed``, so that a family adding parts after
    them keeps these weights.
    """
    torch.manual_seed(seed)
    max_length = architecture["max_length"]
    tokenizer = build_tokenizer(words, max_length)
    return {
        "tokenizer": tokenizer,
        "text_encoder": clip_encoder(architecture["text_encoder"], tokenizer, max_length),
        "vae": AutoencoderKL(**architecture["vae"]),
        "scheduler": DDPMScheduler(**architecture.get("scheduler", {})),
    }


class SDFamily(Family):
    name = "sd"
    pipeline_class = StableDiffusionPipeline
    pipeline_names = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline")
    denoiser_class = UNet2DConditionModel
    pretrain_trains_text = True

    def __init__(self, scheduler_config: Mapping[str, Any], *, noise_form: bool = False) -> None:
        super().__init__(scheduler_config, noise_form=noise_form)
        # Training always uses the DDPM forward process of the checkpoint's noise schedule,
        # whatever sampler its folder names (SD1.5 ships a PNDM config with the same betas).
        self.scheduler = DDPMScheduler.from_config(self.scheduler_config)

    @classmethod
    def matches_denoiser(cls, class_name: str, config: Mapping[str, Any]) -> bool:
        return super().matches_denoiser(class_name, config) and (
            config.get("addition_embed_type") != "text_time"
        )

    @classmethod
    def build(cls, architecture: Mapping[str, Any], words: Sequence[str], seed: int = 0):
        """A random-init SD-shaped pipeline from an architecture mapping.

        ``architecture`` holds keyword arguments for ``text_encoder`` (CLIPTextConfig), ``vae``
        (AutoencoderKL), ``unet`` (UNet2DConditionModel) and ``scheduler`` (DDPMScheduler),
        plus ``max_length`` (tokens per prompt). The UNet's cross-attention width follows the
        text encoder so it always fits.
        """
        parts = base_parts(architecture, words, seed)
        width = parts["text_encoder"].config.hidden_size
        unet = UNet2DConditionModel(**{**architecture["unet"], "cross_attention_dim": width})
        return StableDiffusionPipeline(
            **parts,
            unet=unet,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )

    @property
    def prediction_type(self) -> str:
        return self.scheduler.config.prediction_type

    def encode_prompts(
        self, pipe: DiffusionPipeline, prompts: list[str], batch_size: int = 256
    ) -> dict[str, torch.Tensor]:
        return {"embeddings": encode_text(pipe, prompts, batch_size=batch_size)[0]}

    def sample_timesteps(self, n: int, gen: torch.Generator, shape: Sequence[int]) -> torch.Tensor:
        """Uniform integer timesteps, as SD was trained."""
        return torch.randint(self.scheduler.config.num_train_timesteps, (n,), generator=gen)

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor):
        return self.scheduler.add_noise(latents, noise, t)

    def target(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor):
        if self.prediction_type == "v_prediction":
            return self.scheduler.get_velocity(latents, noise, t)
        if self.prediction_type == "epsilon":
            return noise
        raise ValueError(f"prediction_type {self.prediction_type!r} is not trained here")

    def _added(self, cond: Conditions) -> dict[str, torch.Tensor] | None:
        return None

    def predict(self, denoiser, x_t: torch.Tensor, t: torch.Tensor, cond: Conditions):
        return denoiser(x_t, t, cond["embeddings"], added_cond_kwargs=self._added(cond)).sample

    def _alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        abar = self.scheduler.alphas_cumprod.to(t.device)[t].float()
        return abar.sqrt(), (1 - abar).sqrt()

    def noise_scale(self, t: torch.Tensor) -> torch.Tensor:
        """1 for epsilon; alpha_t for v, since eps = alpha_t * v + sigma_t * x_t."""
        if self.prediction_type == "v_prediction":
            return self._alpha_sigma(t)[0]
        return torch.ones(t.shape, device=t.device)

    def to_noise(self, pred: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.prediction_type != "v_prediction":
            return pred
        alpha, sigma = self._alpha_sigma(t)
        shape = (-1, *([1] * (pred.dim() - 1)))
        return alpha.reshape(shape) * pred + sigma.reshape(shape) * x_t

    def sampling_scheduler(self, pipe: DiffusionPipeline, name: str) -> None:
        sampling_scheduler(pipe, name)
