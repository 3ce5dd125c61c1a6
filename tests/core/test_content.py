"""Content keys change with content, not with paths, modification times or marker files."""

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from dspo.core import content


@pytest.fixture(autouse=True)
def side_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Records of folders dspo did not write go to a cache folder of the test's own."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    return tmp_path / "user-cache"


def _folder(root, weights: bytes):
    root.mkdir(parents=True, exist_ok=True)
    (root / "unet").mkdir(exist_ok=True)
    (root / "unet" / "model.safetensors").write_bytes(weights)
    (root / "model_index.json").write_text("{}")
    return root


def _later(path: Path, seconds: float = 5) -> None:
    """Move a file's modification time, as `touch` does, without touching its bytes."""
    later = time.time() + seconds
    os.utime(path, (later, later))


def test_recorded_key_follows_the_bytes_not_the_path(tmp_path):
    a = _folder(tmp_path / "a", b"weights-1")
    b = _folder(tmp_path / "b", b"weights-1")
    assert content.write_content_record(a) == content.write_content_record(b)
    assert content.content_key(a) == content.content_key(b)
    before = content.content_key(a)
    _folder(a, b"weights-2")  # rebuilt in place: same path, same size, other bytes
    content.write_content_record(a)
    assert content.content_key(a) != before


def test_workflow_marker_written_after_saving_keeps_the_recorded_key(tmp_path):
    # Snakemake touches `.snakemake_timestamp` inside every directory() output once the job
    # ends (snakemake 9, snakemake/io/__init__.py: `_IOFile.touch`), after dspo wrote the
    # folder and its record.
    a = _folder(tmp_path / "a", b"weights-1")
    recorded = content.write_content_record(a)
    (a / ".snakemake_timestamp").touch()
    assert content.content_key(a) == recorded
    b = _folder(tmp_path / "b", b"weights-1")  # the same content, no marker, no record
    assert content.content_key(b) == recorded


def test_touch_and_plain_copy_keep_the_key_and_refresh_the_record(tmp_path):
    a = _folder(tmp_path / "a", b"weights-1")
    recorded = content.write_content_record(a)
    weights = a / "unet" / "model.safetensors"
    _later(weights)
    assert content.content_key(a) == recorded
    entry = json.loads((a / content.RECORD).read_text())["files"]["unet/model.safetensors"]
    assert entry["mtime_ns"] == weights.stat().st_mtime_ns  # refreshed: not hashed again
    # `cp -r` without -p: new times on every file, the record copied as a plain file.
    copy = Path(shutil.copytree(a, tmp_path / "copy", copy_function=shutil.copyfile))
    assert weights.stat().st_mtime_ns != (copy / "unet/model.safetensors").stat().st_mtime_ns
    assert content.content_key(copy) == recorded


def test_a_content_change_changes_the_key(tmp_path):
    a = _folder(tmp_path / "a", b"weights-1")
    recorded = content.write_content_record(a)
    (a / "unet" / "model.safetensors").write_bytes(b"weights-2")  # same size, other bytes
    changed = content.content_key(a)
    assert changed != recorded
    assert changed == content.write_content_record(_folder(tmp_path / "b", b"weights-2"))
    (a / "extra.bin").write_bytes(b"x")  # a file the record does not list
    assert content.content_key(a) not in (recorded, changed)


def test_first_format_records_give_the_same_key(tmp_path):
    a = _folder(tmp_path / "a", b"weights-1")
    recorded = content.write_content_record(a)
    files = json.loads((a / content.RECORD).read_text())["files"]
    old = {"files": {name: entry["sha256"] for name, entry in files.items()}}
    (a / content.RECORD).write_text(json.dumps(old))  # SHA-256 only, as first written
    assert content.content_key(a) == recorded
    assert "mtime_ns" in json.loads((a / content.RECORD).read_text())["files"]["model_index.json"]


def test_folders_and_files_made_elsewhere_key_by_content(tmp_path, side_records):
    a = _folder(tmp_path / "a", b"weights-1")
    before = content.content_key(a)
    assert not (a / content.RECORD).exists() and list(side_records.rglob("*.json"))
    _later(a / "unet" / "model.safetensors")
    assert content.content_key(a) == before
    copy = shutil.copytree(a, tmp_path / "copy", copy_function=shutil.copyfile)
    assert content.content_key(copy) == before
    weights = a / "unet" / "model.safetensors"
    weights.write_bytes(b"weights-2")
    _later(weights)
    assert content.content_key(a) != before
    single = tmp_path / "lora.safetensors"
    single.write_bytes(b"adapters")
    key = content.content_key(single)
    _later(single)
    assert content.content_key(single) == key
    single.write_bytes(b"adapterz")
    assert content.content_key(single) != key


def test_hub_ids_and_source_key_are_stable():
    assert content.content_key("org/model-that-is-not-here") == content.content_key(
        "org/model-that-is-not-here"
    )
    assert content.source_key() == content.source_key()
    assert content.combined_key(a=1, b="x") == content.combined_key(b="x", a=1)
    assert content.combined_key(a=1) != content.combined_key(a=2)
