"""Optimiser, learning-rate schedule and mixed precision of a training run."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class OptimiserSettings:
    """The optimiser and its learning-rate schedule (``training.optimizer``, ``lr``, ...)."""

    name: str
    lr: float
    betas: tuple[float, ...]
    eps: float
    weight_decay: float
    lr_schedule: str
    warmup_steps: int
    # 0: no clipping (the norm is still taken, to catch non-finite gradients).
    max_grad_norm: float


def _one_of(names: Iterable[str]) -> str:
    """'a', 'b' or 'c'."""
    *first, last = map(repr, names)
    return f"{', '.join(first)} or {last}" if first else last


# training.lr_schedule: the factor after warm-up, from (step, warmup steps).
LR_SCHEDULES: dict[str, Callable[[int, int], float]] = {
    "constant": lambda step, warmup: 1.0,
    "inverse_sqrt": lambda step, warmup: math.sqrt(max(warmup, 1) / (step + 1)),
}


def learning_rate_factor(step: int, warmup: int, schedule: str) -> float:
    """Linear warm-up, then constant or inverse-square-root decay (paper D.3)."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown lr_schedule {schedule!r}; expected {_one_of(LR_SCHEDULES)}")
    return LR_SCHEDULES[schedule](step, warmup)


def _adamw(params, settings: OptimiserSettings) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        params,
        lr=settings.lr,
        betas=settings.betas,
        weight_decay=settings.weight_decay,
        eps=settings.eps,
    )


def _adafactor(params, settings: OptimiserSettings) -> torch.optim.Optimizer:
    from transformers.optimization import Adafactor

    return Adafactor(
        params, lr=settings.lr, scale_parameter=False, relative_step=False, warmup_init=False
    )


# training.optimizer: each builds the optimiser from (parameters, settings).
OPTIMIZERS: dict[str, Callable[[Any, OptimiserSettings], torch.optim.Optimizer]] = {
    "adamw": _adamw,
    "adafactor": _adafactor,
}
# training.mixed_precision: accelerate's names (no = float32).
MIXED_PRECISIONS = ("no", "fp16", "bf16")


def make_optimizer(params, settings: OptimiserSettings) -> torch.optim.Optimizer:
    """AdamW, or Adafactor with a fixed learning rate (the SDXL recipe)."""
    if settings.name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {settings.name!r}; expected {_one_of(OPTIMIZERS)}")
    return OPTIMIZERS[settings.name](params, settings)


def resolve_mixed_precision(requested: str) -> str:
    """The mixed precision to train with: fp16/bf16 need a GPU; on CPU, float32 with a warning."""
    if requested not in MIXED_PRECISIONS:
        raise ValueError(
            f"training.mixed_precision {requested!r}; expected {_one_of(MIXED_PRECISIONS)}"
        )
    if requested != "no" and not torch.cuda.is_available():
        warnings.warn(
            f"training.mixed_precision {requested!r} needs a CUDA GPU and none is visible: "
            "training in float32",
            stacklevel=2,
        )
        return "no"
    return requested


def set_learning_rate(
    optimizer: torch.optim.Optimizer, settings: OptimiserSettings, step: int
) -> float:
    """Set the step's learning rate on every parameter group: a pure function of the step.

    No LR scheduler goes through ``accelerator.prepare``: accelerate 1.15 steps a prepared
    scheduler once per process at each call, so N processes ran the schedule N times too fast.
    A rate computed from the step is also what a resumed run needs, with nothing to restore.
    """
    lr = settings.lr * learning_rate_factor(step, settings.warmup_steps, settings.lr_schedule)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr
