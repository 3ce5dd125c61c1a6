"""The objectives, one pure tensor function each, in the signature and form of the contract in
:mod:`dspo.objectives` (which registers them); formulas and defaults follow
``docs/objectives.md``. The terms they share are in :mod:`dspo.objectives.terms`.

torch loads inside the functions that call it, as in the whole package.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from dspo.objectives.terms import (
    as_metric,
    broadcast_rows,
    implicit_margin,
    pair_errors,
    pair_metrics,
    per_sample_mse,
    prepare_inputs,
    reference_errors,
    reference_preferred,
)

if TYPE_CHECKING:
    from torch import Tensor

    from dspo.objectives.terms import Metrics


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
