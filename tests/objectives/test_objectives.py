"""Tests of dspo.objectives against independent float64 numpy computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dspo.objectives import OBJECTIVES, get_objective, objective_kwargs
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
from dspo.objectives.terms import per_sample_mse

SHAPE = (2, 3, 3)  # C, H, W of the test latents


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def logsigmoid(x: float) -> float:
    return -float(np.logaddexp(0.0, -x))


# ---------------------------------------------------------------- independent references


def np_mse(a: np.ndarray, b: np.ndarray) -> float:
    total = 0.0
    for x, y in zip(a.ravel(), b.ravel(), strict=True):
        total += (float(x) - float(y)) ** 2
    return total / a.size


def np_pair_errors(pred, ref, tgt, i, n_pairs):
    w, lo = i, n_pairs + i
    return (
        np_mse(pred[w], tgt[w]),
        np_mse(pred[lo], tgt[lo]),
        np_mse(ref[w], tgt[w]),
        np_mse(ref[lo], tgt[lo]),
    )


def np_sft(pred, ref, tgt):
    return float(np.mean([np_mse(pred[i], tgt[i]) for i in range(len(pred))]))


def np_dpo(pred, ref, tgt, beta=5000.0):
    n = len(pred) // 2
    losses = []
    for i in range(n):
        mw, ml, rw, rl = np_pair_errors(pred, ref, tgt, i, n)
        losses.append(-logsigmoid(-0.5 * beta * ((mw - ml) - (rw - rl))))
    return float(np.mean(losses))


def np_ddspo(pred, ref, tgt, beta=16000.0):
    return np_dpo(pred, ref, tgt, beta)


def np_kto(pred, ref, tgt, beta=1000.0, lambda_d=1.0, lambda_u=1.0, z_override=None):
    n = len(pred) // 2
    g = [np_mse(ref[j], tgt[j]) - np_mse(pred[j], tgt[j]) for j in range(2 * n)]
    kl = float(np.mean(g)) if z_override is None else z_override
    z = max(kl, 0.0)
    losses = []
    for j in range(2 * n):
        y = 1 if j < n else 0
        lam_y = lambda_d if y == 1 else lambda_u
        losses.append(lam_y * (1.0 - sigmoid(beta * (2 * y - 1) * (g[j] - z))))
    return float(np.mean(losses))


def np_mapo(pred, ref, tgt, beta=0.1, snr_value=0.5, num_train_timesteps=1000):
    n = len(pred) // 2

    def f(m):
        return snr_value * m / (math.exp(snr_value * m) - 1.0)

    mw = [np_mse(pred[i], tgt[i]) for i in range(n)]
    ml = [np_mse(pred[n + i], tgt[n + i]) for i in range(n)]
    ratio = [logsigmoid(num_train_timesteps * (f(a) - f(b))) for a, b in zip(mw, ml, strict=True)]
    return float(np.mean(mw) - beta * np.mean(ratio))


def np_dspo(pred, ref, tgt, lam=0.001, gamma=1.0, kappa=None):
    kappa = lam if kappa is None else kappa
    n = len(pred) // 2
    losses = []
    for i in range(n):
        mw, ml, rw, rl = np_pair_errors(pred, ref, tgt, i, n)
        s = sigmoid(-0.5 * kappa * ((mw - ml) - (rw - rl)))
        acc = 0.0
        for p, r, e in zip(pred[i].ravel(), ref[i].ravel(), tgt[i].ravel(), strict=True):
            p, r, e = float(p), float(r), float(e)
            acc += ((p - e) - lam * gamma * (1.0 - s) * (p - r)) ** 2
        losses.append(acc / pred[i].size)
    return float(np.mean(losses))


def np_dspo_ref(pred, ref, tgt, kappa=5000.0, tau=0.1):
    n = len(pred) // 2
    gap = float(np.mean((pred[:n].astype(np.float64) - ref[:n]) ** 2))
    losses = []
    for i in range(n):
        mw, ml, rw, rl = np_pair_errors(pred, ref, tgt, i, n)
        s = sigmoid(-0.5 * kappa * ((mw - ml) - (rw - rl)))
        if gap >= tau:
            d = pred[i].astype(np.float64) - ref[i]
            losses.append(float(np.mean(((1.0 - s) * d) ** 2)))
        else:
            losses.append((1.0 - s) ** 2)
    return float(np.mean(losses))


def np_dspo_e(pred, ref, tgt, lam=0.001, gamma=1.0):
    losses = []
    for i in range(len(pred)):
        p, r, e = (x[i].astype(np.float64) for x in (pred, ref, tgt))
        losses.append(float(np.mean(((p - e) - lam * gamma * (p - r)) ** 2)))
    return float(np.mean(losses))


NUMPY_REF = {
    "sft": np_sft,
    "diffusion_dpo": np_dpo,
    "diffusion_kto": np_kto,
    "mapo": np_mapo,
    "dspo": np_dspo,
    "dspo_ref": np_dspo_ref,
    "dspo_e": np_dspo_e,
    "ddspo": np_ddspo,
}

NON_DEFAULTS = {
    "sft": {},
    "diffusion_dpo": {"beta": 2500.0},
    "diffusion_kto": {"beta": 300.0, "lambda_d": 2.0, "lambda_u": 0.5},
    "mapo": {"beta": 0.7, "snr_value": 1.3, "num_train_timesteps": 50},
    "dspo": {"lam": 0.3, "gamma": 2.0, "kappa": 800.0},
    "dspo_ref": {"kappa": 1000.0, "tau": 1e-5},  # tau below the gap: the eq. 46 branch
    "dspo_e": {"lam": 0.2, "gamma": 0.5},
    "ddspo": {"beta": 4000.0},
}


def make_inputs(name: str, n_pairs: int, seed: int = 0):
    """Inputs whose errors differ by ~1e-3, so that beta ~ 1e3-1e4 gives O(1) logits."""
    g = torch.Generator().manual_seed(seed)
    rows = n_pairs if OBJECTIVES[name].preferred_only else 2 * n_pairs
    target = torch.randn(rows, *SHAPE, generator=g)
    ref = target + 0.3 * torch.randn(rows, *SHAPE, generator=g)
    pred = ref + 0.01 * torch.randn(rows, *SHAPE, generator=g)
    return pred, ref, target


def call(name: str, pred, ref, target, **kwargs):
    o = OBJECTIVES[name]
    return o.fn(pred, ref if o.needs_reference else None, target, **kwargs)


# ---------------------------------------------------------------- values


@pytest.mark.parametrize("n_pairs", [1, 3])
@pytest.mark.parametrize("non_default", [False, True])
@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_value_matches_independent_computation(name, non_default, n_pairs):
    kwargs = NON_DEFAULTS[name] if non_default else {}
    pred, ref, target = make_inputs(name, n_pairs, seed=n_pairs + 10 * non_default)
    loss, metrics = call(name, pred, ref, target, **kwargs)
    expected = NUMPY_REF[name](pred.numpy(), ref.numpy(), target.numpy(), **kwargs)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert loss.item() == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert metrics["loss"].item() == pytest.approx(loss.item())
    for value in metrics.values():
        assert value.dtype == torch.float32 and value.dim() == 0 and not value.requires_grad
    # The metric errors are the per-row MSEs of the preferred (and rejected) rows.
    n = n_pairs
    assert metrics["model_mse_w"].item() == pytest.approx(
        np.mean([np_mse(pred[i].numpy(), target[i].numpy()) for i in range(n)]), rel=1e-5
    )
    if "model_mse_l" in metrics:
        assert metrics["model_mse_l"].item() == pytest.approx(
            np.mean([np_mse(pred[n + i].numpy(), target[n + i].numpy()) for i in range(n)]),
            rel=1e-5,
        )


def test_defaults_match_objectives_md():
    assert objective_kwargs("diffusion_dpo", {}) == {"beta": 5000.0}
    assert objective_kwargs("diffusion_kto", {}) == {
        "beta": 1000.0,
        "lambda_d": 1.0,
        "lambda_u": 1.0,
    }
    assert objective_kwargs("mapo", {}) == {
        "beta": 0.1,
        "snr_value": 0.5,
        "num_train_timesteps": 1000,
    }
    assert objective_kwargs("dspo", {}) == {
        "lam": 0.001,
        "gamma": 1.0,
        "kappa": None,
        "detach_weight": False,
    }
    assert objective_kwargs("dspo_ref", {}) == {"kappa": 5000.0, "tau": 0.1}
    assert objective_kwargs("dspo_e", {}) == {"lam": 0.001, "gamma": 1.0}
    assert objective_kwargs("ddspo", {}) == {"beta": 16000.0}
    assert objective_kwargs("sft", {}) == {}


def test_dspo_kappa_none_ties_to_lam():
    pred, ref, target = make_inputs("dspo", 3)
    tied, m_tied = dspo(pred, ref, target, lam=0.4)
    explicit, m_explicit = dspo(pred, ref, target, lam=0.4, kappa=0.4)
    other, _ = dspo(pred, ref, target, lam=0.4, kappa=3000.0)
    assert tied.item() == explicit.item()
    assert m_tied["sigmoid_mean"].item() == m_explicit["sigmoid_mean"].item()
    assert other.item() != pytest.approx(tied.item(), rel=1e-6)


def test_per_sample_mse():
    a = torch.tensor([[[1.0, 2.0]], [[0.0, -1.0]]])
    b = torch.tensor([[[0.0, 0.0]], [[2.0, 1.0]]])
    assert per_sample_mse(a, b).tolist() == [2.5, 4.0]
    assert per_sample_mse(a.half(), b.half()).dtype == torch.float32
    with pytest.raises(ValueError):
        per_sample_mse(a, b[:1])


# ---------------------------------------------------------------- hand-computed tiny cases
# One pair, one element, eps = 0: pred_w = 1, pred_l = 0.5, ref_w = 0.5, ref_l = 1, so
# m_w = 1, m_l = 0.25, r_w = 0.25, r_l = 1 and (m_w - m_l) - (r_w - r_l) = 1.5.


def tiny():
    pred = torch.tensor([1.0, 0.5]).reshape(2, 1, 1, 1)
    ref = torch.tensor([0.5, 1.0]).reshape(2, 1, 1, 1)
    return pred, ref, torch.zeros(2, 1, 1, 1)


def test_tiny_dpo():
    loss, m = diffusion_dpo(*tiny(), beta=2.0)
    assert loss.item() == pytest.approx(math.log(1.0 + math.exp(1.5)), rel=1e-6)  # inside = -1.5
    assert m["implicit_acc"].item() == 0.0
    assert m["reward_margin"].item() == pytest.approx(-1.5, rel=1e-6)
    assert (m["model_mse_w"].item(), m["model_mse_l"].item()) == (1.0, 0.25)
    assert (m["ref_mse_w"].item(), m["ref_mse_l"].item()) == (0.25, 1.0)
    loss_flip, m_flip = diffusion_dpo(*tiny(), beta=-2.0)  # inside = +1.5
    assert loss_flip.item() == pytest.approx(math.log(1.0 + math.exp(-1.5)), rel=1e-6)
    assert m_flip["implicit_acc"].item() == 1.0
    assert m_flip["reward_margin"].item() == pytest.approx(1.5, rel=1e-6)


def test_tiny_dspo():
    s = 1.0 / (1.0 + math.exp(1.5))  # sigmoid(-0.5 * 2 * 1.5)
    # residual = (1 - 0) - 0.5 * 1 * (1 - s) * (1 - 0.5)
    expected = (1.0 - 0.25 * (1.0 - s)) ** 2
    loss, m = dspo(*tiny(), lam=0.5, gamma=1.0, kappa=2.0)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert m["sigmoid_mean"].item() == pytest.approx(s, rel=1e-6)
    assert m["ref_gap"].item() == pytest.approx(0.25)
    # gamma multiplies lam in the outer weight only.
    loss_g, _ = dspo(*tiny(), lam=0.25, gamma=2.0, kappa=2.0)
    assert loss_g.item() == pytest.approx(expected, rel=1e-6)


def test_tiny_dspo_ref_both_branches():
    s = 1.0 / (1.0 + math.exp(1.5))
    loss, m = dspo_ref(*tiny(), kappa=2.0, tau=0.1)  # gap 0.25 >= tau: eq. 46 form
    assert loss.item() == pytest.approx(((1.0 - s) * 0.5) ** 2, rel=1e-6)
    assert m["fallback"].item() == 0.0 and m["ref_gap"].item() == pytest.approx(0.25)
    loss, m = dspo_ref(*tiny(), kappa=2.0, tau=1.0)  # gap 0.25 < tau: eq. 47 fallback
    assert loss.item() == pytest.approx((1.0 - s) ** 2, rel=1e-6)
    assert m["fallback"].item() == 1.0
    assert m["sigmoid_mean"].item() == pytest.approx(s, rel=1e-6)
    loss, m = dspo_ref(*tiny(), kappa=2.0, tau=0.25)  # the boundary belongs to eq. 46
    assert m["fallback"].item() == 0.0


def test_tiny_kto():
    # Rows: w has m = 0.25, r = 1 (g = 0.75); l has m = r = 1 (g = 0), so z = 0.375.
    pred = torch.tensor([0.5, 1.0]).reshape(2, 1, 1, 1)
    ref = torch.ones(2, 1, 1, 1)
    loss, m = diffusion_kto(
        pred, ref, torch.zeros(2, 1, 1, 1), beta=2.0, lambda_d=2.0, lambda_u=3.0
    )
    # h_w = sigmoid(2 * (0.75 - 0.375)), h_l = sigmoid(-2 * (0 - 0.375)): both sigmoid(0.75).
    assert loss.item() == pytest.approx(2.5 * (1.0 - sigmoid(0.75)), rel=1e-6)
    assert m["kl_estimate"].item() == pytest.approx(0.375)
    # Swapping policy and reference gives g = (-0.75, 0): mean(g) < 0 is clamped to z = 0.
    loss, m = diffusion_kto(ref, pred, torch.zeros(2, 1, 1, 1), beta=2.0)
    assert m["kl_estimate"].item() == 0.0
    expected = 0.5 * ((1.0 - sigmoid(2.0 * -0.75)) + (1.0 - sigmoid(-2.0 * 0.0)))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_kto_all_reduce_averages_kl():
    pred, ref, target = make_inputs("diffusion_kto", 3)
    seen = []

    def fake_all_reduce(t):
        seen.append(t.clone())
        return (t + 0.01) / 2  # the mean with another process whose local estimate is 0.01

    loss, m = diffusion_kto(pred, ref, target, beta=300.0, all_reduce=fake_all_reduce)
    local = np.mean(
        [
            np_mse(ref[j].numpy(), target[j].numpy()) - np_mse(pred[j].numpy(), target[j].numpy())
            for j in range(6)
        ]
    )
    assert seen[0].item() == pytest.approx(local, rel=1e-4, abs=1e-7)
    z = (local + 0.01) / 2
    assert m["kl_estimate"].item() == pytest.approx(max(z, 0.0), rel=1e-4)
    expected = np_kto(pred.numpy(), ref.numpy(), target.numpy(), beta=300.0, z_override=z)
    assert loss.item() == pytest.approx(expected, rel=1e-4)


def test_tiny_mapo():
    # m_w = 1, m_l = 0.25; f(m) = a m / (exp(a m) - 1)
    a, t, beta = 0.5, 2.0, 0.3
    f_w = a * 1.0 / (math.exp(a * 1.0) - 1.0)
    f_l = a * 0.25 / (math.exp(a * 0.25) - 1.0)
    expected = 1.0 - beta * logsigmoid(t * (f_w - f_l))
    pred, _, target = tiny()
    loss, m = mapo(pred, None, target, beta=beta, snr_value=a, num_train_timesteps=2)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert m["implicit_acc"].item() == 0.0  # f is decreasing and m_w > m_l
    assert m["reward_margin"].item() == pytest.approx(t * (f_w - f_l), rel=1e-6)


def test_mapo_zero_error_is_finite():
    target = torch.randn(2, *SHAPE)
    pred = target.clone().requires_grad_(True)  # m_w = m_l = 0: f -> 1 (0/0 in the formula)
    loss, _ = mapo(pred, None, target)
    loss.backward()
    assert loss.item() == pytest.approx(-0.1 * math.log(0.5), rel=1e-6)
    assert torch.isfinite(pred.grad).all()


def test_tiny_sft_and_dspo_e():
    pred = torch.tensor([[2.0, 0.0]]).reshape(1, 2, 1, 1)
    ref = torch.tensor([[1.0, 1.0]]).reshape(1, 2, 1, 1)
    target = torch.zeros(1, 2, 1, 1)
    assert sft(pred, None, target)[0].item() == pytest.approx(2.0)  # (4 + 0) / 2
    # residual = pred - 0.5 * (pred - ref) = (1.5, 0.5): mean of squares 1.25
    loss, m = dspo_e(pred, ref, target, lam=0.25, gamma=2.0)
    assert loss.item() == pytest.approx(1.25)
    assert m["ref_gap"].item() == pytest.approx(1.0)


# ---------------------------------------------------------------- gradients


def sgd_step(fn, pred, ref, target, lr, **kwargs):
    leaf = pred.clone().requires_grad_(True)
    loss, _ = fn(leaf, ref, target, **kwargs)
    loss.backward()
    return (leaf - lr * leaf.grad).detach(), leaf.grad


def inside_of(pred, ref, target):
    m_w, m_l = per_sample_mse(pred, target).chunk(2)
    r_w, r_l = per_sample_mse(ref, target).chunk(2)
    return -((m_w - m_l) - (r_w - r_l))


@pytest.mark.parametrize(
    ("fn", "kwargs", "lr"),
    [
        # beta small enough that the logits (~ beta * 0.02 here) are not saturated.
        (diffusion_dpo, {"beta": 100.0}, 1e-2),
        (ddspo, {"beta": 100.0}, 1e-2),
        # pred_w is already closer to eps than ref_w is, so d_w opposes the residual: a larger
        # s lowers the loss and the pair term pushes the rejected error up.
        (dspo, {"lam": 0.5, "kappa": 50.0}, 1e-1),
    ],
    ids=["diffusion_dpo", "ddspo", "dspo"],
)
def test_one_step_prefers_winner(fn, kwargs, lr):
    g = torch.Generator().manual_seed(3)
    target = torch.randn(8, *SHAPE, generator=g)
    ref = target + 0.3 * torch.randn(8, *SHAPE, generator=g)
    pred = ref + 0.05 * torch.randn(8, *SHAPE, generator=g)
    pred[:4] = ref[:4] + 0.2 * (target[:4] - ref[:4])
    new, grad = sgd_step(fn, pred, ref, target, lr, **kwargs)
    before, after = inside_of(pred, ref, target), inside_of(new, ref, target)
    assert (after > before).all()
    m_before, m_after = per_sample_mse(pred, target), per_sample_mse(new, target)
    assert (m_after[:4] < m_before[:4]).all()  # preferred error down
    assert (m_after[4:] > m_before[4:]).all()  # rejected error up
    assert grad[4:].abs().sum() > 0


def test_sft_step_lowers_preferred_error():
    pred, _, target = make_inputs("sft", 3)
    new, _ = sgd_step(sft, pred, None, target, 1.0)
    assert (per_sample_mse(new, target) < per_sample_mse(pred, target)).all()


def grads(fn, pred, ref, target, **kwargs):
    leaf = pred.clone().requires_grad_(True)
    fn(leaf, ref, target, **kwargs)[0].backward()
    return leaf.grad


def test_dspo_published_setting_is_almost_sft():
    pred, ref, target = make_inputs("dspo", 4)
    g_dspo = grads(dspo, pred, ref, target, lam=0.001, kappa=0.001)
    g_sft = grads(sft, pred[:4], None, target[:4])
    # (1 - lam (1 - s)) with s ~ 0.5 scales the winner's gradient by ~1 - 5e-4.
    rel = (g_dspo[:4] - g_sft).norm() / g_sft.norm()
    assert 1e-5 < rel < 1e-3
    # The loser only feels s, through lam * kappa ~ 1e-6.
    assert 0 < g_dspo[4:].abs().max() < 1e-5 * g_sft.abs().max()


def test_dspo_detach_weight_changes_only_the_s_path():
    lam, gamma, kappa = 0.4, 1.5, 300.0
    pred, ref, target = make_inputs("dspo", 3, seed=5)
    full = grads(dspo, pred, ref, target, lam=lam, gamma=gamma, kappa=kappa)
    det = grads(dspo, pred, ref, target, lam=lam, gamma=gamma, kappa=kappa, detach_weight=True)
    assert torch.equal(det[3:], torch.zeros_like(det[3:]))

    # Analytic gradient through s alone, in float64.
    p, r, e = (x.double() for x in (pred, ref, target))
    n_pairs, n = 3, p[0].numel()
    m = (p - e).pow(2).flatten(1).mean(1)
    q = (r - e).pow(2).flatten(1).mean(1)
    s = torch.sigmoid(-0.5 * kappa * ((m[:3] - m[3:]) - (q[:3] - q[3:])))
    c = lam * gamma
    d_w, e_w, e_l = p[:3] - r[:3], p[:3] - e[:3], p[3:] - e[3:]
    res = e_w - c * (1 - s).view(-1, 1, 1, 1) * d_w
    dl_ds = (2 * c * res * d_w).flatten(1).sum(1) / (n_pairs * n)
    ds_dinside = (s * (1 - s) * dl_ds).view(-1, 1, 1, 1)
    s_path = torch.cat([ds_dinside * (-kappa / n) * e_w, ds_dinside * (kappa / n) * e_l])
    torch.testing.assert_close((full - det).double(), s_path, rtol=1e-3, atol=1e-9)
    assert s_path.abs().max() > 1e-4  # the s path is not negligible here


def test_dspo_ref_zero_gap_takes_fallback_with_gradient():
    g = torch.Generator().manual_seed(7)
    target = torch.randn(4, *SHAPE, generator=g)
    ref = target + 0.3 * torch.randn(4, *SHAPE, generator=g)
    pred = ref.clone().requires_grad_(True)
    loss, m = dspo_ref(pred, ref, target)
    assert m["fallback"].item() == 1.0
    assert m["ref_gap"].item() == 0.0
    assert m["sigmoid_mean"].item() == 0.5
    assert loss.item() == pytest.approx(0.25)  # (1 - 0.5)^2
    loss.backward()
    assert pred.grad.abs().max() > 0
    # The eq. 46 form alone (tau = 0) is flat here: the reason for the fallback.
    pred2 = ref.clone().requires_grad_(True)
    loss2, m2 = dspo_ref(pred2, ref, target, tau=0.0)
    loss2.backward()
    assert m2["fallback"].item() == 0.0 and loss2.item() == 0.0
    assert pred2.grad.abs().max() == 0


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_reference_and_target_get_no_gradient(name):
    pred, ref, target = make_inputs(name, 2)
    pred.requires_grad_(True)
    ref.requires_grad_(True)
    target.requires_grad_(True)
    loss, _ = call(name, pred, ref, target, **NON_DEFAULTS[name])
    loss.backward()
    assert ref.grad is None and target.grad is None
    assert pred.grad is not None and pred.grad.abs().sum() > 0


# ---------------------------------------------------------------- dtypes


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_low_precision_inputs_give_float32(name, dtype):
    pred, ref, target = make_inputs(name, 2)
    low = [x.to(dtype) for x in (pred, ref, target)]
    leaf = low[0].clone().requires_grad_(True)
    loss, metrics = call(name, leaf, low[1], low[2], **NON_DEFAULTS[name])
    assert loss.dtype == torch.float32
    assert all(v.dtype == torch.float32 for v in metrics.values())
    # Same as float32 on the same (rounded) values: no arithmetic happens in low precision.
    up, _ = call(name, *(x.float() for x in low), **NON_DEFAULTS[name])
    assert loss.item() == pytest.approx(up.item(), rel=1e-6, abs=1e-9)
    loss.backward()
    assert leaf.grad.dtype == dtype and torch.isfinite(leaf.grad.float()).all()
    if name in ("sft", "dspo", "dspo_e"):  # no large logit scale: close to the unrounded value
        exact, _ = call(name, pred, ref, target, **NON_DEFAULTS[name])
        assert loss.item() == pytest.approx(exact.item(), rel=2e-2)


# ---------------------------------------------------------------- input checks


def test_bad_inputs_raise():
    pred, ref, target = make_inputs("diffusion_dpo", 2)
    with pytest.raises(ValueError, match="even"):
        diffusion_dpo(pred[:3], ref[:3], target[:3])
    with pytest.raises(ValueError, match="ref=None"):
        dspo(pred, None, target)
    with pytest.raises(ValueError, match="shape"):
        diffusion_dpo(pred, ref[:2], target)


# ---------------------------------------------------------------- registry


def test_registry_flags():
    flags = {
        n: (o.paired, o.needs_reference, o.preferred_only, o.reference_target)
        for n, o in OBJECTIVES.items()
    }
    assert flags == {
        "sft": (False, False, True, False),
        "diffusion_dpo": (True, True, False, False),
        "diffusion_kto": (False, True, False, False),
        "mapo": (True, False, False, False),
        "dspo": (True, True, False, False),
        "dspo_ref": (True, True, False, False),
        "dspo_e": (False, True, True, False),
        "ddspo": (True, True, False, True),
    }
    for name, o in OBJECTIVES.items():
        assert o.name == name and get_objective(name) is o
    with pytest.raises(AttributeError):
        OBJECTIVES["dspo"].paired = False  # frozen


def test_unknown_objective_lists_valid_names():
    with pytest.raises(KeyError, match="dspo_xl") as info:
        get_objective("dspo_xl")
    assert all(name in str(info.value) for name in OBJECTIVES)
    with pytest.raises(KeyError, match="nope"):
        objective_kwargs("nope", {})


def test_objective_kwargs_validates_and_merges():
    assert objective_kwargs("dspo", {"lam": 0.01, "detach_weight": True}) == {
        "lam": 0.01,
        "gamma": 1.0,
        "kappa": None,
        "detach_weight": True,
    }
    with pytest.raises(ValueError, match="'kapa'") as info:
        objective_kwargs("dspo", {"kapa": 1.0})
    assert "'dspo'" in str(info.value) and "kappa" in str(info.value)
    with pytest.raises(ValueError, match="'beta'.*'sft'"):
        objective_kwargs("sft", {"beta": 1.0})
    # all_reduce is supplied by the trainer, not a user hyper-parameter.
    assert "all_reduce" not in objective_kwargs("diffusion_kto", {})
    with pytest.raises(ValueError, match="all_reduce"):
        objective_kwargs("diffusion_kto", {"all_reduce": None})
    # YAML 1.1 reads 5e3 as a string; numbers are coerced to the default's type.
    assert objective_kwargs("diffusion_dpo", {"beta": "5e3"})["beta"] == 5000.0
    assert objective_kwargs("mapo", {"num_train_timesteps": 500.0})["num_train_timesteps"] == 500
    with pytest.raises(ValueError, match="integer"):
        objective_kwargs("mapo", {"num_train_timesteps": 2.5})
    with pytest.raises(ValueError, match="bool"):
        objective_kwargs("dspo", {"detach_weight": "yes"})
    with pytest.raises(ValueError, match="number"):
        objective_kwargs("dspo_ref", {"tau": "small"})


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_objective_kwargs_feed_the_function(name):
    pred, ref, target = make_inputs(name, 2)
    kwargs = objective_kwargs(name, NON_DEFAULTS[name])
    loss, _ = call(name, pred, ref, target, **kwargs)
    expected = NUMPY_REF[name](pred.numpy(), ref.numpy(), target.numpy(), **NON_DEFAULTS[name])
    assert loss.item() == pytest.approx(expected, rel=1e-4, abs=1e-6)
