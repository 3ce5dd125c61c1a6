"""Training objectives: DSPO, its variants and the baselines, as pure tensor functions.

Formulas and defaults follow ``docs/objectives.md``. Every objective has the signature

    fn(pred, ref, target, *, <hyper-parameters>) -> (loss, metrics)

``pred`` is the policy's noise prediction, ``ref`` the frozen reference's (``None`` where
unused, or a `dspo.objectives.terms.ReferenceStats` of what the objective uses of it when the
reference ran before training), ``target`` the noise (for ``ddspo`` the reference's
predictions). Paired inputs hold 2B rows, the B preferred rows first; row i and row B + i are
one pair. Work is done in float32; only ``pred`` receives gradient; metrics are detached 0-dim
float32 tensors.

This module is the registry: each objective, what the trainer must feed it, and its
hyper-parameters with their defaults. The objectives themselves are in
:mod:`dspo.objectives.losses`, the terms they share (input checks, per-row errors, the implicit
reward margin, metrics) in :mod:`dspo.objectives.terms`.

torch loads inside the functions that call it: the registry (names, flags, hyper-parameters
and their defaults) reads without torch, as the workflow's DAG and the config check do.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dspo.objectives.losses import (
    ddspo,
    diffusion_dpo,
    diffusion_kto,
    dspo,
    dspo_e,
    dspo_ref,
    mapo,
    sft,
)

if TYPE_CHECKING:
    from torch import Tensor

    from dspo.objectives.terms import Metrics

    ObjectiveFn = Callable[..., tuple[Tensor, Metrics]]

# Keyword arguments supplied by the trainer at run time, not user hyper-parameters.
_RUNTIME_ARGS = frozenset({"all_reduce"})


@dataclass(frozen=True)
class Objective:
    """A registered objective and what the trainer must feed it.

    The trainer reads only these fields, never an objective's name:

    paired: input is 2B rows (preferred first) and the loss compares rows i and B + i;
    unpaired objectives (KTO) treat the 2B rows as rows labelled desirable / undesirable.
    needs_reference: ``ref`` must be the frozen reference's prediction.
    preferred_only: only the B preferred rows are passed.
    reference_target: ``target`` is built from the reference (prompt c for w, c_minus for l).
    uses_reference_prediction: the loss uses the reference's prediction itself, not only its
    errors (what a precomputed reference must store besides the errors, dspo.training.reference).
    shared_noise: a pair's two images get the same noise and timestep (what makes a paired
    comparison of their errors fair); False draws the rejected image's own.
    batch_statistics: the loss takes a statistic of the whole batch (KTO's reference point),
    so the trainer passes ``all_reduce`` to average it over processes.
    """

    name: str
    fn: ObjectiveFn
    paired: bool
    needs_reference: bool
    preferred_only: bool
    reference_target: bool = False
    uses_reference_prediction: bool = False
    shared_noise: bool = True
    batch_statistics: bool = False

    @property
    def reference_precomputable(self) -> bool:
        """The reference can run before training: it needs the batch only, not the policy.
        Not so for a reference target (DDSPO), whose full predictions are the targets."""
        return self.needs_reference and not self.reference_target


OBJECTIVES: dict[str, Objective] = {
    o.name: o
    for o in (
        Objective("sft", sft, paired=False, needs_reference=False, preferred_only=True),
        Objective(
            "diffusion_dpo", diffusion_dpo, paired=True, needs_reference=True, preferred_only=False
        ),
        # KTO treats w and l as unpaired rows; they share noise as the paired objectives do,
        # which keeps the methods' comparison on equal draws.
        Objective(
            "diffusion_kto",
            diffusion_kto,
            paired=False,
            needs_reference=True,
            preferred_only=False,
            batch_statistics=True,
        ),
        Objective("mapo", mapo, paired=True, needs_reference=False, preferred_only=False),
        Objective(
            "dspo",
            dspo,
            paired=True,
            needs_reference=True,
            preferred_only=False,
            uses_reference_prediction=True,
        ),
        Objective(
            "dspo_ref",
            dspo_ref,
            paired=True,
            needs_reference=True,
            preferred_only=False,
            uses_reference_prediction=True,
        ),
        Objective(
            "dspo_e",
            dspo_e,
            paired=False,
            needs_reference=True,
            preferred_only=True,
            uses_reference_prediction=True,
        ),
        Objective(
            "ddspo",
            ddspo,
            paired=True,
            needs_reference=True,
            preferred_only=False,
            reference_target=True,
        ),
    )
}


def get_objective(name: str) -> Objective:
    """Look up an objective by name; KeyError lists the valid names."""
    try:
        return OBJECTIVES[name]
    except KeyError:
        valid = ", ".join(sorted(OBJECTIVES))
        raise KeyError(f"unknown objective {name!r}; valid names: {valid}") from None


def hyper_defaults(fn: ObjectiveFn) -> dict[str, object]:
    return {
        p.name: p.default
        for p in inspect.signature(fn).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in _RUNTIME_ARGS
    }


def coerce_hyper(objective: str, key: str, value: object, default: object) -> object:
    """Convert a config value to the type of its default (YAML may give '5e3' as a string)."""
    where = f"hyper-parameter {key!r} of objective {objective!r}"
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be a bool, got {value!r}")
        return value
    if default is None and value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{where} must be a number, got {value!r}")
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{where} must be finite, got {value!r}")
    if isinstance(default, int):
        if not number.is_integer():
            raise ValueError(f"{where} must be an integer, got {value!r}")
        return int(number)
    return number


def objective_kwargs(name: str, params: Mapping[str, object] | None = None) -> dict[str, object]:
    """Validate user hyper-parameters for ``name`` and return them merged over the defaults.

    Unknown keys raise ValueError naming the key, the objective and the accepted keys.
    """
    objective = get_objective(name)
    defaults = hyper_defaults(objective.fn)
    params = dict(params or {})
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        accepted = ", ".join(sorted(defaults)) or "(none)"
        names = ", ".join(repr(k) for k in unknown)
        raise ValueError(
            f"unknown hyper-parameter {names} for objective {name!r}; accepted: {accepted}"
        )
    merged = dict(defaults)
    for key, value in params.items():
        merged[key] = coerce_hyper(name, key, value, defaults[key])
    return merged
