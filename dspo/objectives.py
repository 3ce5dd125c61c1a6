"""Training objectives: DSPO, its variants and the baselines, as pure tensor functions.

Formulas and defaults follow ``docs/objectives.md``. Every objective has the signature

    fn(pred, ref, target, *, <hyper-parameters>) -> (loss, metrics)

``pred`` is the policy's noise prediction, ``ref`` the frozen reference's (``None`` where
unused, or a :class:`ReferenceStats` of what the objective uses of it when the reference ran
before training), ``target`` the noise (for ``ddspo`` the reference's predictions). Paired
inputs hold 2B rows, the B preferred rows first; row i and row B + i are one pair. Work is
done in float32; only ``pred`` receives gradient; metrics are detached 0-dim float32 tensors.

torch loads inside the functions that call it: the registry (names, flags, hyper-parameters
and their defaults) reads without torch, as the workflow's DAG and the config check do.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

    Metrics = dict[str, Tensor]
    ObjectiveFn = Callable[..., tuple[Tensor, Metrics]]

# Keyword arguments supplied by the trainer at run time, not user hyper-parameters.
_RUNTIME_ARGS = frozenset({"all_reduce"})


@dataclass(frozen=True)
class ReferenceStats:
    """The reference's outputs computed before training (:mod:`dspo.training.reference`), in place
    of its prediction ``ref``: ``errors`` its per-row squared error against the target, shape
    (N,), and ``preferred`` its prediction for the preferred rows, shape (B, ...), for the
    objectives that use the prediction itself (DSPO and its variants); None for the others.
    """

    errors: Tensor
    preferred: Tensor | None = None


if TYPE_CHECKING:
    Reference = Tensor | ReferenceStats | None


def per_sample_mse(a: Tensor, b: Tensor) -> Tensor:
    """Mean squared difference over all dims but the first, in float32: shape (N,)."""
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {tuple(a.shape)} vs {tuple(b.shape)}")
    diff = a.float() - b.float()
    return diff.pow(2).flatten(1).mean(dim=1)


def prepare_inputs(
    pred: Tensor, ref: Reference, target: Tensor, *, paired: bool, needs_ref: bool
) -> tuple[Tensor, Reference, Tensor]:
    """Cast to float32, detach ref/target, and check shapes."""
    if pred.dim() < 2:
        raise ValueError(f"pred needs a batch dim and at least one more, got {tuple(pred.shape)}")
    if target.shape != pred.shape:
        raise ValueError(f"target shape {tuple(target.shape)} != pred {tuple(pred.shape)}")
    if paired and (pred.shape[0] == 0 or pred.shape[0] % 2):
        raise ValueError(f"paired objective needs an even, non-zero batch, got {pred.shape[0]}")
    if not needs_ref:
        return pred.float(), None, target.detach().float()
    if ref is None:
        raise ValueError("this objective needs the reference prediction, got ref=None")
    if isinstance(ref, ReferenceStats):
        ref = _prepare_stats(ref, pred, paired)
    elif ref.shape != pred.shape:
        raise ValueError(f"ref shape {tuple(ref.shape)} != pred {tuple(pred.shape)}")
    else:
        ref = ref.detach().float()
    return pred.float(), ref, target.detach().float()


def _prepare_stats(ref: ReferenceStats, pred: Tensor, paired: bool) -> ReferenceStats:
    if ref.errors.shape != pred.shape[:1]:
        raise ValueError(
            f"reference errors shape {tuple(ref.errors.shape)} != ({pred.shape[0]},) rows"
        )
    preferred = ref.preferred
    if preferred is not None:
        rows = pred.shape[0] // 2 if paired else pred.shape[0]
        if preferred.shape != (rows, *pred.shape[1:]):
            raise ValueError(
                f"reference prediction shape {tuple(preferred.shape)} != "
                f"{(rows, *pred.shape[1:])} (the preferred rows)"
            )
        preferred = preferred.detach().float()
    return ReferenceStats(ref.errors.detach().float(), preferred)


def reference_errors(ref: Tensor | ReferenceStats, target: Tensor) -> Tensor:
    """The reference's per-row squared error (N,), computed or precomputed."""
    if isinstance(ref, ReferenceStats):
        return ref.errors
    return per_sample_mse(ref, target)


