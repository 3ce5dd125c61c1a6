"""Atomic writers and the part-folder protocol shared by the scatter/gather steps."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dspo.core.files import (
    PART_RECORD,
    DiskFull,
    part_folder,
    png_bytes,
    read_part_records,
    replace_folder,
    space_for,
    write_bytes_atomic,
    write_json_atomic,
)
from dspo.core.seeding import seeded_generator


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


# --- A full disk ---------------------------------------------------------------------------

FREE = 12345  # bytes the simulated disk has free


class Disk:
    """A disk that fills on demand: then writes through ``Path.write_bytes`` and ``open``
    for writing fail with ENOSPC as the operating system fails them, part of the bytes
    written, and ``shutil.disk_usage`` reports :data:`FREE` bytes free."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.full = False
        real_write, real_open = Path.write_bytes, open
        usage = shutil.disk_usage(".")

        def write_bytes(path: Path, data: bytes) -> int:
            if self.full:
                real_write(path, data[: len(data) // 2])
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_write(path, data)

        def opened(file, mode="r", *args, **kwargs):
            if self.full and "w" in mode:
                real_open(file, mode, *args, **kwargs).close()
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_open(file, mode, *args, **kwargs)

        monkeypatch.setattr(Path, "write_bytes", write_bytes)
        monkeypatch.setattr("builtins.open", opened)
        monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=FREE))


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> Disk:
    return Disk(monkeypatch)


def test_a_full_disk_names_the_image_and_the_space_and_keeps_the_old_one(
    tmp_path: Path, disk: Disk
) -> None:
    path = tmp_path / "images/0.png"
    write_bytes_atomic(b"old image", path)
    disk.full = True
    with pytest.raises(DiskFull) as raised:
        write_bytes_atomic(b"new image!" * 10_000, path)
    message = str(raised.value)
    assert raised.value.errno == errno.ENOSPC
    assert "No space left on device" in message and str(path) in message
    assert "it needs 97.7 KiB" in message and f"{FREE / 1024:.1f} KiB were free" in message
    # What was there is intact and nothing partial is left beside it.
    assert path.read_bytes() == b"old image" and sorted(path.parent.iterdir()) == [path]
    disk.full = False  # space freed: the same write now succeeds
    write_bytes_atomic(b"new image!", path)
    assert path.read_bytes() == b"new image!" and sorted(path.parent.iterdir()) == [path]


def test_a_full_disk_names_the_record_and_keeps_the_old_one(tmp_path: Path, disk: Disk) -> None:
    path = tmp_path / "record.json"
    write_json_atomic({"a": 1}, path)
    disk.full = True
    with pytest.raises(DiskFull, match=f"No space left on device: writing {path} failed"):
        write_json_atomic({"a": 2}, path)
    assert json.loads(path.read_text()) == {"a": 1} and sorted(tmp_path.iterdir()) == [path]
    disk.full = False
    write_json_atomic({"a": 2}, path)
    assert json.loads(path.read_text()) == {"a": 2}


def test_a_full_disk_while_writing_a_part_keeps_the_finished_one(
    tmp_path: Path, disk: Disk
) -> None:
    out = tmp_path / "part0"
    with part_folder(out, "cache") as (tmp, record):
        (tmp / "shard").write_bytes(b"old shard")
    disk.full = True
    failing = pytest.raises(DiskFull, match=f"writing {out} failed")
    with failing, part_folder(out, "cache") as (tmp, record):
        (tmp / "shard").write_bytes(b"new shard")
    assert (out / "shard").read_bytes() == b"old shard"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part0"]
    disk.full = False
    with part_folder(out, "cache") as (tmp, record):
        (tmp / "shard").write_bytes(b"new shard")
    assert (out / "shard").read_bytes() == b"new shard"


@pytest.mark.parametrize(
    ("free", "reported"), [(FREE, True), (10 << 30, False)], ids=["full", "space-left"]
)
def test_torch_write_failures_count_as_a_full_disk_only_on_a_full_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, free: int, reported: bool
) -> None:
    """torch's zip writer drops the reason: ``PytorchStreamWriter failed writing file
    data/0: file write failed`` (torch/csrc/jit/serialization, caffe2/serialize)."""
    usage = shutil.disk_usage(".")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=free))
    path = tmp_path / "optimizer.bin"

    def save() -> None:
        with space_for(path):
            raise RuntimeError(
                "[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed "
                "writing file data/0: file write failed"
            )

    if reported:
        with pytest.raises(DiskFull, match=f"No space left on device: writing {path}"):
            save()
    else:
        with pytest.raises(RuntimeError, match="file write failed") as raised:
            save()
        assert not isinstance(raised.value, DiskFull)


def test_other_write_errors_pass_through(tmp_path: Path) -> None:
    with pytest.raises(PermissionError), space_for(tmp_path / "x"):
        raise PermissionError(errno.EACCES, "Permission denied")


def test_a_folder_is_replaced_whole(tmp_path: Path) -> None:
    old, new = tmp_path / "model", tmp_path / ".model.part"
    old.mkdir()
    (old / "weights").write_text("old")
    new.mkdir()
    (new / "weights").write_text("new")
    replace_folder(new, old)
    assert (old / "weights").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def write_parts(root: Path, records: list[dict]) -> list[Path]:
    folders = []
    for record in records:
        with part_folder(root / f"p{record['part']}", "cache") as (_, written):
            written |= record
        folders.append(root / f"p{record['part']}")
    return folders


def test_part_records_come_back_in_part_order_whatever_order_they_are_given(tmp_path: Path) -> None:
    folders = write_parts(tmp_path, [{"part": k, "parts": 3, "size": 8} for k in range(3)])
    records = read_part_records(folders[::-1], "cache", ("size",))
    assert [r["part"] for r in records] == [0, 1, 2]
    assert [r["dir"] for r in records] == folders


def test_part_records_that_do_not_form_one_whole_are_refused(tmp_path: Path) -> None:
    folders = write_parts(
        tmp_path, [{"part": 0, "parts": 2, "size": 8}, {"part": 1, "parts": 2, "size": 4}]
    )
    with pytest.raises(ValueError, match=r"p1: size 4 differs from part 0's 8"):
        read_part_records(folders, "cache", ("size",))
    with pytest.raises(ValueError, match=r"cache parts \[1\] given, expected all of 0..1"):
        read_part_records(folders[1:], "cache")
    with pytest.raises(FileNotFoundError, match="missing: not a finished cache part"):
        read_part_records([folders[0], tmp_path / "missing"], "cache")
