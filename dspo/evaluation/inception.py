"""Inception Score and Fréchet Inception Distance from a classifier's outputs.

Both follow the usual definitions, as torch-fidelity computes them (its
``metric_isc.isc_features_to_metric`` and ``metric_fid``, the oracle of the tests):

- **Inception Score** of N images with class logits: the images are shuffled by a fixed
  permutation (``numpy.random.RandomState(seed).permutation(N)``, seed 2020 as
  torch-fidelity's default) and cut into ``splits`` (10) consecutive parts; each part's score is
  ``exp(mean_i KL(p(y|x_i) || p(y)))`` with ``p(y)`` the part's mean class distribution.
  The result is the parts' mean and their standard deviation (population, ``ddof=0``).
- **FID** between two sets of features: ``|mu_1 - mu_2|^2 + tr(S_1) + tr(S_2) -
  2 tr((S_1 S_2)^(1/2))``, with the covariances ``S`` unbiased (``numpy.cov``). The trace of
  the matrix square root is the sum of the square roots of ``S_1 S_2``'s eigenvalues, which
  are those of the symmetric ``S_1^(1/2) S_2 S_1^(1/2)`` (real, non-negative up to rounding).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SPLITS = 10
SHUFFLE_SEED = 2020
# torch-fidelity's release of the FID Inception-v3 weights (its URL_INCEPTION_V3). The name
# carries the first 8 hex digits of the file's SHA-256, PyTorch hub's convention.
INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
    "weights-inception-2015-12-05-6726825d.pth"
)
INCEPTION_FILE = INCEPTION_URL.rsplit("/", 1)[1]
INCEPTION_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"


def inception_weights_path() -> Path:
    """Where ``dspo fetch`` puts the Inception-v3 weights: PyTorch hub's checkpoint folder,
    where torch-fidelity itself looks for them."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


def inception_score(
    logits: np.ndarray, splits: int = SPLITS, seed: int | None = SHUFFLE_SEED
) -> tuple[float, float]:
    """(mean, standard deviation over the splits) of the Inception Score of (N, C) logits
    (or log-probabilities); ``seed`` None keeps the images' order. Needs N >= splits."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2:
        raise ValueError(f"expected (N, C) logits, got shape {logits.shape}")
    n = len(logits)
    if n < splits:
        raise ValueError(
            f"the Inception Score over {splits} splits needs >= {splits} images, got {n}"
        )
    if seed is not None:
        logits = logits[np.random.RandomState(seed).permutation(n)]
    log_p = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    p = np.exp(log_p)
    scores = []
    for i in range(splits):
        part = slice(i * n // splits, (i + 1) * n // splits)
        log_marginal = np.log(p[part].mean(axis=0, keepdims=True))
        kl = (p[part] * (log_p[part] - log_marginal)).sum(axis=1)
        scores.append(float(np.exp(kl.mean())))
    return float(np.mean(scores)), float(np.std(scores))


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, unbiased covariance) of (N, D) features, N >= 2."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"expected (N >= 2, D) features, got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(
    stats_1: tuple[np.ndarray, np.ndarray], stats_2: tuple[np.ndarray, np.ndarray]
) -> float:
    """The Fréchet distance between two Gaussians given as (mean, covariance)."""
    (mu_1, sigma_1), (mu_2, sigma_2) = stats_1, stats_2
    if mu_1.shape != mu_2.shape or sigma_1.shape != sigma_2.shape:
        raise ValueError(f"feature sizes differ: {mu_1.shape} and {mu_2.shape}")
    root = _sqrt_psd(sigma_1)
    cross = np.linalg.eigvalsh(root @ sigma_2 @ root)
    diff = mu_1 - mu_2
    trace = np.trace(sigma_1) + np.trace(sigma_2) - 2 * np.sqrt(np.clip(cross, 0.0, None)).sum()
    return float(diff @ diff + trace)