def reference_preferred(ref: Tensor | ReferenceStats, paired: bool = True) -> Tensor:
    """The reference's prediction for the preferred rows."""
    if isinstance(ref, ReferenceStats):
        if ref.preferred is None:
            raise ValueError("this objective needs the reference's prediction; only errors given")
        return ref.preferred
    return ref.chunk(2)[0] if paired else ref


def as_metric(x: Tensor | float) -> Tensor:
    """A metric as the contract gives it: a detached 0-dim float32 tensor."""
    import torch

    return torch.as_tensor(x).detach().float().reshape(())


def pair_errors(pred: Tensor, ref: Tensor | ReferenceStats, target: Tensor) -> tuple[Tensor, ...]:
    """(m_w, m_l, r_w, r_l): per-pair errors of policy and reference, each shape (B,)."""
    m_w, m_l = per_sample_mse(pred, target).chunk(2)
    r_w, r_l = reference_errors(ref, target).chunk(2)
    return m_w, m_l, r_w, r_l


def implicit_margin(m_w: Tensor, m_l: Tensor, r_w: Tensor, r_l: Tensor, scale: float) -> Tensor:
    """Bradley-Terry logit -0.5 * scale * ((m_w - m_l) - (r_w - r_l)), shape (B,)."""
    return -0.5 * scale * ((m_w - m_l) - (r_w - r_l))


def pair_metrics(
    loss: Tensor, m_w: Tensor, m_l: Tensor, r_w: Tensor, r_l: Tensor, inside: Tensor
) -> Metrics:
    """The metrics of a paired objective that compares policy and reference errors: the loss,
    the mean errors, the share of pairs with ``inside`` > 0 and its mean (the reward margin)."""
    return {
        "loss": as_metric(loss),
        "model_mse_w": as_metric(m_w.mean()),
        "model_mse_l": as_metric(m_l.mean()),
        "ref_mse_w": as_metric(r_w.mean()),
        "ref_mse_l": as_metric(r_l.mean()),
        "implicit_acc": as_metric((inside > 0).float().mean()),
        "reward_margin": as_metric(inside.mean()),
    }


def broadcast_rows(x: Tensor, like: Tensor) -> Tensor:
    """Reshape a per-row vector (N,) to broadcast against a (N, ...) tensor."""
    return x.reshape(-1, *([1] * (like.dim() - 1)))


def sft(pred: Tensor, ref: Tensor | None, target: Tensor) -> tuple[Tensor, Metrics]:
    """Supervised fine-tuning on the preferred images: mean(m_w). ``ref`` is ignored."""
    pred, _, target = prepare_inputs(pred, None, target, paired=False, needs_ref=False)
    m_w = per_sample_mse(pred, target)
    loss = m_w.mean()
    return loss, {"loss": as_metric(loss), "model_mse_w": as_metric(loss)}


def diffusion_dpo(
    pred: Tensor, ref: Tensor | None, target: Tensor, *, beta: float = 5000.0
) -> tuple[Tensor, Metrics]:
    """Diffusion-DPO (eq. 7): mean(-logsigmoid(inside(beta)))."""
    import torch.nn.functional as F

    pred, ref, target = prepare_inputs(pred, ref, target, paired=True, needs_ref=True)
    m_w, m_l, r_w, r_l = pair_errors(pred, ref, target)
    inside = implicit_margin(m_w, m_l, r_w, r_l, beta)
    loss = -F.logsigmoid(inside).mean()
    return loss, pair_metrics(loss, m_w, m_l, r_w, r_l, inside)


