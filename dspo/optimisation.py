"""Optimiser, learning-rate schedule and mixed precision of a training run."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import torch


def learning_rate_factor(step: int, warmup: int, schedule: str) -> float:
    """Linear warm-up, then constant or inverse-square-root decay (paper D.3)."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    if schedule == "inverse_sqrt":
        return math.sqrt(max(warmup, 1) / (step + 1))
    raise ValueError(f"unknown lr_schedule {schedule!r}; expected 'constant' or 'inverse_sqrt'")


def make_optimizer(params, cfg: Mapping[str, Any]) -> torch.optim.Optimizer:
    """AdamW, or Adafactor with a fixed learning rate (the SDXL recipe)."""
    if cfg["optimizer"] == "adamw":
        return torch.optim.AdamW(
            params,
            lr=cfg["lr"],
            betas=tuple(cfg["adam_betas"]),
            weight_decay=cfg["weight_decay"],
            eps=cfg["adam_eps"],
        )
    if cfg["optimizer"] == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(
            params, lr=cfg["lr"], scale_parameter=False, relative_step=False, warmup_init=False
        )
    raise ValueError(f"unknown optimizer {cfg['optimizer']!r}; expected 'adamw' or 'adafactor'")


def resolve_mixed_precision(requested: str) -> str:
    """The mixed precision to train with: fp16/bf16 need a GPU; on CPU, float32 with a warning."""
    if requested not in ("no", "fp16", "bf16"):
        raise ValueError(f"training.mixed_precision {requested!r}; expected 'no', 'fp16' or 'bf16'")
    if requested != "no" and not torch.cuda.is_available():
        warnings.warn(
            f"training.mixed_precision {requested!r} needs a CUDA GPU and none is visible: "
            "training in float32",
            stacklevel=2,
        )
        return "no"
    return requested


def set_learning_rate(optimizer: torch.optim.Optimizer, cfg: Mapping[str, Any], step: int) -> float:
    """Set the step's learning rate on every parameter group: a pure function of the step.

    No LR scheduler goes through ``accelerator.prepare``: accelerate 1.15 steps a prepared
    scheduler once per process at each call, so N processes ran the schedule N times too fast.
    A rate computed from the step is also what a resumed run needs, with nothing to restore.
    """
    lr = cfg["lr"] * learning_rate_factor(step, cfg["warmup_steps"], cfg["lr_schedule"])
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr
