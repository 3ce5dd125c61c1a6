"""Procedural toy world: captions, renders with web-quality defects, an analytic oracle, pairs.

No hub model or dataset can be downloaded in the default preset, so this module stands in for
Pick-a-Pic and PickScore. Captions come from a small grammar (colour, shape, position, size,
background); images are rendered procedurally, with random defects that mimic scraped web data;
an analytic oracle scores any RGB image against any caption from pixels alone (an alignment part
and an aesthetic part). Preference pairs are two renders of one caption labelled by
Bradley-Terry sampling from the oracle and written in the Pick-a-Pic v2 parquet schema.
"""

from __future__ import annotations

import functools
import io
import itertools
import re
import textwrap
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

# ----------------------------------------------------------------------------- vocabulary

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 25, 35),
    "green": (30, 170, 50),
    "blue": (30, 70, 230),
    "yellow": (235, 225, 40),
    "purple": (150, 40, 190),
    "orange": (250, 120, 20),
}
# Backgrounds share no word and no colour with objects, so a caption names each unambiguously.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "black": (10, 10, 10),
    "gray": (128, 128, 128),
    "navy": (15, 25, 90),
    "beige": (230, 210, 170),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# Object centre as (x, y) fractions of the frame, y pointing down.
POSITIONS: dict[str, tuple[float, float]] = {
    "center": (0.5, 0.5),
    "left": (0.3, 0.5),
    "right": (0.7, 0.5),
    "top": (0.5, 0.3),
    "bottom": (0.5, 0.7),
}
# Radius of the equivalent circle as a fraction of the frame side.
SIZES: dict[str, float] = {"small": 0.13, "large": 0.21}
DEFECTS: tuple[str, ...] = (
    "wrong_colour",
    "wrong_shape",
    "misplaced",
    "blur",
    "noise",
    "low_contrast",
)
ATTRIBUTES: tuple[str, ...] = ("colour", "shape", "position", "size", "background")
_VOCAB: dict[str, tuple[str, ...]] = {
    "colour": tuple(COLOURS),
    "shape": SHAPES,
    "position": tuple(POSITIONS),
    "size": tuple(SIZES),
    "background": tuple(BACKGROUNDS),
}
_WORD_TO_ATTR: dict[str, str] = {w: a for a, words in _VOCAB.items() for w in words}

# Triangle (apex up, centroid at the object centre): base half-width a = _TRI_A * r, height 2a.
_TRI_A = 1.1
# Area of each shape in units of r**2; square is sized to match the circle.
_SHAPE_AREA: tuple[float, ...] = (np.pi, np.pi, 2.0 * _TRI_A**2)

# ----------------------------------------------------------------------------- captions

# Each template is a list of chunks; a chunk naming an unstated attribute is dropped, except the
# shape noun, which falls back to "object" (not a vocabulary word, so parsing gives None again).
_TEMPLATES: tuple[tuple[str, ...], ...] = (
    ("a", "{size}", "{colour}", "{shape}", "at the {position}", "on a {background} background"),
    ("{size}", "{colour}", "{shape},", "{position},", "{background} background"),
    (
        "a picture of one",
        "{colour}",
        "{shape}",
        "({size})",
        "placed at the {position},",
        "{background} backdrop",
    ),
    ("{background} backdrop with one", "{colour}", "{shape},", "{size},", "toward the {position}"),
)
TRAIN_TEMPLATES: tuple[int, ...] = (0, 1)
HELDOUT_TEMPLATES: tuple[int, ...] = (2, 3)
_FIELD_RE = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class Scene:
    """What a caption states; None means the caption does not say."""

    colour: str | None = None
    shape: str | None = None
    position: str | None = None
    size: str | None = None
    background: str | None = None