def diffusion_kto(
    pred: Tensor,
    ref: Tensor | None,
    target: Tensor,
    *,
    beta: float = 1000.0,
    lambda_d: float = 1.0,
    lambda_u: float = 1.0,
    all_reduce: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Metrics]:
    """Diffusion-KTO: first half of the rows desirable (y=1), second half undesirable (y=0).

    g = r - m per row; z = clamp(mean(g), min=0) without gradient, where the local mean is
    averaged across processes by ``all_reduce`` before clamping (a clamp of the global mean);
    loss = mean(lambda_y * (1 - sigmoid(beta * (2y - 1) * (g - z)))).
    """
    pred, ref, target = prepare_inputs(pred, ref, target, paired=True, needs_ref=True)
    m = per_sample_mse(pred, target)
    r = reference_errors(ref, target)
    g = r - m
    n_w = g.shape[0] // 2
    kl = g.detach().mean()
    if all_reduce is not None:
        kl = all_reduce(kl)
    z = kl.clamp(min=0).detach()
    sign = g.new_ones(g.shape)
    sign[n_w:] = -1.0
    weight = g.new_full(g.shape, float(lambda_d))
    weight[n_w:] = float(lambda_u)
    h = (beta * sign * (g - z)).sigmoid()
    loss = (weight * (1.0 - h)).mean()
    m_w, m_l = m.chunk(2)
    r_w, r_l = r.chunk(2)
    metrics = {
        "loss": as_metric(loss),
        "model_mse_w": as_metric(m_w.mean()),
        "model_mse_l": as_metric(m_l.mean()),
        "ref_mse_w": as_metric(r_w.mean()),
        "ref_mse_l": as_metric(r_l.mean()),
        "kl_estimate": as_metric(z),
    }
    return loss, metrics


def _mapo_f(m: Tensor, a: float) -> Tensor:
    """f(m) = a*m / (exp(a*m) - 1), with its limit 1 - x/2 near x = a*m = 0 (0/0 there)."""
    import torch

    x = a * m
    small = x.abs() < 1e-6
    # Substitute a safe value before dividing so the unused branch of where() has no NaN,
    # which would otherwise leak into the gradient.
    safe = torch.where(small, torch.ones_like(x), x)
    return torch.where(small, 1.0 - 0.5 * x, safe / torch.expm1(safe))


def mapo(
    pred: Tensor,
    ref: Tensor | None,
    target: Tensor,
    *,
    beta: float = 0.1,
    snr_value: float = 0.5,
    num_train_timesteps: int = 1000,
) -> tuple[Tensor, Metrics]:
    """MaPO: mean(m_w) - beta * mean(logsigmoid(T * (f(m_w) - f(m_l)))); no reference.

    ``snr_value`` is a and ``num_train_timesteps`` is T of objectives.md.
    """
    import torch.nn.functional as F

    pred, _, target = prepare_inputs(pred, None, target, paired=True, needs_ref=False)
    m_w, m_l = per_sample_mse(pred, target).chunk(2)
    margin = num_train_timesteps * (_mapo_f(m_w, snr_value) - _mapo_f(m_l, snr_value))
    loss = m_w.mean() - beta * F.logsigmoid(margin).mean()
    metrics = {
        "loss": as_metric(loss),
        "model_mse_w": as_metric(m_w.mean()),
        "model_mse_l": as_metric(m_l.mean()),
        # MaPO's margin plays the part of the implicit reward margin of the DPO forms.
        "implicit_acc": as_metric((margin > 0).float().mean()),
        "reward_margin": as_metric(margin.mean()),
    }
    return loss, metrics


def dspo(
    pred: Tensor,
    ref: Tensor | None,
    target: Tensor,
    *,
    lam: float = 0.001,
    gamma: float = 1.0,
    kappa: float | None = None,
    detach_weight: bool = False,
) -> tuple[Tensor, Metrics]:
    """DSPO (eq. 13-14): mean over pairs of mean_CHW((e_w - lam*gamma*(1 - s) * d_w)^2).

    e_w = pred_w - eps_w, d_w = pred_w - ref_w, s = sigmoid(inside(kappa)). ``kappa=None``
    ties the implicit-reward scale to ``lam``, as the authors' code does. ``detach_weight``
    stops the gradient through s.
    """
    pred, ref, target = prepare_inputs(pred, ref, target, paired=True, needs_ref=True)
    scale = lam if kappa is None else kappa
    m_w, m_l, r_w, r_l = pair_errors(pred, ref, target)
    inside = implicit_margin(m_w, m_l, r_w, r_l, scale)
    s = inside.sigmoid()
    weight = lam * gamma * (1.0 - (s.detach() if detach_weight else s))
    pred_w = pred.chunk(2)[0]
    ref_w = reference_preferred(ref)
    eps_w, _ = target.chunk(2)
    d_w = pred_w - ref_w
    residual = (pred_w - eps_w) - broadcast_rows(weight, d_w) * d_w
    loss = residual.pow(2).flatten(1).mean(dim=1).mean()
    metrics = pair_metrics(loss, m_w, m_l, r_w, r_l, inside)
    metrics["sigmoid_mean"] = as_metric(s.mean())
    metrics["ref_gap"] = as_metric(d_w.pow(2).mean())
    return loss, metrics


