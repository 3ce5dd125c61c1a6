"""Which rows of a pair source are candidates: the checks of a row's metadata, and whether
its images decode.

:func:`screen` counts each row that fails a check under the first reason that applies, in the
order of :data:`SCREEN_REASONS`; :func:`image_is_readable` is the check of a candidate's
images (:mod:`dspo.data.pairs` runs it once per duplicate group, under
:func:`strict_truncation`).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageFile

from dspo.data.dedup import (
    CAPTION_BLANK,
    CAPTION_MISSING,
    CAPTION_UNREADABLE,
    caption_text,
    normalise_caption,
    pair_key,
)
from dspo.data.image_refs import image_bytes

_VALID_LABELS = {(1.0, 0.0), (0.0, 1.0), (0.5, 0.5)}
# Why a source row is not kept, in the order the checks run (each row counts once, first match):
# the checks of its metadata (SCREEN_REASONS), then of its images among the rows visited.
SCREEN_REASONS = (
    CAPTION_MISSING,
    CAPTION_UNREADABLE,
    CAPTION_BLANK,
    "unlabelled",
    "invalid_label",
    "identical",
    "ties_dropped",
    "eval_prompt",
)


@contextlib.contextmanager
def strict_truncation() -> Iterator[None]:
    """PIL refuses truncated images inside (:func:`image_is_readable` relies on it)."""
    # Other code (training loops) may switch this global on; the check below relies on it off.
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def image_is_readable(data: bytes | None) -> bool:
    """True if ``data`` decodes completely with PIL.

    ``Image.verify()`` is not enough: for JPEG it only parses the headers, so a file cut off
    inside the scan data passes. A full ``load()`` reads every entropy-coded byte and raises on
    truncation; ``draft`` lets libjpeg decode at 1/8 scale, which still walks the whole stream
    but is about twice as fast.
    """
    if not data:
        return False
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.draft("RGB", (max(1, img.width // 8), max(1, img.height // 8)))
            img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return False
    return True


def _as_bool(value: Any, default: bool) -> bool:
    # Nullable columns give None, NaN or pd.NA for a missing flag; only an explicit False drops.
    if value is None or pd.isna(value):
        return default
    return bool(value)


@dataclass(frozen=True)
class UnitRows:
    """The columns of one source unit that screening and the part's rows read, parsed once.

    ``captions`` holds each row's decoded text ("" where ``caption_issues`` gives a reason).
    """

    captions: list[str]
    caption_issues: list[str | None]
    label_0: np.ndarray
    label_1: np.ndarray
    jpg_0: list[bytes | None]
    jpg_1: list[bytes | None]

    @classmethod
    def of(cls, df: pd.DataFrame) -> UnitRows:
        texts = [caption_text(c) for c in df["caption"].tolist()]
        return cls(
            captions=[text for text, _ in texts],
            caption_issues=[issue for _, issue in texts],
            label_0=pd.to_numeric(df["label_0"], errors="coerce").to_numpy(dtype=float),
            label_1=pd.to_numeric(df["label_1"], errors="coerce").to_numpy(dtype=float),
            jpg_0=[image_bytes(v) for v in df["jpg_0"].tolist()],
            jpg_1=[image_bytes(v) for v in df["jpg_1"].tolist()],
        )

    def first_wins(self, row: int) -> bool:
        """Whether ``jpg_0`` goes first: it is preferred, or the pair is a tie (source order)."""
        return bool(self.label_0[row] >= self.label_1[row])

    def ordered(self, row: int) -> tuple[bytes | None, bytes | None]:
        """The row's images, the preferred one first."""
        pair = (self.jpg_0[row], self.jpg_1[row])
        return pair if self.first_wins(row) else pair[::-1]

    def pair_key(self, row: int) -> int:
        """The row's :func:`~dspo.data.dedup.pair_key` (a missing image counts as empty)."""
        first, second = self.ordered(row)
        tie = bool(self.label_0[row] == self.label_1[row])
        return pair_key(self.captions[row], first or b"", second or b"", tie)


def screen(
    df: pd.DataFrame, parsed: UnitRows, drop_ties: bool, exclude: frozenset[str]
) -> tuple[list[int], dict[str, int]]:
    """Rows that pass the metadata checks, and counts of the others by reason.

    ``exclude`` holds the normalised evaluation prompts: a caption among them is dropped.
    """
    counts = dict.fromkeys(SCREEN_REASONS, 0)
    n = len(df)
    has_label = df["has_label"].tolist() if "has_label" in df.columns else [True] * n
    different = df["are_different"].tolist() if "are_different" in df.columns else [True] * n
    label_0, label_1, jpg_0, jpg_1 = parsed.label_0, parsed.label_1, parsed.jpg_0, parsed.jpg_1
    candidates = []
    for row in range(n):
        labels = (float(label_0[row]), float(label_1[row]))
        if parsed.caption_issues[row] is not None:
            counts[parsed.caption_issues[row]] += 1
        elif not _as_bool(has_label[row], default=True):
            counts["unlabelled"] += 1
        elif labels not in _VALID_LABELS:
            counts["invalid_label"] += 1
        elif not _as_bool(different[row], default=True) or (
            jpg_0[row] is not None and jpg_0[row] == jpg_1[row]
        ):
            counts["identical"] += 1
        elif labels == (0.5, 0.5) and drop_ties:
            counts["ties_dropped"] += 1
        elif exclude and normalise_caption(parsed.captions[row]) in exclude:
            counts["eval_prompt"] += 1
        else:
            candidates.append(row)
    return candidates, counts
