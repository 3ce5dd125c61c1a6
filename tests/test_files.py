"""Atomic writers and the part-folder protocol shared by the scatter/gather steps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dspo.files import PART_RECORD, part_folder, png_bytes, write_json_atomic
from dspo.seeding import seeded_generator


def test_a_part_is_renamed_into_place_whole_with_its_record_last(tmp_path: Path) -> None:
    out = tmp_path / "part0"
    with part_folder(out, "pairs") as (tmp, record):
        (tmp / "rows.bin").write_bytes(b"x")
        assert not out.exists()
        record["rows"] = 1
    assert json.loads((out / PART_RECORD).read_text()) == {"rows": 1}
    assert (out / "rows.bin").read_bytes() == b"x"
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_failed_part_keeps_the_finished_one_it_would_replace(tmp_path: Path) -> None:
    out = tmp_path / "part0"
    with part_folder(out, "cache") as (tmp, record):
        (tmp / "old").write_text("old")
    with pytest.raises(RuntimeError), part_folder(out, "cache") as (tmp, record):
        (tmp / "new").write_text("new")
        raise RuntimeError("cut")
    assert (out / "old").read_text() == "old" and not (out / "new").exists()
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_folder_that_is_not_a_part_is_refused_before_any_work(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    started = []
    refused = pytest.raises(ValueError, match="mine exists and is not a reference part")
    with refused, part_folder(out, "reference"):
        started.append(True)
    assert not started and (out / "notes.txt").read_text() == "keep"


def test_json_and_png_writers(tmp_path: Path) -> None:
    path = tmp_path / "record.json"
    write_json_atomic({"a": 1}, path, indent=2)
    assert path.read_text() == '{\n  "a": 1\n}\n'
    image = np.random.default_rng(0).random((8, 8, 3))
    data = png_bytes(image, {"dspo_key": "k"})
    (tmp_path / "x.png").write_bytes(data)
    with Image.open(tmp_path / "x.png") as decoded:
        assert decoded.info["dspo_key"] == "k"
        assert np.array_equal(np.asarray(decoded), (image * 255).round().astype(np.uint8))


def test_seeded_generators_depend_on_the_position_only() -> None:
    def draw(*parts: int) -> torch.Tensor:
        return torch.randn(3, generator=seeded_generator(*parts))

    assert torch.equal(draw(0, 2, 5), draw(0, 2, 5))
    assert not torch.equal(draw(0, 2, 5), draw(0, 5, 2))
    assert not torch.equal(draw(0, 2, 5), draw(1, 2, 5))
    # The sampler's historical seed of (seed, prompt): seed * 1_000_003 + prompt.
    expected = torch.Generator().manual_seed(3 * 1_000_003 + 7)
    assert torch.equal(draw(3, 7), torch.randn(3, generator=expected))
