"""A source row's checks: its metadata, and whether its images decode (through one pairs
part and the gather, as tests/data/test_pairs.py runs them)."""

from __future__ import annotations

import io

import pandas as pd
import pytest
from PIL import Image

from dspo.data.screening import image_is_readable
from tests.data.test_pairs import BLUE, GREEN, RED, jpeg, normalise, row

# --- image check ---------------------------------------------------------------------------


def test_truncated_jpeg_passes_verify_but_fails_the_check():
    data = jpeg(GREEN, size=128)
    cut = data[: len(data) // 2]
    Image.open(io.BytesIO(cut)).verify()  # header-only check: does not notice
    assert image_is_readable(data)
    assert not image_is_readable(cut)
    assert not image_is_readable(b"garbage")
    assert not image_is_readable(None)


def test_check_ignores_global_load_truncated_images(monkeypatch):
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    cut = jpeg(GREEN, size=128)[:2000]
    df = pd.DataFrame([row("x", jpeg(RED), cut, 1.0, 0.0), row("y", jpeg(RED), jpeg(BLUE), 1, 0)])
    _, stats = normalise(df)
    assert stats["unreadable"] == 1
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored afterwards


# --- metadata ------------------------------------------------------------------------------------


def test_identical_bytes_count_as_identical_without_flag(raw):
    red = jpeg(RED)
    df = pd.DataFrame([row("x", red, red, 1.0, 0.0)]).drop(columns=["are_different"])
    with pytest.raises(ValueError, match="identical=1"):
        normalise(df)


def test_missing_flags_do_not_drop_rows():
    red, blue = jpeg(RED), jpeg(BLUE)
    df = pd.DataFrame(
        [
            row("a", red, blue, 1.0, 0.0, has_label=None, are_different=None),
            row("b", blue, red, 0.0, 1.0, has_label=True, are_different=True),
        ]
    )
    pairs, stats = normalise(df.drop(columns=["ranking_id"]))
    assert stats["kept"] == 2 and stats["unlabelled"] == stats["identical"] == 0
