"""The toy world's analytic oracle, and its parts as reward models.

The oracle scores any RGB image against any caption from pixels alone: an alignment part
(soft checks of the attributes the caption states) and an aesthetic part (sharpness, absence
of noise, object-background contrast). `ToyOracleReward` serves one part through the reward
interface of `dspo.rewards` (kind ``toy_oracle``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from PIL import Image

from dspo.toy.render import SHAPE_AREA, blur, grid, soft_masks
from dspo.toy.scenes import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, SIZES, parse_caption

# Each soft check is exp(-(d / scale)^2); RGB distances are in 0-1 units, offsets in frame units.
_S_COLOUR = 0.2  # wrong colours are >= 0.37 apart, jitter ~0.03
_S_BACKGROUND = 0.15
_S_POSITION = 0.1  # centroid offset, frame units
_S_SIZE = 0.45  # |log area ratio|
_SHAPE_TEMPERATURE = 0.01  # softmax temperature over shape-template correlations
_S_NOISE = 15.0  # estimated noise sd (0-255 units)
_S_CONTRAST = 0.25  # object-background distance
_PRESENCE = 0.06  # contrast below which there is no object to judge
_SMOOTH = 0.04  # smoothing of the foreground map, fraction of the frame side
_SHARP_PROBE = 0.06  # extra blur used to probe sharpness, fraction of the frame side
_SHARP_RATIO = (0.38, 0.6)  # probe energy ratio of a crisp render and of a blurred one


_CHECKS = ("colour", "background", "position", "size", "shape")


def _gauss_score(d: np.ndarray, scale: float) -> np.ndarray:
    return np.exp(-((d / scale) ** 2))


@functools.lru_cache(maxsize=65536)
def _targets(text: str) -> tuple[float, ...]:
    """The stated attributes of a caption as numbers (NaN where unstated)."""
    s = parse_caption(text)
    nan3 = (np.nan,) * 3
    colour = tuple(c / 255 for c in COLOURS[s.colour]) if s.colour else nan3
    bg = tuple(c / 255 for c in BACKGROUNDS[s.background]) if s.background else nan3
    pos = POSITIONS[s.position] if s.position else (np.nan, np.nan)
    shape = SHAPES.index(s.shape) if s.shape else np.nan
    size = SIZES[s.size] if s.size else np.nan
    return (*colour, *bg, *pos, shape, size)


def oracle_scores(images: np.ndarray, captions: Sequence[str]) -> dict[str, np.ndarray]:
    """Score RGB images against captions from pixels alone.

    ``images`` is (N, H, W, 3) uint8 of any size. Returns "alignment", "aesthetic" and "total"
    (= their mean), each (N,) in [0, 1]. Alignment averages soft checks of the attributes the
    caption states (object colour, background colour, shape, position, size); aesthetic
    averages sharpness, absence of noise and object-background contrast.
    """
    parts = oracle_components(images, captions)
    return {k: parts[k] for k in ("alignment", "aesthetic", "total")}


def oracle_components(images: np.ndarray, captions: Sequence[str]) -> dict[str, np.ndarray]:
    """The oracle with every check exposed: the three scores plus one (N,) array per check.

    Alignment checks ("colour", "background", "position", "size", "shape") are NaN where the
    caption does not state the attribute; aesthetic checks are "sharpness", "clean", "contrast".
    """
    # float32 halves memory traffic; every statistic below is a sum over at most a few
    # thousand pixels, well within its precision.
    x = np.asarray(images, dtype=np.float32) / np.float32(255.0)
    if x.ndim != 4 or x.shape[-1] != 3 or len(x) != len(captions):
        raise ValueError(f"expected (N, H, W, 3) images and N captions, got {x.shape}")
    n, h, w, _ = x.shape
    side = min(h, w)
    t = np.array([_targets(c) for c in captions], dtype=float).reshape(n, 10)
    t_colour, t_bg, t_pos, t_shape, t_size = t[:, 0:3], t[:, 3:6], t[:, 6:8], t[:, 8], t[:, 9]
    bg, dist_raw, obj, contrast, cx, cy, area, presence = _object(x)

    # Checks of unstated attributes stay NaN (their targets are NaN).
    checks = np.full((n, len(_CHECKS)), np.nan)
    # Colour: distance from the stated colour, mixed with the background by up to half, so
    # that blur (which dilutes a small object's colour) is not mistaken for a wrong colour.
    v = t_colour - bg
    mix = np.clip(np.einsum("nc,nc->n", obj - bg, v) / (np.einsum("nc,nc->n", v, v) + 1e-9), 0.5, 1)
    checks[:, 0] = _gauss_score(np.linalg.norm(obj - bg - mix[:, None] * v, axis=1), _S_COLOUR)
    checks[:, 1] = _gauss_score(np.linalg.norm(bg - t_bg, axis=1), _S_BACKGROUND)
    checks[:, 2] = presence * _gauss_score(
        np.hypot(cx - t_pos[:, 0], cy - t_pos[:, 1]), _S_POSITION
    )

    # Size: observed area against the stated shape's area (circle if unstated), clipped by the
    # frame at the stated (else observed) position.
    has_size = ~np.isnan(t_size)
    if has_size.any():
        i = np.flatnonzero(has_size)
        ideal_shape = np.nan_to_num(t_shape[i], nan=0).astype(int)
        px = np.where(np.isnan(t_pos[i, 0]), cx[i], t_pos[i, 0])
        py = np.where(np.isnan(t_pos[i, 1]), cy[i], t_pos[i, 1])
        ideal = soft_masks(ideal_shape, px, py, t_size[i], h, w).mean(axis=(1, 2))
        checks[i, 3] = presence[i] * _gauss_score(np.log(area[i] / ideal), _S_SIZE)

    # Shape: correlate the unsmoothed foreground map (smoothing erases the corners that tell
    # shapes apart) with each shape template placed at the observed centroid with the observed
    # area, then soft-max over shapes.
    has_shape = ~np.isnan(t_shape)
    if has_shape.any():
        i = np.flatnonzero(has_shape)
        logits = _shape_logits(dist_raw[i], contrast[i], cx[i], cy[i], area[i])
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        checks[i, 4] = presence[i] * p[np.arange(len(i)), t_shape[i].astype(int)]

    stated = ~np.isnan(np.stack([t[:, 0], t[:, 3], t[:, 6], t_size, t_shape], axis=1))
    # A caption that states nothing is satisfied by any image.
    alignment = np.where(
        stated.any(axis=1),
        np.where(stated, checks, 0.0).sum(axis=1) / np.maximum(stated.sum(axis=1), 1),
        1.0,
    )

    # Noise: robust sd of the 4-neighbour Laplacian (var = 20 sd^2 for white noise); flat
    # regions dominate the median, so edges barely move it.
    x255 = x * 255.0
    lap = (
        4 * x255[:, 1:-1, 1:-1]
        - x255[:, :-2, 1:-1]
        - x255[:, 2:, 1:-1]
        - x255[:, 1:-1, :-2]
        - x255[:, 1:-1, 2:]
    )
    noise_sd = np.median(np.abs(lap).reshape(n, -1), axis=1) / (0.6745 * np.sqrt(20))
    clean = _gauss_score(noise_sd, _S_NOISE)
    # Sharpness: an already blurry image loses little gradient energy under a further blur.
    # Noise also looks "sharp" to this probe, hence the gate by ``clean``.
    energy = _grad_energy(x) + 1e-6
    ratio = (_grad_energy(blur(x, _SHARP_PROBE * side)) + 1e-6) / energy
    lo, hi = _SHARP_RATIO
    sharp = np.clip((hi - ratio) / (hi - lo), 0.0, 1.0) * clean
    contrast_score = 1.0 - _gauss_score(contrast, _S_CONTRAST)
    aesthetic = (sharp + clean + contrast_score) / 3.0
    return {
        "alignment": alignment,
        "aesthetic": aesthetic,
        "total": 0.5 * alignment + 0.5 * aesthetic,
        **{name: checks[:, j] for j, name in enumerate(_CHECKS)},
        "sharpness": sharp,
        "clean": clean,
        "contrast": contrast_score,
    }


def _object(x: np.ndarray) -> tuple[np.ndarray, ...]:
    """What the checks measure of (N, H, W, 3) images in 0-1: the background colour, each
    pixel's distance from it, the object colour, the object-background contrast, the object's
    centroid (cx, cy) and area (frame fractions), and the object's presence in [0, 1]."""
    n, h, w, _ = x.shape
    side = min(h, w)
    ys, xs = grid(h), grid(w)
    # Background = per-channel median (the object covers well under half the frame).
    bg = np.median(x.reshape(n, -1, 3), axis=1)
    dist_raw = np.linalg.norm(x - bg[:, None, None], axis=-1)
    dist = np.linalg.norm(blur(x, _SMOOTH * side) - bg[:, None, None], axis=-1)
    # Object colour from the unsmoothed pixels farthest (after smoothing out noise) from the
    # background.
    wts = (dist / (dist.max(axis=(1, 2), keepdims=True) + 1e-9)) ** 4 + 1e-12
    obj = np.einsum("nhw,nhwc->nc", wts, x) / wts.sum(axis=(1, 2))[:, None]
    contrast = np.linalg.norm(obj - bg, axis=1)
    # Foreground map ~ coverage, because colour is linear in coverage along the
    # background-object line; the median distance (the noise floor) is subtracted first.
    fg = _foreground(dist, contrast)
    mass = fg.sum(axis=(1, 2)) + 1e-9
    cx = (fg.sum(axis=1) @ xs + 0.5e-9) / mass
    cy = (fg.sum(axis=2) @ ys + 0.5e-9) / mass
    area = mass / (h * w)
    # Without a visible object there is no shape, position or size to give credit for.
    presence = 1.0 - _gauss_score(contrast, _PRESENCE)
    return bg, dist_raw, obj, contrast, cx, cy, area, presence


