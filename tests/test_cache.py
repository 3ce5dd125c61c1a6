"""The latent and text-embedding cache."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from dspo.data.cache import build_cache, load_cache, prepare_image
from dspo.models import encode_prompts, load_pipeline
from tests.conftest import jpeg


def test_prepare_image_resizes_and_crops() -> None:
    wide = prepare_image(jpeg((255, 0, 0), size=40), 16)
    assert wide.shape == (3, 16, 16)
    assert wide.min() >= -1.0 and wide.max() <= 1.0
    assert wide[0].mean() > 0.9 and wide[1].mean() < -0.9  # still red


def test_cache_matches_direct_encoding(tiny_model: Path, tiny_pairs: pd.DataFrame, tmp_path: Path):
    manifest = build_cache(
        tiny_pairs, str(tiny_model), tmp_path, resolution=16, dtype="float32", shard_size=10
    )
    assert [s["pairs"] for s in manifest["shards"]] == [10, 10, 4]
    assert manifest["latent_shape"] == [4, 8, 8] and manifest["prompts"] == 6
    assert manifest["bytes_per_pair"] > 0
    cache = load_cache(tmp_path)
    assert len(cache) == 24
    pipe = load_pipeline(str(tiny_model))
    pixels = torch.from_numpy(prepare_image(tiny_pairs["jpg_l"][13], 16))[None]
    direct = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor
    torch.testing.assert_close(cache.latents_l[13:14], direct, rtol=1e-4, atol=1e-5)
    text = encode_prompts(pipe, [tiny_pairs["caption"][13]])
    torch.testing.assert_close(cache.embeddings[cache.text_w[13]][None], text)
    assert torch.equal(cache.text_w, cache.text_l)
    torch.testing.assert_close(cache.empty, encode_prompts(pipe, [""]))


def test_cache_with_rejected_prompts(tiny_model: Path, tiny_pairs: pd.DataFrame, tmp_path: Path):
    rejected = ["a circle"] * len(tiny_pairs)
    build_cache(tiny_pairs, str(tiny_model), tmp_path, resolution=16, prompts_l=rejected)
    cache = load_cache(tmp_path)
    assert cache.manifest["prompts"] == 7
    assert (cache.text_l == cache.text_l[0]).all() and not torch.equal(cache.text_w, cache.text_l)
    assert cache.latents_w.dtype == torch.float16


def test_truncated_cache_is_reported(tiny_model: Path, tiny_pairs: pd.DataFrame, tmp_path: Path):
    build_cache(tiny_pairs, str(tiny_model), tmp_path, resolution=16, shard_size=10)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["shards"][0]["pairs"] = 11
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="latents-00000"):
        load_cache(tmp_path)
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        load_cache(tmp_path / "missing")
