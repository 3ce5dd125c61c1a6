"""Stable Diffusion 1.x / 2.x: a UNet on a DDPM noise schedule, epsilon or v-prediction."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from diffusers import (
    DDPMScheduler,
    DiffusionPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)

from dspo.families.base import Conditions, Family


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
        from dspo.families.sd_pipeline import build_pipeline

        return build_pipeline({**architecture, "family": cls.name}, words, seed=seed)

    @property
    def prediction_type(self) -> str:
        return self.scheduler.config.prediction_type

    def encode_prompts(
        self, pipe: DiffusionPipeline, prompts: list[str], batch_size: int = 256
    ) -> dict[str, torch.Tensor]:
        from dspo.families.sd_pipeline import encode_text

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
        from dspo.families.sd_pipeline import sampling_scheduler

        sampling_scheduler(pipe, name)