def _shape_logits(
    dist_raw: np.ndarray, contrast: np.ndarray, cx: np.ndarray, cy: np.ndarray, area: np.ndarray
) -> np.ndarray:
    """(N, len(SHAPES)) logits: the unsmoothed foreground map (smoothing erases the corners
    that tell shapes apart) correlated with each shape template placed at the observed
    centroid with the observed area, over the softmax temperature."""
    n, h, w = dist_raw.shape
    a = np.clip(area, 0.003, 0.5)
    f = _foreground(dist_raw, contrast)
    f -= f.mean(axis=(1, 2), keepdims=True)
    corr = np.empty((n, len(SHAPES)))
    for k in range(len(SHAPES)):
        m = soft_masks(np.full(n, k), cx, cy, np.sqrt(a / SHAPE_AREA[k]), h, w)
        m -= m.mean(axis=(1, 2), keepdims=True)
        num = (f * m).sum(axis=(1, 2))
        corr[:, k] = num / np.sqrt((f**2).sum(axis=(1, 2)) * (m**2).sum(axis=(1, 2)) + 1e-12)
    return corr / _SHAPE_TEMPERATURE


def object_class_log_probs(images: np.ndarray) -> np.ndarray:
    """The toy world's image classifier: (N, len(COLOURS) * len(SHAPES) + 1) log-probabilities
    of each object class (colour, shape; colour-major order) and, last, of "no object".

    The oracle's own measurements make it: presence (object-background contrast), a softmax
    over the shape logits of :func:`oracle_components`' shape check, and a softmax over the
    object colour's soft match to each palette colour (the colour check's scale). It plays
    Inception-v3's part for the Inception Score on the toy world: a crisp, well-drawn object
    is classified confidently, a blurred, noisy or missing one is not.
    """
    x = np.asarray(images, dtype=np.float32) / np.float32(255.0)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected (N, H, W, 3) images, got {x.shape}")
    _, dist_raw, obj, contrast, cx, cy, area, presence = _object(x)
    palette = np.array(list(COLOURS.values()), dtype=float) / 255
    colour = -((np.linalg.norm(obj[:, None] - palette[None], axis=-1) / _S_COLOUR) ** 2)
    colour = colour - np.logaddexp.reduce(colour, axis=1, keepdims=True)
    shape = _shape_logits(dist_raw, contrast, cx, cy, area)
    shape = shape - np.logaddexp.reduce(shape, axis=1, keepdims=True)
    present = np.log(np.clip(presence, 1e-12, 1.0))[:, None]
    objects = (present[:, :, None] + colour[:, :, None] + shape[:, None, :]).reshape(len(x), -1)
    absent = np.log(np.clip(1.0 - presence, 1e-12, 1.0))[:, None]
    return np.concatenate([objects, absent], axis=1)


