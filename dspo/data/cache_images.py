"""An image as the cache's VAE sees it: decoded, its shorter side resized, cropped (centre or
seeded random) and, optionally, mirrored, with what SDXL's size conditioning needs (its size
before resizing and its crop corner). The cache (:mod:`dspo.data.cache_encode`) and the
benchmarks prepare images here.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

CROPS = ("center", "random")


@dataclass(frozen=True)
class PreparedImage:
    """Pixels as the VAE sees them, and where they came from (SDXL's size conditioning).

    ``mirror_crop_top_left`` is the crop corner of the same pixels mirrored left to right:
    cropping and then mirroring equals mirroring and then cropping there.
    """

    pixels: np.ndarray
    original_size: tuple[int, int]
    crop_top_left: tuple[int, int]
    mirror_crop_top_left: tuple[int, int]


def load_image(
    data: bytes,
    resolution: int,
    *,
    crop: str = "center",
    flip: bool = False,
    rng: np.random.Generator | None = None,
) -> PreparedImage:
    """JPEG/PNG bytes -> (3, r, r) float32 in [-1, 1]: shorter side resized to r, then cropped.

    ``crop`` is ``center`` or ``random``; ``flip`` mirrors the image with probability 1/2 before
    cropping (paper D.3). Random crops and flips draw from ``rng``. The recorded crop corner
    refers to the image as cropped, mirrored or not.
    """
    if crop not in CROPS:
        raise ValueError(f"crop {crop!r} is not one of {CROPS}")
    if (crop == "random" or flip) and rng is None:
        raise ValueError("random crops and flips need a seeded rng")
    image = Image.open(io.BytesIO(data)).convert("RGB")
    original = (image.height, image.width)
    scale = resolution / min(image.size)
    if scale != 1.0:
        size = (
            max(resolution, round(image.width * scale)),
            max(resolution, round(image.height * scale)),
        )
        image = image.resize(size, Image.Resampling.BICUBIC)
    if flip and rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    spare_h, spare_w = image.height - resolution, image.width - resolution
    if crop == "random":
        top, left = int(rng.integers(spare_h + 1)), int(rng.integers(spare_w + 1))
    else:
        top, left = spare_h // 2, spare_w // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    pixels = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0
    return PreparedImage(pixels, original, (top, left), (top, spare_w - left))


def prepare_image(data: bytes, resolution: int) -> np.ndarray:
    """JPEG/PNG bytes -> float32 (3, r, r) in [-1, 1]: shorter side resized, centre-cropped."""
    return load_image(data, resolution).pixels