def caption(scene: Scene, template: int) -> str:
    """Write ``scene`` with caption template ``template`` (0-1 training, 2-3 held out)."""
    chunks = []
    for chunk in _TEMPLATES[template]:
        attr = _FIELD_RE.search(chunk)
        if attr is None:
            chunks.append(chunk)
            continue
        value = getattr(scene, attr.group(1))
        if value is None and attr.group(1) == "shape":
            value = "object"
        if value is not None:
            chunks.append(_FIELD_RE.sub(value, chunk))
    return " ".join(chunks).strip(" ,")


@functools.lru_cache(maxsize=65536)
def parse_caption(text: str) -> Scene:
    """Find the attribute words in any caption; the first word of each attribute wins."""
    found: dict[str, str] = {}
    for word in re.findall(r"[a-z]+", text.lower()):
        attr = _WORD_TO_ATTR.get(word)
        if attr is not None and attr not in found:
            found[attr] = word
    return Scene(**found)


def all_scenes() -> list[Scene]:
    """Every complete scene (6 colours x 3 shapes x 5 positions x 2 sizes x 5 backgrounds)."""
    return [Scene(*combo) for combo in itertools.product(*(_VOCAB[a] for a in ATTRIBUTES))]


def split_scenes(
    seed: int, holdout_fraction: float = 0.1, n_unseen_combinations: int = 3
) -> dict[str, list[Scene]]:
    """Split all scenes into "train", "heldout_captions" and "unseen_combinations".

    Whole colour-shape combinations are held out first (compositional generalisation); a
    fraction of the remaining scenes is then held out as unseen captions.
    """
    rng = np.random.default_rng([seed, 0])
    combos = list(itertools.product(COLOURS, SHAPES))
    unseen = {combos[i] for i in rng.choice(len(combos), n_unseen_combinations, replace=False)}
    scenes = all_scenes()
    seen = [s for s in scenes if (s.colour, s.shape) not in unseen]
    n_heldout = int(round(holdout_fraction * len(seen)))
    heldout_idx = set(rng.choice(len(seen), n_heldout, replace=False).tolist())
    return {
        "train": [s for i, s in enumerate(seen) if i not in heldout_idx],
        "heldout_captions": [s for i, s in enumerate(seen) if i in heldout_idx],
        "unseen_combinations": [s for s in scenes if (s.colour, s.shape) in unseen],
    }


# ----------------------------------------------------------------------------- geometry


def _grid(n: int) -> np.ndarray:
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


def _soft_masks(
    shape_idx: np.ndarray, cx: np.ndarray, cy: np.ndarray, r: np.ndarray, h: int, w: int
) -> np.ndarray:
    """Analytically anti-aliased coverage (N, h, w) from the signed distance in pixels."""
    sd = _sdf(shape_idx, cx, cy, r, _grid(h), _grid(w)) * min(h, w)
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


def _blur(x: np.ndarray, sigma_px: float | np.ndarray) -> np.ndarray:
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
# Rows per parquet row group of the toy pairs (Pick-a-Pic's hub files hold a few hundred).
TOY_ROW_GROUP = 100
_CHUNK = 1024  # images per supersampled coverage block, to bound memory


def _coverage(
    shape_idx: np.ndarray, cx: np.ndarray, cy: np.ndarray, r: np.ndarray, size: int
) -> np.ndarray:
    """Supersampled (4x4 per pixel) anti-aliased coverage of each object -> (N, size, size)."""
    fine = _grid(size * _SUPERSAMPLE)
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
        img[blur_i] = _blur(img[blur_i], sigma)
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