def dspo_ref(
    pred: Tensor,
    ref: Tensor | None,
    target: Tensor,
    *,
    kappa: float = 5000.0,
    tau: float = 0.1,
) -> tuple[Tensor, Metrics]:
    """DSPO with the reference as score target (eq. 46-47, the SDXL form).

    If mean(d_w^2) over the batch >= tau: mean(((1 - s) * d_w)^2); else the fallback
    mean((1 - s)^2), because the first form is zero with zero gradient while pred == ref.
    """
    pred, ref, target = prepare_inputs(pred, ref, target, paired=True, needs_ref=True)
    m_w, m_l, r_w, r_l = pair_errors(pred, ref, target)
    inside = implicit_margin(m_w, m_l, r_w, r_l, kappa)
    s = inside.sigmoid()
    pred_w = pred.chunk(2)[0]
    ref_w = reference_preferred(ref)
    d_w = pred_w - ref_w
    gap = d_w.detach().pow(2).mean()
    fallback = bool(gap < tau)
    if fallback:
        loss = (1.0 - s).pow(2).mean()
    else:
        loss = (broadcast_rows(1.0 - s, d_w) * d_w).pow(2).mean()
    metrics = pair_metrics(loss, m_w, m_l, r_w, r_l, inside)
    metrics["sigmoid_mean"] = as_metric(s.mean())
    metrics["ref_gap"] = as_metric(gap)
    metrics["fallback"] = as_metric(float(fallback))
    return loss, metrics


def dspo_e(
    pred: Tensor,
    ref: Tensor | None,
    target: Tensor,
    *,
    lam: float = 0.001,
    gamma: float = 1.0,
) -> tuple[Tensor, Metrics]:
    """DSPO-E (eq. 45), preferred rows only: mean(mean_CHW((e_w - lam*gamma*d_w)^2))."""
    pred, ref, target = prepare_inputs(pred, ref, target, paired=False, needs_ref=True)
    d_w = pred - reference_preferred(ref, paired=False)
    residual = (pred - target) - lam * gamma * d_w
    loss = residual.pow(2).flatten(1).mean(dim=1).mean()
    metrics = {
        "loss": as_metric(loss),
        "model_mse_w": as_metric(per_sample_mse(pred, target).mean()),
        "ref_mse_w": as_metric(reference_errors(ref, target).mean()),
        "ref_gap": as_metric(d_w.pow(2).mean()),
    }
    return loss, metrics


def ddspo(
    pred: Tensor, ref: Tensor | None, target: Tensor, *, beta: float = 16000.0
) -> tuple[Tensor, Metrics]:
    """DDSPO: the Diffusion-DPO form against reference targets.

    ``target`` = cat(tgt_w, tgt_l), the reference's predictions with prompt c (w) and the
    degraded prompt c_minus (l); loss = mean(-logsigmoid(-0.5 * beta * D)).
    """
    import torch.nn.functional as F

    pred, ref, target = prepare_inputs(pred, ref, target, paired=True, needs_ref=True)
    m_w, m_l, r_w, r_l = pair_errors(pred, ref, target)
    inside = implicit_margin(m_w, m_l, r_w, r_l, beta)
    loss = -F.logsigmoid(inside).mean()
    return loss, pair_metrics(loss, m_w, m_l, r_w, r_l, inside)


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
