"""The terms the objectives share (:mod:`dspo.objectives.losses`): the reference's outputs
computed before training, the checks and float32 casts of the inputs, per-row and per-pair
errors of policy and reference, the implicit reward margin, and the metrics in the contract's
form (detached 0-dim float32 tensors). The contract is :mod:`dspo.objectives`'.

torch loads inside the functions that call it, as in the whole package.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

    Metrics = dict[str, Tensor]


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