def _foreground(dist: np.ndarray, contrast: np.ndarray) -> np.ndarray:
    """Map distance from the background to [0, 1] coverage above the image's noise floor."""
    floor = np.median(dist.reshape(len(dist), -1), axis=1)
    span = np.maximum(contrast - floor, 0.02)
    return np.clip((dist - floor[:, None, None]) / span[:, None, None], 0.0, 1.0)


def _grad_energy(x: np.ndarray) -> np.ndarray:
    """Sum of squared forward differences over pixels and channels -> (N,)."""
    gy = x[:, 1:] - x[:, :-1]
    gx = x[:, :, 1:] - x[:, :, :-1]
    return np.einsum("nhwc,nhwc->n", gy, gy) + np.einsum("nhwc,nhwc->n", gx, gx)


# ----------------------------------------------------------------------------- reward

PARTS = ("alignment", "aesthetic", "total")


class ToyOracleReward:
    """Scores images from pixels against their captions with one part of the toy oracle."""

    def __init__(self, part: str = "total") -> None:
        if part not in PARTS:
            raise ValueError(f"unknown toy oracle part {part!r}; expected one of {PARTS}")
        self.part = part
        self.version = f"toy_oracle {part}"

    def score(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> np.ndarray:
        pixels = np.stack([np.asarray(image.convert("RGB"), dtype=np.uint8) for image in images])
        return oracle_scores(pixels, list(prompts))[self.part]


class ToyPresence:
    """The oracle's alignment part answering "is there a {phrase}?" (B-VQA's answerer).

    A phrase is scored as a caption of its own: ``"a red circle"`` checks the object's colour
    and shape, ``"a white background"`` the background; one that states no attribute is 1.
    """

    def __call__(
        self, images: Sequence[Image.Image], which: np.ndarray, phrases: Sequence[str]
    ) -> np.ndarray:
        pixels = np.stack([np.asarray(image.convert("RGB"), dtype=np.uint8) for image in images])
        return oracle_scores(pixels[np.asarray(which)], list(phrases))["alignment"]