# ----------------------------------------------------------------------------- oracle

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
    ys, xs = _grid(h), _grid(w)

    # Background = per-channel median (the object covers well under half the frame).
    bg = np.median(x.reshape(n, -1, 3), axis=1)
    dist_raw = np.linalg.norm(x - bg[:, None, None], axis=-1)
    dist = np.linalg.norm(_blur(x, _SMOOTH * side) - bg[:, None, None], axis=-1)
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
        ideal = _soft_masks(ideal_shape, px, py, t_size[i], h, w).mean(axis=(1, 2))
        checks[i, 3] = presence[i] * _gauss_score(np.log(area[i] / ideal), _S_SIZE)

    # Shape: correlate the unsmoothed foreground map (smoothing erases the corners that tell
    # shapes apart) with each shape template placed at the observed centroid with the observed
    # area, then soft-max over shapes.
    has_shape = ~np.isnan(t_shape)
    if has_shape.any():
        i = np.flatnonzero(has_shape)
        a = np.clip(area[i], 0.003, 0.5)
        f = _foreground(dist_raw[i], contrast[i])
        f -= f.mean(axis=(1, 2), keepdims=True)
        corr = np.empty((len(i), len(SHAPES)))
        for k in range(len(SHAPES)):
            m = _soft_masks(np.full(len(i), k), cx[i], cy[i], np.sqrt(a / _SHAPE_AREA[k]), h, w)
            m -= m.mean(axis=(1, 2), keepdims=True)
            num = (f * m).sum(axis=(1, 2))
            corr[:, k] = num / np.sqrt((f**2).sum(axis=(1, 2)) * (m**2).sum(axis=(1, 2)) + 1e-12)
        logits = corr / _SHAPE_TEMPERATURE
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
    ratio = (_grad_energy(_blur(x, _SHARP_PROBE * side)) + 1e-6) / energy
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


# ----------------------------------------------------------------------------- pairs

JPEG_QUALITY = 95
_MODEL_NAME = "toy-renderer"
_N_USERS = 500


def encode_jpeg(image: np.ndarray) -> bytes:
    """JPEG bytes of an (H, W, 3) uint8 image; 4:4:4 so colour survives at 16x16."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    return buf.getvalue()


def decode_jpeg(data: bytes) -> np.ndarray:
    """(H, W, 3) uint8 RGB array from image bytes."""
    with Image.open(io.BytesIO(data)) as im:
        return np.array(im if im.mode == "RGB" else im.convert("RGB"))


def _uuids(rng: np.random.Generator, n: int) -> list[str]:
    raw = rng.bytes(16 * n)
    return [str(uuid.UUID(bytes=raw[16 * i : 16 * i + 16], version=4)) for i in range(n)]


def _make_pairs(
    train_scenes: Sequence[Scene],
    rng: np.random.Generator,
    n_pairs: int,
    image_size: int,
    defect_prob: float,
    bt_temperature: float,
    tie_margin: float,
    max_pairs_per_prompt: int,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``make_pairs`` plus what the stats need: oracle totals and defects of both images."""
    n = n_pairs
    # Prompts repeat like Pick-a-Pic duplicates: draw captions, then 1..max pairs for each.
    per_prompt = rng.integers(1, max_pairs_per_prompt + 1, n)
    scene_idx = rng.integers(0, len(train_scenes), n)
    template = rng.choice(TRAIN_TEMPLATES, n)
    prompt_of_pair = np.repeat(np.arange(n), per_prompt)[:n]
    scenes = [train_scenes[scene_idx[p]] for p in prompt_of_pair]
    captions = [caption(s, int(template[p])) for s, p in zip(scenes, prompt_of_pair, strict=True)]

    images, defects = render_batch(scenes + scenes, rng, image_size, defect_prob)
    jpgs = [encode_jpeg(im) for im in images]
    # Label what annotators would see: the decoded JPEG, not the raw render.
    decoded = np.stack([decode_jpeg(b) for b in jpgs])
    total = oracle_scores(decoded, captions + captions)["total"]
    r0, r1 = total[:n], total[n:]

    p0 = 1.0 / (1.0 + np.exp(-(r0 - r1) / bt_temperature))
    win0 = rng.random(n) < p0
    tie = np.abs(r0 - r1) < tie_margin
    label_0 = np.where(tie, 0.5, win0.astype(float))
    uids = _uuids(rng, 2 * n)
    uid0, uid1 = uids[:n], uids[n:]
    user_id = rng.integers(0, _N_USERS, n)
    order = rng.permutation(n)  # duplicates of a prompt are scattered, as in the real data

    df = pd.DataFrame(
        {
            "are_different": np.ones(n, dtype=bool),
            "best_image_uid": [
                "" if t else (a if w else b)
                for t, w, a, b in zip(tie, win0, uid0, uid1, strict=True)
            ],
            "caption": captions,
            "has_label": np.ones(n, dtype=bool),
            "image_0_uid": uid0,
            "image_0_url": [f"toy://{u}" for u in uid0],
            "image_1_uid": uid1,
            "image_1_url": [f"toy://{u}" for u in uid1],
            "jpg_0": jpgs[:n],
            "jpg_1": jpgs[n:],
            "label_0": label_0,
            "label_1": 1.0 - label_0,
            "model_0": [_MODEL_NAME] * n,
            "model_1": [_MODEL_NAME] * n,
            "user_id": user_id.astype(np.int64),
        }
    ).iloc[order]
    df = df.reset_index(drop=True)
    df.insert(df.columns.get_loc("user_id"), "ranking_id", np.arange(n, dtype=np.int64))
    df["num_example_per_prompt"] = (
        df.groupby("caption")["caption"].transform("size").astype(np.int64)
    )
    info = {
        "r0": r0[order],
        "r1": r1[order],
        "defects": [defects[i] for i in order] + [defects[n + i] for i in order],
    }
    return df, info


