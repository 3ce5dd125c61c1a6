"""Procedural renders of toy scenes, with natural jitter and web-quality defects.

Shapes are drawn from their signed distance, supersampled for anti-aliasing; defects mimic
scraped web data (a wrong colour, shape or position, blur, noise, low contrast).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dspo.toy.scenes import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, SIZES, Scene

DEFECTS: tuple[str, ...] = (
    "wrong_colour",
    "wrong_shape",
    "misplaced",
    "blur",
    "noise",
    "low_contrast",
)

# Triangle (apex up, centroid at the object centre): base half-width a = _TRI_A * r, height 2a.
_TRI_A = 1.1
# Area of each shape in units of r**2; square is sized to match the circle.
SHAPE_AREA: tuple[float, ...] = (np.pi, np.pi, 2.0 * _TRI_A**2)

# ----------------------------------------------------------------------------- geometry


def grid(n: int) -> np.ndarray:
    """Pixel-centre coordinates of ``n`` pixels as fractions of the frame."""
    return (np.arange(n) + 0.5) / n


def _sdf(
    shape_idx: np.ndarray,
    cx: np.ndarray,
    cy: np.ndarray,
    r: np.ndarray,
    ys: np.ndarray,
    xs: np.ndarray,
) -> np.ndarray:
    """Signed distance (positive inside, frame units) of each shape on a grid -> (N, Y, X)."""
    dx = xs[None, None, :] - cx[:, None, None]
    dy = ys[None, :, None] - cy[:, None, None]
    rr = r[:, None, None]
    out = np.empty((len(cx), len(ys), len(xs)))
    for k in range(len(SHAPES)):
        sel = shape_idx == k
        if not sel.any():
            continue
        x, y, rk = dx[sel], dy[sel], rr[sel]
        if k == 0:
            out[sel] = rk - np.hypot(x, y)
        elif k == 1:
            out[sel] = rk * np.sqrt(np.pi) / 2 - np.maximum(np.abs(x), np.abs(y))
        else:
            a = _TRI_A * rk
            out[sel] = np.minimum(2 * a / 3 - y, (y + 4 * a / 3 - 2 * np.abs(x)) / np.sqrt(5))
    return out


def soft_masks(
    shape_idx: np.ndarray, cx: np.ndarray, cy: np.ndarray, r: np.ndarray, h: int, w: int
) -> np.ndarray:
    """Analytically anti-aliased coverage (N, h, w) from the signed distance in pixels."""
    sd = _sdf(shape_idx, cx, cy, r, grid(h), grid(w)) * min(h, w)
    return np.clip(0.5 + sd, 0.0, 1.0)


def _gauss_matrices(n: int, sigma: np.ndarray) -> np.ndarray:
    """Row-stochastic (M, n, n) Gaussian blur matrices with clamped edges, one per sigma (px)."""
    radius = max(1, int(np.ceil(3 * float(np.max(sigma)))))
    offsets = np.arange(-radius, radius + 1)
    kernels = np.exp(-0.5 * (offsets[None, :] / np.asarray(sigma)[:, None]) ** 2)
    kernels /= kernels.sum(axis=1, keepdims=True)
    idx = np.arange(n)
    # onehot[k, i, j] = 1 where pixel i reads pixel j at offset k (clamped at the border).
    onehot = np.zeros((len(offsets), n, n))
    for k, off in enumerate(offsets):
        onehot[k, idx, np.clip(idx + off, 0, n - 1)] = 1.0
    return np.einsum("mk,kij->mij", kernels, onehot)


def blur(x: np.ndarray, sigma_px: float | np.ndarray) -> np.ndarray:
    """Gaussian-blur (N, H, W[, C]) images; ``sigma_px`` is one value or one per image."""
    h, w = x.shape[1:3]
    per_image = np.ndim(sigma_px) > 0
    sig = np.asarray(sigma_px, dtype=float).reshape(-1)
    mh, mw = _gauss_matrices(h, sig).astype(x.dtype), _gauss_matrices(w, sig).astype(x.dtype)
    if not per_image:
        mh, mw = mh[0], mw[0]
    has_c = x.ndim == 4
    y = x.transpose(0, 3, 1, 2) if has_c else x
    if per_image and has_c:
        mh, mw = mh[:, None], mw[:, None]
    y = mh @ y @ np.swapaxes(mw, -1, -2)
    return y.transpose(0, 2, 3, 1) if has_c else y


# ----------------------------------------------------------------------------- rendering

_SUPERSAMPLE = 4
_CHUNK = 1024  # images per supersampled coverage block, to bound memory


def _coverage(
    shape_idx: np.ndarray, cx: np.ndarray, cy: np.ndarray, r: np.ndarray, size: int
) -> np.ndarray:
    """Supersampled (4x4 per pixel) anti-aliased coverage of each object -> (N, size, size)."""
    fine = grid(size * _SUPERSAMPLE)
    out = np.empty((len(cx), size, size))
    for s in range(0, len(cx), _CHUNK):
        sl = slice(s, s + _CHUNK)
        inside = _sdf(shape_idx[sl], cx[sl], cy[sl], r[sl], fine, fine) >= 0
        blocks = inside.reshape(-1, size, _SUPERSAMPLE, size, _SUPERSAMPLE)
        out[sl] = blocks.mean(axis=(2, 4))
    return out


def _pick(rng: np.random.Generator, names: Sequence[str], given: list[str | None]) -> np.ndarray:
    """Index of each given word; unstated ones are drawn at random (any value fits them)."""
    drawn = rng.integers(0, len(names), len(given))
    return np.array(
        [names.index(g) if g is not None else d for g, d in zip(given, drawn, strict=True)]
    )


def render_batch(
    scenes: Sequence[Scene],
    rng: np.random.Generator,
    image_size: int = 16,
    defect_prob: float = 0.15,
) -> tuple[np.ndarray, list[tuple[str, ...]]]:
    """Render scenes with natural jitter and random defects -> (N, H, W, 3) uint8, defects."""
    n = len(scenes)
    colours, shapes_, positions = list(COLOURS), list(SHAPES), list(POSITIONS)
    col = _pick(rng, colours, [s.colour for s in scenes])
    shp = _pick(rng, shapes_, [s.shape for s in scenes])
    pos = _pick(rng, positions, [s.position for s in scenes])
    siz = _pick(rng, list(SIZES), [s.size for s in scenes])
    bgi = _pick(rng, list(BACKGROUNDS), [s.background for s in scenes])

    flags = rng.random((n, len(DEFECTS))) < defect_prob
    has = dict(zip(DEFECTS, flags.T, strict=True))
    # A wrong value is any other value of the attribute, uniformly.
    col = np.where(
        has["wrong_colour"], (col + rng.integers(1, len(colours), n)) % len(colours), col
    )
    shp = np.where(has["wrong_shape"], (shp + rng.integers(1, len(shapes_), n)) % len(shapes_), shp)
    pos = np.where(
        has["misplaced"], (pos + rng.integers(1, len(positions), n)) % len(positions), pos
    )

    # Natural jitter: two renders of one caption never coincide.
    centre = np.array(list(POSITIONS.values()))[pos]
    centre = centre + np.clip(rng.normal(0, 0.02, (n, 2)), -0.05, 0.05)
    radius = np.array(list(SIZES.values()))[siz] * (1 + np.clip(rng.normal(0, 0.04, n), -0.1, 0.1))
    obj = np.array(list(COLOURS.values()), float)[col] + rng.normal(0, 6, (n, 3))
    bg = np.array(list(BACKGROUNDS.values()), float)[bgi] + rng.normal(0, 4, (n, 3))
    keep = rng.uniform(0.1, 0.25, n)  # share of the object-background contrast kept
    obj = np.where(has["low_contrast"][:, None], bg + keep[:, None] * (obj - bg), obj)

    cov = _coverage(shp, centre[:, 0], centre[:, 1], radius, image_size)
    img = bg[:, None, None, :] + cov[..., None] * (obj - bg)[:, None, None, :]
    blur_i = np.flatnonzero(has["blur"])
    if len(blur_i):
        sigma = rng.uniform(0.06, 0.09, len(blur_i)) * image_size
        img[blur_i] = blur(img[blur_i], sigma)
    noise_i = np.flatnonzero(has["noise"])
    if len(noise_i):
        sd = rng.uniform(20, 40, len(noise_i))[:, None, None, None]
        img[noise_i] += rng.normal(0, 1, img[noise_i].shape) * sd
    images = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    defects = [tuple(d for d, f in zip(DEFECTS, row, strict=True) if f) for row in flags]
    return images, defects


def render(
    scene: Scene, rng: np.random.Generator, image_size: int = 16, defect_prob: float = 0.15
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Render one scene -> (H, W, 3) uint8 image and the defects applied."""
    images, defects = render_batch([scene], rng, image_size, defect_prob)
    return images[0], defects[0]
