"""Content keys change with content, not with paths."""

import os
import time

from dspo import content


def _folder(root, weights: bytes):
    root.mkdir(parents=True, exist_ok=True)
    (root / "unet").mkdir(exist_ok=True)
    (root / "unet" / "model.safetensors").write_bytes(weights)
    (root / "model_index.json").write_text("{}")
    return root


def test_recorded_key_follows_the_bytes_not_the_path(tmp_path):
    a = _folder(tmp_path / "a", b"weights-1")
    b = _folder(tmp_path / "b", b"weights-1")
    assert content.write_content_record(a) == content.write_content_record(b)
    assert content.content_key(a) == content.content_key(b)
    before = content.content_key(a)
    _folder(a, b"weights-2")  # rebuilt in place: same path, same size, other bytes
    content.write_content_record(a)
    assert content.content_key(a) != before


def test_stale_record_falls_back_to_file_stats(tmp_path):
    a = _folder(tmp_path / "a", b"weights-1")
    recorded = content.write_content_record(a)
    (a / "extra.bin").write_bytes(b"x")  # the record no longer lists every file
    assert content.content_key(a) != recorded


def test_unrecorded_folder_changes_when_a_file_is_rewritten(tmp_path):
    a = _folder(tmp_path / "a", b"weights-1")
    before = content.content_key(a)
    weights = a / "unet" / "model.safetensors"
    weights.write_bytes(b"weights-2")
    later = time.time() + 5
    os.utime(weights, (later, later))
    assert content.content_key(a) != before


def test_hub_ids_and_source_key_are_stable():
    assert content.content_key("org/model-that-is-not-here") == content.content_key(
        "org/model-that-is-not-here"
    )
    assert content.source_key() == content.source_key()
    assert content.combined_key(a=1, b="x") == content.combined_key(b="x", a=1)
    assert content.combined_key(a=1) != content.combined_key(a=2)
