"""A training run's settings, typed and checked once, before any model is loaded.

The workflow hands `dspo train` one method's resolved config
(`dspo.config.experiments.method_config`: the `training` slice with the method's overrides, plus its
objective, params, data and LoRA). :meth:`TrainSettings.from_config` turns that mapping into the
values the trainer reads, and refuses a missing, unknown or out-of-range key by its name, so that a
hand-written config fails at once instead of after minutes of loading. The mapping itself is kept
(``resolved``): it is what content keys, checkpoint fingerprints, the model card and the model's
record are made of, so that a checkpoint written before these settings existed still resumes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from dspo.training.optimisation import LR_SCHEDULES, MIXED_PRECISIONS, OPTIMIZERS, OptimiserSettings
from dspo.training.tracking import REPORT_TO, tracker_problem

# Read by the trainer and required; the schema gives every one a default.
REQUIRED = (
    "objective",
    "steps",
    "pairs_per_step",
    "local_pairs",
    "seed",
    "lr",
    "lr_schedule",
    "warmup_steps",
    "optimizer",
    "adam_betas",
    "adam_eps",
    "weight_decay",
    "max_grad_norm",
    "prompt_dropout",
    "mixed_precision",
    "gradient_checkpointing",
    "checkpoint_every",
    "checkpoints_kept",
    "log_every",
    "report_to",
)
# Optional, with the value taken when absent.
OPTIONAL: dict[str, Any] = {
    "name": None,
    "params": {},
    "data": "pairs",
    "lora": None,
    "family_settings": {},
    "keep_checkpoints": False,
    "evaluate_steps": [],
    "resume_across_code_change": False,
    "skip_nonfinite": 0,
    "tracker_project": None,
    "validate_every": 0,
    "validation": None,
    "precompute_reference": False,
    "reference_storage": "float32",
    "channels_last": False,
    "compile": None,
    "checkpoint_every_minutes": 0,
    "tf32": True,
    # Read by the workflow, not by the trainer: how many seeds a method trains.
    "replicates": 1,
}
# training.reference_storage: how the precomputed reference prediction is stored.
REFERENCE_STORAGE = {"float32": np.float32, "float16": np.float16}


@dataclass(frozen=True)
class LoraSettings:
    """Low-rank adapters on the denoiser's attention projections."""

    rank: int
    alpha: float
    target_modules: tuple[str, ...]


# training.compile.mode: torch.compile's modes (reduce-overhead: CUDA graphs).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


@dataclass(frozen=True)
class CompileSettings:
    """torch.compile of the denoiser's forward: the policy's, the reference's, or both."""

    policy: bool = False
    reference: bool = False
    mode: str = "default"


def _compile_settings(block: Mapping[str, Any]) -> CompileSettings:
    unknown = sorted(set(block) - {f.name for f in fields(CompileSettings)})
    if unknown:
        raise ValueError(f"training.compile has unknown key(s) {', '.join(unknown)}")
    return CompileSettings(**block)


