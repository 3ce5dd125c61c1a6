"""The sharded (scatter/gather) cache build: any number of parts gives the same cache."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from dspo.data.cache_encode import TEXT_BATCH, CacheSettings, encode_part, plan_parts
from dspo.data.cache_gather import gather_cache
from dspo.data.cache_load import SHARD_KEYS, PairCache, load_cache
from dspo.data.pair_table import read_pair_rows, read_pair_texts, write_pairs
from dspo.data.pairs import prompt_id_of

# The check is 10,000 pairs (1.5 minutes on 2 busy cores, too slow for the suite):
#   DSPO_SHARD_TEST_PAIRS=10000 python -m pytest tests/data/test_cache_shards.py -k four_shards
N_PAIRS = int(os.environ.get("DSPO_SHARD_TEST_PAIRS", "500"))
# Random crops and flips, so that each image's seeded draws are compared too; 10 latent files.
# Resolution 8 (latents 4x4x4) keeps the VAE's share of the time small.
SETTINGS = CacheSettings(
    resolution=8,
    dtype="float16",
    shard_size=-(-N_PAIRS // 10),
    batch_size=256,
    crop="random",
    flip=True,
)


def _jpegs(rng: np.random.Generator, n: int) -> list[bytes]:
    """Small noisy JPEGs of varied widths (so random crops differ between images)."""
    out = []
    for i in range(n):
        pixels = rng.integers(0, 256, (12, 12 + i % 9, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


@pytest.fixture(scope="module")
def pair_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A canonical table of N_PAIRS pairs over 300 prompts (two text-encoder batches)."""
    rng = np.random.default_rng(0)
    images = _jpegs(rng, 97)
    captions = [f"a {c} {s} {i}" for i in range(30) for c in ("red", "blue") for s in "abcde"]
    rows = rng.permutation(np.arange(N_PAIRS) % len(captions))
    table = pd.DataFrame(
        {
            "pair_id": np.arange(N_PAIRS),
            "prompt_id": [prompt_id_of(captions[r]) for r in rows],
            "caption": [captions[r] for r in rows],
            "jpg_w": [images[i % 97] for i in range(N_PAIRS)],
            "jpg_l": [images[(7 * i + 3) % 97] for i in range(N_PAIRS)],
            "label_w": 1.0,
            "source_row": np.arange(N_PAIRS),
        }
    )
    path = tmp_path_factory.mktemp("shards") / "pairs.parquet"
    write_pairs(table, path)
    return path


def _rows(pair_file: Path):
    """Read pair rows as the cache_part command does: only the row groups it needs."""
    return lambda start, stop: read_pair_rows(pair_file, start, stop)


def _build(pair_file: Path, model: Path, root: Path, parts: int) -> PairCache:
    """What the workflow runs: one cache_part job per part, then the gather job."""
    texts = read_pair_texts(pair_file)
    folders = []
    for part in range(parts):
        folder = root / f"parts{parts}" / str(part)
        encode_part(
            texts,
            _rows(pair_file),
            str(model),
            folder,
            SETTINGS,
            part=part,
            parts=parts,
        )
        folders.append(folder)
    gather_cache(folders, root / f"cache{parts}")
    return load_cache(root / f"cache{parts}")


def test_four_shards_equal_one(pair_file: Path, tiny_model: Path, tmp_path: Path) -> None:
    one = _build(pair_file, tiny_model, tmp_path, parts=1)
    four = _build(pair_file, tiny_model, tmp_path, parts=4)
    assert len(one) == len(four) == N_PAIRS
    for name in SHARD_KEYS:  # every per-pair tensor of a shard
        # Latents and embeddings are read from memory maps: [:] reads every row.
        assert torch.equal(getattr(one, name)[:], getattr(four, name)[:]), name
    assert one.prompt_tensors.keys() == four.prompt_tensors.keys() == {"embeddings"}
    assert torch.equal(one.prompt_tensors["embeddings"][:], four.prompt_tensors["embeddings"][:])
    assert torch.equal(one.empty_prompt["embeddings"], four.empty_prompt["embeddings"])
    assert one.manifest["prompts"] == 300 and one.latents_w.dtype == torch.float16
    assert one.crop_w[:, 1].unique().numel() > 1  # the random crops really vary
    same = {k: v for k, v in one.manifest.items() if k != "parts"}
    assert same == {k: v for k, v in four.manifest.items() if k != "parts"}
    assert one.manifest["bytes_per_pair"] == four.manifest["bytes_per_pair"] > 2 * 4 * 4 * 4 * 2
    # Every pair once, in table order, each latent file written by exactly one part.
    shards = four.manifest["shards"]
    assert [s["file"] for s in shards] == [f"latents-{i:05d}.safetensors" for i in range(10)]
    pair_ids = [load_file(str(tmp_path / "cache4" / s["file"]))["pair_id"] for s in shards]
    assert torch.equal(torch.cat(pair_ids), torch.arange(N_PAIRS))


def test_plan_parts_follows_fixed_grids() -> None:
    for n_pairs, n_prompts, parts in [(10_000, 300, 4), (10, 3, 8), (5000, 2000, 3)]:
        plans = plan_parts(n_pairs, n_prompts, 1024, parts)
        files = [f for p in plans for f in p.files]
        prompts = [i for p in plans for i in p.prompts]
        assert files == list(range(-(-n_pairs // 1024))) and prompts == list(range(n_prompts))
        assert all(p.prompts.start % TEXT_BATCH == 0 for p in plans if p.prompts)
    with pytest.raises(ValueError, match="shards"):
        plan_parts(10, 3, 4, 0)


def test_gather_checks_the_parts(pair_file: Path, tiny_model: Path, tmp_path: Path) -> None:
    texts = read_pair_texts(pair_file).iloc[:40]  # 3 latent files of 16, 16 and 8 pairs
    small = CacheSettings(resolution=16, shard_size=16)

    def part(k: int, settings: CacheSettings = small) -> Path:
        folder = tmp_path / f"{k}-{settings.resolution}"
        encode_part(texts, _rows(pair_file), str(tiny_model), folder, settings, part=k, parts=2)
        return folder

    first, second = part(0), part(1)
    with pytest.raises(ValueError, match=r"parts \[0\] given"):
        gather_cache([first], tmp_path / "cache")
    other = part(1, CacheSettings(resolution=8, shard_size=16))
    with pytest.raises(ValueError, match="resolution 8"):
        gather_cache([first, other], tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match="incomplete"):
        gather_cache([first, tmp_path / "nothing"], tmp_path / "cache")
    manifest = gather_cache([second, first], tmp_path / "cache")  # any order
    assert manifest["pairs"] == 40 and [s["pairs"] for s in manifest["shards"]] == [16, 16, 8]


def test_failed_part_leaves_nothing(pair_file: Path, tiny_model: Path, tmp_path: Path) -> None:
    texts = read_pair_texts(pair_file).iloc[:40]

    def broken(start: int, stop: int) -> pd.DataFrame:
        if start > 0:
            raise RuntimeError("killed mid-part")
        return read_pair_rows(pair_file, start, stop)

    settings = CacheSettings(resolution=16, shard_size=16)
    with pytest.raises(RuntimeError, match="mid-part"):
        encode_part(texts, broken, str(tiny_model), tmp_path / "part", settings)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a cache part"):
        encode_part(texts, _rows(pair_file), str(tiny_model), tmp_path / "keep", settings)
    assert (tmp_path / "keep" / "notes.txt").read_text() == "mine"
