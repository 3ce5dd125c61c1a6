"""Reading a cache checks it holds every text tensor its family conditions on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from dspo.data.cache import build_cache
from dspo.data.cache_load import load_cache


@pytest.fixture(scope="module")
def sd_cache(tiny_model: Path, tiny_pairs: pd.DataFrame, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cache") / "sd"
    build_cache(tiny_pairs.iloc[:4], str(tiny_model), path, resolution=16, dtype="float32")
    return path


@pytest.mark.parametrize("family", ["sdxl", "flux", "sd3"])
def test_a_cache_without_its_familys_pooled_text_is_refused(
    sd_cache: Path, tmp_path: Path, family: str
) -> None:
    # An SD cache holds no pooled embeddings; the other families condition on them.
    assert "pooled" not in load_cache(sd_cache).prompt_tensors
    relabelled = tmp_path / "cache"
    shutil.copytree(sd_cache, relabelled)
    manifest = json.loads((relabelled / "manifest.json").read_text())
    (relabelled / "manifest.json").write_text(json.dumps({**manifest, "family": family}))
    with pytest.raises(ValueError, match=rf"of a {family} cache lacks \['pooled'\]"):
        load_cache(relabelled)