def make_pairs(
    train_scenes: Sequence[Scene],
    rng: np.random.Generator,
    n_pairs: int,
    image_size: int = 16,
    defect_prob: float = 0.15,
    bt_temperature: float = 0.05,
    tie_margin: float = 0.01,
    max_pairs_per_prompt: int = 8,
) -> pd.DataFrame:
    """Preference pairs in the Pick-a-Pic v2 schema, labelled by Bradley-Terry on the oracle.

    P(image 0 preferred) = sigmoid((R0 - R1) / bt_temperature) with R the oracle total of the
    decoded JPEG; pairs closer than ``tie_margin`` are ties (labels 0.5 / 0.5).
    """
    df, _ = _make_pairs(
        train_scenes,
        rng,
        n_pairs,
        image_size,
        defect_prob,
        bt_temperature,
        tie_margin,
        max_pairs_per_prompt,
    )
    return df


# ----------------------------------------------------------------------------- world


@dataclass(frozen=True)
class ToyWorldConfig:
    """Everything that determines the toy world; the same config gives identical files."""

    seed: int = 0
    image_size: int = 16
    defect_prob: float = 0.15
    n_pairs: int = 6000
    max_pairs_per_prompt: int = 8
    bt_temperature: float = 0.05
    tie_margin: float = 0.01
    prompts_per_set: int = 48
    holdout_fraction: float = 0.1
    n_unseen_combinations: int = 3

    def __post_init__(self) -> None:
        if self.image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {self.image_size}")
        if not 0.0 <= self.defect_prob <= 1.0:
            raise ValueError(f"defect_prob must be in [0, 1], got {self.defect_prob}")
        if self.bt_temperature <= 0:
            raise ValueError(f"bt_temperature must be > 0, got {self.bt_temperature}")
        if self.n_pairs < 1 or self.max_pairs_per_prompt < 1 or self.prompts_per_set < 1:
            raise ValueError("n_pairs, max_pairs_per_prompt and prompts_per_set must be >= 1")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ToyWorldConfig:
        """Build from a mapping (a preset's ``toy`` section); unknown keys are an error."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(
                f"unknown toy-world config key(s) {unknown}; known keys: {', '.join(known)}"
            )
        return cls(**d)


@functools.lru_cache(maxsize=16)
def _train_scenes(seed: int, holdout_fraction: float, n_unseen: int) -> tuple[Scene, ...]:
    return tuple(split_scenes(seed, holdout_fraction, n_unseen)["train"])


def _prompt_set(
    scenes: Sequence[Scene], templates: Sequence[int], n: int, rng: np.random.Generator
) -> list[str]:
    if n > len(scenes):
        raise ValueError(f"prompts_per_set={n} exceeds the {len(scenes)} scenes available")
    chosen = rng.choice(len(scenes), n, replace=False)
    return [caption(scenes[i], int(rng.choice(templates))) for i in chosen]


def editing_set(
    scenes: Sequence[Scene], n: int, image_size: int, rng: np.random.Generator
) -> pd.DataFrame:
    """The toy stand-in for the InstructPix2Pix editing set: a source render and a caption.

    Each row renders one scene cleanly and asks for the same scene with its colour or its
    background changed (to a value that differs from the object's colour), as an edit
    instruction would. Columns: source_prompt, prompt (the edited caption), image (PNG).
    """
    if n > len(scenes):
        raise ValueError(f"prompts_per_set={n} exceeds the {len(scenes)} scenes available")
    rows = []
    for i in rng.choice(len(scenes), n, replace=False):
        source = scenes[int(i)]
        image, _ = render(source, rng, image_size, defect_prob=0.0)
        if rng.random() < 0.5:
            colours = [c for c in COLOURS if c != source.colour]
            target = Scene(**{**vars(source), "colour": str(rng.choice(colours))})
        else:
            backgrounds = [b for b in BACKGROUNDS if b != source.background]
            target = Scene(**{**vars(source), "background": str(rng.choice(backgrounds))})
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "PNG")
        template = int(rng.choice(TRAIN_TEMPLATES))
        rows.append(
            {
                "source_prompt": caption(source, template),
                "prompt": caption(target, template),
                "image": buffer.getvalue(),
            }
        )
    return pd.DataFrame(rows)


def build_world(cfg: ToyWorldConfig, out_dir: Path) -> dict[str, Any]:
    """Write the pairs parquet and the evaluation prompt sets; return summary statistics.

    Files: ``out_dir/pairs/train-00000-of-00001.parquet`` (Pick-a-Pic v2 columns, in row
    groups of ``TOY_ROW_GROUP`` rows: the units that the scattered normalisation splits),
    ``out_dir/prompts.parquet`` (prompt_set, prompt_id, prompt) with the prompt sets
    "heldout_captions", "unseen_combinations" and "new_templates", and
    ``out_dir/editing.parquet`` (see `editing_set`) from held-out captions.
    """
    out_dir = Path(out_dir)
    split = split_scenes(cfg.seed, cfg.holdout_fraction, cfg.n_unseen_combinations)
    # Independent streams per product, so changing n_pairs leaves the prompt sets unchanged.
    pairs, info = _make_pairs(
        split["train"],
        np.random.default_rng([cfg.seed, 2]),
        cfg.n_pairs,
        cfg.image_size,
        cfg.defect_prob,
        cfg.bt_temperature,
        cfg.tie_margin,
        cfg.max_pairs_per_prompt,
    )
    rng = np.random.default_rng([cfg.seed, 1])
    sets = {
        "heldout_captions": (split["heldout_captions"], TRAIN_TEMPLATES),
        "unseen_combinations": (split["unseen_combinations"], TRAIN_TEMPLATES),
        "new_templates": (split["heldout_captions"], HELDOUT_TEMPLATES),
    }
    rows = []
    for name, (scenes, templates) in sets.items():
        prompts = _prompt_set(scenes, templates, cfg.prompts_per_set, rng)
        rows += [(name, i, p) for i, p in enumerate(prompts)]
    prompts_df = pd.DataFrame(rows, columns=["prompt_set", "prompt_id", "prompt"])
    prompts_df["prompt_id"] = prompts_df["prompt_id"].astype(np.int64)

    editing = editing_set(
        split["heldout_captions"],
        cfg.prompts_per_set,
        cfg.image_size,
        np.random.default_rng([cfg.seed, 3]),
    )

    (out_dir / "pairs").mkdir(parents=True, exist_ok=True)
    pairs.to_parquet(
        out_dir / "pairs" / "train-00000-of-00001.parquet",
        index=False,
        row_group_size=TOY_ROW_GROUP,
    )
    prompts_df.to_parquet(out_dir / "prompts.parquet", index=False)
    editing.to_parquet(out_dir / "editing.parquet", index=False)

    r0, r1 = info["r0"], info["r1"]
    decided = pairs["label_0"].to_numpy() != 0.5
    agree = (pairs["label_0"].to_numpy() == 1.0) == (r0 > r1)
    has_defect = np.array([len(d) > 0 for d in info["defects"]])
    totals = np.concatenate([r0, r1])
    return {
        "n_pairs": int(len(pairs)),
        "n_ties": int((~decided).sum()),
        "n_unique_captions": int(pairs["caption"].nunique()),
        "label_agreement": float(agree[decided].mean()) if decided.any() else float("nan"),
        "defect_rate": float(has_defect.mean()),
        "mean_total_clean": float(totals[~has_defect].mean()) if (~has_defect).any() else None,
        "mean_total_defective": float(totals[has_defect].mean()) if has_defect.any() else None,
        "n_prompts": {name: cfg.prompts_per_set for name in [*sets, "editing"]},
    }


def sample_unlabelled(
    cfg: ToyWorldConfig, rng: np.random.Generator, n: int
) -> tuple[np.ndarray, list[str]]:
    """Fresh renders (defects included) of train scenes with training templates.

    This is the pre-training stream of the base model: web data of mixed quality.
    """
    scenes = _train_scenes(cfg.seed, cfg.holdout_fraction, cfg.n_unseen_combinations)
    idx = rng.integers(0, len(scenes), n)
    templates = rng.choice(TRAIN_TEMPLATES, n)
    chosen = [scenes[i] for i in idx]
    images, _ = render_batch(chosen, rng, cfg.image_size, cfg.defect_prob)
    return images, [caption(s, int(t)) for s, t in zip(chosen, templates, strict=True)]


def preview_pairs(pairs_parquet: Path, out_png: Path, n: int = 8) -> None:
    """Save a PNG of the first ``n`` pairs with their oracle scores, label and caption."""
    from matplotlib.figure import Figure

    df = pd.read_parquet(pairs_parquet).head(n)
    images = np.stack([decode_jpeg(b) for b in [*df["jpg_0"], *df["jpg_1"]]])
    scores = oracle_scores(images, [*df["caption"], *df["caption"]])
    k = len(df)
    cols = 2
    rows = -(-k // cols)
    fig = Figure(figsize=(5.2 * cols, 3.7 * rows), layout="constrained")
    blocks = np.atleast_1d(fig.subfigures(rows, cols)).ravel()
    for j, block in enumerate(blocks):
        if j >= k:
            continue
        row = df.iloc[j]
        block.suptitle("\n".join(textwrap.wrap(row["caption"], 48)), fontsize=10)
        axes = block.subplots(1, 2)
        for side, ax in enumerate(axes):
            i = j + side * k
            label = row[f"label_{side}"]
            verdict = "tie" if label == 0.5 else ("preferred" if label == 1.0 else "rejected")
            ax.imshow(images[i], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            colour = {"preferred": "tab:green", "rejected": "tab:red", "tie": "tab:gray"}[verdict]
            for spine in ax.spines.values():
                spine.set_color(colour)
                spine.set_linewidth(4)
            ax.set_xlabel(
                f"{verdict}\nalign {scores['alignment'][i]:.2f}  aesth "
                f"{scores['aesthetic'][i]:.2f}\ntotal {scores['total'][i]:.2f}",
                fontsize=9,
            )
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    # The constrained layout leaves the last row's score lines below the figure's edge;
    # a tight bounding box keeps every label.
    fig.savefig(out_png, dpi=100, bbox_inches="tight", pad_inches=0.1)