@dataclass(frozen=True)
class TrainSettings:
    """Everything one training run reads from its config."""

    name: str
    objective: str
    params: dict[str, Any]
    data: str
    steps: int
    pairs_per_step: int
    local_pairs: int
    seed: int
    optimiser: OptimiserSettings
    prompt_dropout: float
    mixed_precision: str
    gradient_checkpointing: bool
    lora: LoraSettings | None
    family_settings: dict[str, Any]
    checkpoint_every: int
    checkpoint_every_minutes: float
    checkpoints_kept: int
    keep_checkpoints: bool
    evaluate_steps: tuple[int, ...]
    resume_across_code_change: bool
    skip_nonfinite: int
    log_every: int
    report_to: str | None
    validate_every: int
    validation: Mapping[str, Any] | None
    precompute_reference: bool
    reference_storage: str
    channels_last: bool
    compile: CompileSettings
    tf32: bool
    resolved: Mapping[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> TrainSettings:
        """The settings of a resolved method config; a bad key is named in the error."""
        missing = [k for k in REQUIRED if k not in cfg]
        if missing:
            raise ValueError(f"training config lacks {', '.join(missing)}")
        unknown = sorted(set(cfg) - set(REQUIRED) - set(OPTIONAL))
        if unknown:
            raise ValueError(f"training config has unknown key(s) {', '.join(unknown)}")
        get = {**OPTIONAL, **cfg}.__getitem__
        lora = get("lora")
        settings = cls(
            name=get("name") or cfg["objective"],
            objective=cfg["objective"],
            params=dict(get("params") or {}),
            data=get("data"),
            steps=int(cfg["steps"]),
            pairs_per_step=int(cfg["pairs_per_step"]),
            local_pairs=int(cfg["local_pairs"]),
            seed=int(cfg["seed"]),
            optimiser=OptimiserSettings(
                name=cfg["optimizer"],
                lr=float(cfg["lr"]),
                betas=tuple(float(b) for b in cfg["adam_betas"]),
                eps=float(cfg["adam_eps"]),
                weight_decay=float(cfg["weight_decay"]),
                lr_schedule=cfg["lr_schedule"],
                warmup_steps=int(cfg["warmup_steps"]),
                max_grad_norm=float(cfg["max_grad_norm"] or 0.0),
            ),
            prompt_dropout=float(cfg["prompt_dropout"]),
            mixed_precision=cfg["mixed_precision"],
            gradient_checkpointing=bool(cfg["gradient_checkpointing"]),
            lora=(
                LoraSettings(int(lora["rank"]), float(lora["alpha"]), tuple(lora["target_modules"]))
                if lora
                else None
            ),
            family_settings=dict(get("family_settings") or {}),
            checkpoint_every=int(cfg["checkpoint_every"] or 0),
            checkpoint_every_minutes=float(get("checkpoint_every_minutes") or 0),
            checkpoints_kept=int(cfg["checkpoints_kept"]),
            keep_checkpoints=bool(get("keep_checkpoints")),
            evaluate_steps=tuple(sorted({int(s) for s in get("evaluate_steps") or []})),
            resume_across_code_change=bool(get("resume_across_code_change")),
            skip_nonfinite=int(get("skip_nonfinite")),
            log_every=int(cfg["log_every"]),
            report_to=cfg["report_to"] or None,
            validate_every=int(get("validate_every") or 0),
            validation=get("validation"),
            precompute_reference=bool(get("precompute_reference")),
            reference_storage=get("reference_storage"),
            channels_last=bool(get("channels_last")),
            compile=_compile_settings(get("compile") or {}),
            tf32=bool(get("tf32")),
            resolved=cfg,
        )
        settings._check()
        return settings

    def _check(self) -> None:
        """Ranges and names the schema also enforces, for configs that did not pass it."""
        for key in ("steps", "pairs_per_step", "local_pairs", "log_every", "checkpoints_kept"):
            if getattr(self, key) < 1:
                raise ValueError(f"training.{key} must be at least 1, got {getattr(self, key)}")
        outside = [s for s in self.evaluate_steps if not 1 <= s <= self.steps]
        if outside:
            raise ValueError(
                f"training.evaluate_steps {outside} not within the run's steps 1..{self.steps}"
            )
        if self.checkpoint_every_minutes < 0:
            raise ValueError(
                "training.checkpoint_every_minutes must be at least 0, "
                f"got {self.checkpoint_every_minutes}"
            )
        if self.pairs_per_step % self.local_pairs:
            raise ValueError(
                f"training.pairs_per_step {self.pairs_per_step} is not a multiple of "
                f"training.local_pairs {self.local_pairs}"
            )
        if not 0.0 <= self.prompt_dropout <= 1.0:
            raise ValueError(
                f"training.prompt_dropout must be in [0, 1], got {self.prompt_dropout}"
            )
        choices = {
            "optimizer": (self.optimiser.name, tuple(OPTIMIZERS)),
            "lr_schedule": (self.optimiser.lr_schedule, tuple(LR_SCHEDULES)),
            "mixed_precision": (self.mixed_precision, MIXED_PRECISIONS),
            "report_to": (self.report_to, REPORT_TO),
            "reference_storage": (self.reference_storage, tuple(REFERENCE_STORAGE)),
            "compile.mode": (self.compile.mode, COMPILE_MODES),
        }
        for key, (value, allowed) in choices.items():
            if value not in allowed:
                raise ValueError(f"training.{key} {value!r}; expected one of {allowed}")
        problem = tracker_problem(self.report_to)
        if problem:
            raise ValueError(f"training.report_to: {problem}")
        if self.validate_every and not self.validation:
            raise ValueError("training.validate_every is set but training.validation is empty")
