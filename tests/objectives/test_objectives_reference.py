"""Objectives given the reference's precomputed errors (and preferred prediction) compute the
same loss and gradient as given the reference's whole prediction."""

from __future__ import annotations

import pytest
import torch

from dspo.objectives import OBJECTIVES, objective_kwargs
from dspo.objectives.terms import ReferenceStats, per_sample_mse

PRECOMPUTABLE = [name for name, o in OBJECTIVES.items() if o.reference_precomputable]


def stats_of(name: str, ref: torch.Tensor, target: torch.Tensor) -> ReferenceStats:
    objective = OBJECTIVES[name]
    rows = ref if objective.preferred_only else ref.chunk(2)[0]
    preferred = rows if objective.uses_reference_prediction else None
    return ReferenceStats(per_sample_mse(ref, target), preferred)


def test_what_can_be_precomputed() -> None:
    assert PRECOMPUTABLE == ["diffusion_dpo", "diffusion_kto", "dspo", "dspo_ref", "dspo_e"]
    assert not OBJECTIVES["ddspo"].reference_precomputable  # its targets are the reference's


@pytest.mark.parametrize("name", PRECOMPUTABLE)
def test_precomputed_reference_gives_the_same_loss_and_gradient(name: str) -> None:
    gen = torch.Generator().manual_seed(0)
    rows = 4 if OBJECTIVES[name].preferred_only else 8
    target = torch.randn(rows, 4, 8, 8, generator=gen)
    ref = target + 0.3 * torch.randn(rows, 4, 8, 8, generator=gen)
    # dspo_ref: a gap above tau, so its main form (not the fallback) is compared too.
    start = ref + (0.5 if name == "dspo_ref" else 0.1) * torch.randn(rows, 4, 8, 8, generator=gen)
    hparams = objective_kwargs(name, {"beta": 50.0} if "beta" in objective_kwargs(name) else {})
    fn = OBJECTIVES[name].fn
    results = []
    for given in (ref, stats_of(name, ref, target)):
        pred = start.clone().requires_grad_(True)
        loss, metrics = fn(pred, given, target, **hparams)
        loss.backward()
        results.append((loss.detach(), pred.grad, metrics))
    (loss_a, grad_a, m_a), (loss_b, grad_b, m_b) = results
    assert torch.equal(loss_a, loss_b) and torch.equal(grad_a, grad_b)
    assert m_a.keys() == m_b.keys() and all(torch.equal(m_a[k], m_b[k]) for k in m_a)


def test_wrong_shapes_are_refused() -> None:
    pred, target = torch.zeros(4, 2, 2, 2), torch.zeros(4, 2, 2, 2)
    with pytest.raises(ValueError, match="reference errors shape"):
        OBJECTIVES["diffusion_dpo"].fn(pred, ReferenceStats(torch.zeros(2)), target)
    with pytest.raises(ValueError, match="reference prediction shape"):
        OBJECTIVES["dspo"].fn(pred, ReferenceStats(torch.zeros(4), torch.zeros(4, 2, 2, 2)), target)
    with pytest.raises(ValueError, match="only errors given"):
        OBJECTIVES["dspo"].fn(pred, ReferenceStats(torch.zeros(4)), target)
