"""The latent and text-embedding cache."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from dspo.data.cache import build_cache
from dspo.data.cache_images import load_image, prepare_image
from dspo.data.cache_load import load_cache
from dspo.families.sd import encode_text
from dspo.families.sd_pipeline import load_pipeline
from tests.conftest import jpeg


def test_prepare_image_resizes_and_crops() -> None:
    wide = prepare_image(jpeg((255, 0, 0), size=40), 16)
    assert wide.shape == (3, 16, 16)
    assert wide.min() >= -1.0 and wide.max() <= 1.0
    assert wide[0].mean() > 0.9 and wide[1].mean() < -0.9  # still red


def test_load_image_records_original_size_and_crop() -> None:
    data = jpeg((0, 0, 255), size=(40, 20))  # width 40, height 20 -> resized to 32 x 16
    centre = load_image(data, 16)
    assert centre.original_size == (20, 40) and centre.crop_top_left == (0, 8)
    corners = {
        load_image(data, 16, crop="random", rng=np.random.default_rng(seed)).crop_top_left
        for seed in range(20)
    }
    assert all(top == 0 and 0 <= left <= 16 for top, left in corners) and len(corners) > 3
    first, again = (
        load_image(data, 16, crop="random", rng=np.random.default_rng(3)) for _ in range(2)
    )
    assert first.crop_top_left == again.crop_top_left
    assert np.array_equal(first.pixels, again.pixels)
    with pytest.raises(ValueError, match="seeded rng"):
        load_image(data, 16, crop="random")
    with pytest.raises(ValueError, match="'corner'"):
        load_image(data, 16, crop="corner")


def test_flip_mirrors_about_half_the_images() -> None:
    half = Image.new("RGB", (16, 16), (255, 0, 0))
    half.paste((0, 0, 255), (8, 0, 16, 16))  # red left half, blue right half
    buffer = io.BytesIO()
    half.save(buffer, "PNG")
    lefts = [
        load_image(buffer.getvalue(), 16, flip=True, rng=np.random.default_rng(s)).pixels[0, 0, 0]
        for s in range(40)
    ]
    mirrored = sum(value < 0 for value in lefts)  # blue on the left: mirrored
    assert 10 < mirrored < 30


def test_random_crops_are_seeded_per_image(
    tiny_model: Path, tiny_pairs: pd.DataFrame, tmp_path: Path
) -> None:
    pairs = tiny_pairs.copy()
    pairs["jpg_w"] = [jpeg((i * 10, 0, 0), size=(24 + i % 5, 16)) for i in range(len(pairs))]
    kwargs = {"resolution": 16, "dtype": "float32", "crop": "random", "flip": True, "seed": 7}
    manifest = build_cache(pairs, str(tiny_model), tmp_path / "a", shard_size=5, **kwargs)
    assert manifest["family"] == "sd" and manifest["crop"] == "random" and manifest["flip"]
    build_cache(pairs, str(tiny_model), tmp_path / "b", shard_size=24, batch_size=7, **kwargs)
    a, b = load_cache(tmp_path / "a"), load_cache(tmp_path / "b")
    assert torch.equal(a.crop_w, b.crop_w) and torch.equal(a.latents_w[:], b.latents_w[:])
    widths = torch.tensor([24 + i % 5 for i in range(len(pairs))])
    assert torch.equal(a.original_size_w, torch.stack([torch.full_like(widths, 16), widths], 1))
    assert (a.crop_w[:, 0] == 0).all() and (a.crop_w[:, 1] <= widths - 16).all()
    assert a.crop_w[:, 1].unique().numel() > 1
    assert (a.original_size_l == 16).all() and (a.crop_l == 0).all()  # square images


def test_cache_matches_direct_encoding(tiny_model: Path, tiny_pairs: pd.DataFrame, tmp_path: Path):
    manifest = build_cache(
        tiny_pairs, str(tiny_model), tmp_path, resolution=16, dtype="float32", shard_size=10
    )
    assert [s["pairs"] for s in manifest["shards"]] == [10, 10, 4]
    assert manifest["latent_shape"] == [4, 8, 8] and manifest["prompts"] == 6
    assert manifest["family"] == "sd" and manifest["crop"] == "center" and not manifest["flip"]
    assert manifest["bytes_per_pair"] > 0
    cache = load_cache(tmp_path)
    assert len(cache) == 24
    pipe = load_pipeline(str(tiny_model))
    pixels = torch.from_numpy(prepare_image(tiny_pairs["jpg_l"][13], 16))[None]
    direct = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor
    torch.testing.assert_close(cache.latents_l[13:14], direct, rtol=1e-4, atol=1e-5)
    text = encode_text(pipe, [tiny_pairs["caption"][13]])[0]
    torch.testing.assert_close(cache.prompt_tensors["embeddings"][cache.text_w[13]][None], text)
    assert torch.equal(cache.text_w, cache.text_l)
    torch.testing.assert_close(cache.empty_prompt["embeddings"], encode_text(pipe, [""])[0])
    assert list(cache.prompt_tensors) == list(cache.empty_prompt) == ["embeddings"]


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


def test_rows_are_read_from_the_shards_in_the_order_asked(
    tiny_model: Path, tiny_pairs: pd.DataFrame, tmp_path: Path
) -> None:
    """Memory-mapped reads give the rows a whole-file read gives, in any order and across shards."""
    from safetensors.torch import load_file

    manifest = build_cache(tiny_pairs, str(tiny_model), tmp_path, resolution=16, shard_size=10)
    whole = {
        key: torch.cat([load_file(str(tmp_path / s["file"]))[key] for s in manifest["shards"]])
        for key in ("latents_w", "latents_l", "text_w", "crop_w")
    }
    cache = load_cache(tmp_path)
    rows = torch.tensor([23, 0, 11, 9, 10, 23, 4])  # three shards, a repeat, out of order
    for key in ("latents_w", "latents_l", "text_w", "crop_w"):
        assert torch.equal(getattr(cache, key)[rows], whole[key][rows]), key
    assert torch.equal(cache.latents_w[3:13], whole["latents_w"][3:13])
    assert torch.equal(cache.latents_w[-1], whole["latents_w"][-1])
    assert cache.latents_w.dtype == torch.float16 and cache.latents_w.shape == (24, 4, 8, 8)
    text = load_file(str(tmp_path / "text.safetensors"))
    expected = text["embeddings"][whole["text_w"][rows]]
    assert torch.equal(cache.prompt_tensors["embeddings"][cache.text_w[rows]], expected)
    with pytest.raises(IndexError, match="24 rows"):
        cache.latents_w[torch.tensor([24])]


def test_truncated_shard_is_named(tiny_model: Path, tiny_pairs: pd.DataFrame, tmp_path: Path):
    build_cache(tiny_pairs, str(tiny_model), tmp_path, resolution=16, shard_size=10)
    shard = tmp_path / "latents-00001.safetensors"
    os.truncate(shard, shard.stat().st_size - 100)
    with pytest.raises(ValueError, match="latents-00001.safetensors was changed"):
        load_cache(tmp_path)
    # Unverified (a process that trusts another's check), the layout is still checked.
    with pytest.raises(ValueError, match="latents-00001.safetensors is .* bytes"):
        load_cache(tmp_path, verify=False)
