"""The original scorers' image transforms and prompt tokenizer, reproduced exactly.

Scores move with the smallest preprocessing change (a resize that rounds a side differently
shifts ImageReward by 1e-2), so each transform here is the original's own torchvision pipeline,
in the original's order, and not a re-implementation:

- ``center_crop``: OpenAI CLIP's ``_transform`` (``clip/clip.py``), which ImageReward 1.5's
  ``ImageReward._transform`` and the LAION aesthetic predictor (through ``clip.load``) use:
  ``Resize(n, BICUBIC)`` and ``CenterCrop(n)`` on the PIL image in its own mode, then RGB,
  ``ToTensor`` and CLIP's mean/std.
- ``hpsv2_pixels``: hpsv2 1.2.0's ``preprocess_val`` (``hpsv2/src/open_clip/transform.py``,
  ``image_transform(..., resize_longest_max=True)``): RGB (RGBA kept), ``ToTensor``, then
  ``ResizeMaxSize`` on the float tensor (antialiased BICUBIC, black padding), skipped when the
  longer side already has the model's size, then CLIP's mean/std.
- ``open_clip_tokens``: open_clip's ``SimpleTokenizer`` (``ftfy.fix_text``, HTML unescaped
  twice, whitespace collapsed, lower case, CLIP's BPE), the tokenizer hpsv2 bundles.

Tensor resizing depends on torchvision: since 0.17 ``antialias`` defaults to True for tensors,
before it was off. The parity check (``dspo.rewards.parity``) ran with torchvision 0.29.1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

import torch
from PIL import Image

from dspo.rewards.common import CLIP_MEAN, CLIP_STD


def to_rgb(image: Image.Image) -> Image.Image:
    """PIL's plain RGB conversion, which every original scorer applies, with no transparency.

    PIL keeps a palette, greyscale or RGB image's transparent colour (``info["transparency"]``,
    as PNG ``tRNS`` and GIF store it) on the converted RGB image, and transformers 5's image
    processors composite that colour onto white; transformers 4.x, which the originals ran
    with, and torchvision read only the pixels. Dropping the entry here makes every reward
    score an image exactly as its plain RGB pixels. `image` itself is left as it is.
    """
    rgb = image.convert("RGB")
    rgb.info.pop("transparency", None)
    return rgb


@cache
def center_crop(size: int) -> Callable[[Image.Image], torch.Tensor]:
    """OpenAI CLIP's evaluation transform at `size` (ImageReward's and the aesthetic head's)."""
    from torchvision import transforms as T

    return T.Compose(
        [
            T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(size),
            to_rgb,
            T.ToTensor(),
            T.Normalize(CLIP_MEAN, CLIP_STD),
        ]
    )


def center_crop_pixels(images: Sequence[Image.Image], size: int) -> torch.Tensor:
    """A ``(n, 3, size, size)`` batch through :func:`center_crop`."""
    transform = center_crop(size)
    return torch.stack([transform(image) for image in images])


def hpsv2_pixel(image: Image.Image, size: int, index: int = 0) -> torch.Tensor:
    """One image through HPSv2's ``preprocess_val`` at `size`.

    HPSv2 leaves an image whose longer side is already `size` unpadded, and keeps the alpha
    channel of RGBA images; its model cannot read either (the original fails on them too), so
    both are errors naming the image rather than a silently different score.
    """
    from torchvision.transforms import functional as F

    if image.mode == "RGBA":
        raise ValueError(
            f"image {index} is RGBA: HPSv2's transform keeps the alpha channel, which its model "
            "cannot read; convert it to RGB first"
        )
    pixels = F.to_tensor(to_rgb(image))
    height, width = pixels.shape[1:]
    scale = size / float(max(height, width))
    if scale != 1.0:
        new_size = [round(height * scale), round(width * scale)]
        # Resizing the float tensor (not the uint8 image) with torchvision's default
        # antialiasing, and no clamping afterwards, is what the original computes.
        pixels = F.resize(pixels, new_size, F.InterpolationMode.BICUBIC)
        pad_h, pad_w = size - new_size[0], size - new_size[1]
        padding = [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2]
        pixels = F.pad(pixels, padding, fill=0)
    if pixels.shape[1:] != (size, size):
        raise ValueError(
            f"image {index} is {width}x{height}: HPSv2's transform pads only images it resizes, "
            f"so one whose longer side is already {size} stays {width}x{height}, which its "
            f"model cannot read; pad or resize it to a {size}x{size} square first"
        )
    return F.normalize(pixels, CLIP_MEAN, CLIP_STD)


def hpsv2_pixels(images: Sequence[Image.Image], size: int) -> torch.Tensor:
    """A ``(n, 3, size, size)`` batch through :func:`hpsv2_pixel`."""
    return torch.stack([hpsv2_pixel(image, size, i) for i, image in enumerate(images)])


@cache
def _open_clip_tokenizer() -> Any:
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


def open_clip_tokens(prompts: Sequence[str], context_length: int) -> torch.Tensor:
    """open_clip's token ids, ``(n, context_length)``: start, BPE, end, zero padding.

    Longer prompts are cut to `context_length` with the end token last, as open_clip does.
    """
    return _open_clip_tokenizer()(list(prompts), context_length=context_length)
