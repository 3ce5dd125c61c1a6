"""Rectified-flow (flow-matching) training, as SD3 / SD3.5 and FLUX use it.

Forward process with sigma = t in [0, 1]:  x_t = (1 - t) x0 + t eps, and the denoiser
predicts the velocity v = dx_t/dt = eps - x0. Since x_t = eps - (1 - t) v,

    eps = x_t + (1 - t) v,   x0 = x_t - t v,   eps_hat - eps = (1 - t) (v_hat - v),

so a squared noise error is (1 - t)^2 times the squared velocity error, and the score of
x_t given x0 (a Gaussian of mean (1 - t) x0, std t) is -eps / t. docs/objectives.md derives
these and what they mean for each objective.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler

from dspo.families.base import Family, rows

WEIGHTINGS = ("logit_normal", "mode", "uniform")


def interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x0 + t eps, with one t per row."""
    t = rows(t, x0)
    return (1 - t) * x0 + t * noise


def velocity(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The regression target v = eps - x0."""
    return noise - x0


def velocity_to_noise(v: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """eps = x_t + (1 - t) v."""
    return x_t + (1 - rows(t, x_t)) * v


def velocity_to_sample(v: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x0 = x_t - t v."""
    return x_t - rows(t, x_t) * v


def score(noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """grad log p(x_t | x0) = -(x_t - (1 - t) x0) / t^2 = -eps / t."""
    return -noise / rows(t, noise)


def shift_sigmas(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's timestep shift s*sigma / (1 + (s - 1) sigma): s > 1 moves steps toward noise."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def flux_shift(image_tokens: int, config: Mapping[str, Any]) -> float:
    """FLUX's resolution-dependent shift exp(mu), mu linear in the packed sequence length.

    exp(mu) / (exp(mu) + 1/sigma - 1), the form FLUX writes, is shift_sigmas with exp(mu).
    """
    base_len, max_len = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    base, top = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
    slope = (top - base) / (max_len - base_len)
    return math.exp(slope * image_tokens + base - slope * base_len)


@dataclass(frozen=True)
class FlowTimesteps:
    """How training draws t: SD3's density (logit-normal or mode) then the shift.

    ``shift=None`` takes the checkpoint scheduler's: its ``shift``, or FLUX's
    resolution-dependent one when the scheduler uses dynamic shifting.
    """

    weighting: str = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    shift: float | None = None

    def __post_init__(self) -> None:
        if self.weighting not in WEIGHTINGS:
            raise ValueError(
                f"timesteps.weighting {self.weighting!r}; expected one of {WEIGHTINGS}"
            )
        if self.logit_std <= 0 or (self.shift is not None and self.shift <= 0):
            raise ValueError("timesteps.logit_std and timesteps.shift must be positive")

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None) -> FlowTimesteps:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(params or {}) - names)
        if unknown:
            raise ValueError(f"unknown timesteps key(s) {unknown}; accepted: {sorted(names)}")
        return cls(**dict(params or {}))

    def draw(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """Unshifted t in [0, 1] from the chosen density (SD3 paper, sec. 3.1)."""
        if self.weighting == "logit_normal":
            return torch.sigmoid(self.logit_mean + self.logit_std * torch.randn(n, generator=gen))
        u = torch.rand(n, generator=gen)
        if self.weighting == "mode":
            u = 1 - u - self.mode_scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
        return u


class FlowFamily(Family):
    """The flow-matching part shared by SD3 and FLUX; subclasses add conditioning."""

    default_max_sequence_length: int = 256
    default_sampler = "euler"
    t5_tokenizer: str = "tokenizer_3"  # the pipeline attribute of the T5 tokenizer

    def __init__(
        self,
        scheduler_config: Mapping[str, Any],
        *,
        noise_form: bool = False,
        timesteps: FlowTimesteps | Mapping[str, Any] | None = None,
        max_sequence_length: int | None = None,
    ) -> None:
        super().__init__(scheduler_config, noise_form=noise_form)
        if not isinstance(timesteps, FlowTimesteps):
            timesteps = FlowTimesteps.from_params(timesteps)
        self.timesteps = timesteps
        self.max_sequence_length = max_sequence_length

    def shift(self, shape: Sequence[int]) -> float:
        if self.timesteps.shift is not None:
            return self.timesteps.shift
        if self.scheduler_config.get("use_dynamic_shifting"):
            return flux_shift((shape[-2] // 2) * (shape[-1] // 2), self.scheduler_config)
        return float(self.scheduler_config.get("shift", 1.0))

    def sample_timesteps(self, n: int, gen: torch.Generator, shape: Sequence[int]) -> torch.Tensor:
        return shift_sigmas(self.timesteps.draw(n, gen), self.shift(shape))

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor):
        return interpolate(latents, noise, t.to(latents.dtype))

    def target(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor):
        return velocity(latents, noise)

    def noise_scale(self, t: torch.Tensor) -> torch.Tensor:
        return 1 - t.float()

    def to_noise(self, pred: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return velocity_to_noise(pred, x_t, t)

    def sampling_scheduler(self, pipe: DiffusionPipeline, name: str) -> None:
        """Only the checkpoint's own flow-matching Euler sampler ("euler")."""
        if name != "euler":
            raise ValueError(
                f"sampling scheduler {name!r} for a {self.name} model; expected 'euler'"
            )
        pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)

    def sequence_length(self, pipe: DiffusionPipeline) -> int:
        """T5 tokens per prompt: the setting, else the pipeline's default length capped by
        what its T5 tokenizer takes (a small model's tokenizer may take fewer)."""
        if self.max_sequence_length:
            return self.max_sequence_length
        tokenizer = getattr(pipe, self.t5_tokenizer)
        return min(self.default_max_sequence_length, int(tokenizer.model_max_length))

    def call_kwargs(self, pipe: DiffusionPipeline) -> dict[str, Any]:
        return {"max_sequence_length": self.sequence_length(pipe)}
