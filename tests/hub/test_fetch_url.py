"""The download step's URL items: a pinned file (the FID Inception-v3 weights) fetched through
urllib (a ``file://`` URL here), checked against its SHA-256, recorded in the manifest."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from dspo.config.step import workflow_config
from dspo.evaluation.inception import INCEPTION_FILE, INCEPTION_SHA256, INCEPTION_URL
from dspo.hub.fetch import Artefact, fetch_url, hub_artefacts
from tests.workflow_run import REPO


def _item(source: Path, sha256: str) -> Artefact:
    return Artefact(
        "quality.inception", source.as_uri(), "url", "url", files=(INCEPTION_FILE,), sha256=sha256
    )


def test_a_url_item_is_downloaded_checked_and_recorded(tmp_path: Path) -> None:
    source = tmp_path / "release.pth"
    source.write_bytes(b"weights" * 1000)
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    record = fetch_url(_item(source, sha), tmp_path / "checkpoints")
    target = tmp_path / "checkpoints" / INCEPTION_FILE
    assert target.read_bytes() == source.read_bytes()
    assert record["repo_type"] == "url" and record["revision"] == sha
    assert record["files"] == [{"file": INCEPTION_FILE, "size": 7000, "sha256": sha}]
    # A file already there with the pinned digest is kept: no second download.
    source.unlink()
    assert fetch_url(_item(source, sha), tmp_path / "checkpoints") == record


def test_a_url_item_with_other_content_is_refused_and_not_kept(tmp_path: Path) -> None:
    source = tmp_path / "release.pth"
    source.write_bytes(b"not the weights")
    with pytest.raises(ValueError, match=f"pinned {'0' * 64}"):
        fetch_url(_item(source, "0" * 64), tmp_path / "checkpoints")
    assert list((tmp_path / "checkpoints").iterdir()) == []


def test_the_sd15_and_sdxl_presets_fetch_the_inception_weights() -> None:
    for presets in (["sd15"], ["sd15", "sdxl"]):
        config = workflow_config([REPO / f"config/presets/{p}.yaml" for p in presets])
        found = {a.item: a for a in hub_artefacts(config, REPO)}
        assert found["quality.inception"] == Artefact(
            "quality.inception",
            INCEPTION_URL,
            "url",
            "url",
            files=("weights-inception-2015-12-05-6726825d.pth",),
            sha256=INCEPTION_SHA256,
        )
    # The toy preset's classifier needs no download.
    assert "quality.inception" not in {a.item for a in hub_artefacts(workflow_config([]), REPO)}
