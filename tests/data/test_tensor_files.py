"""Joining safetensors files on disk (the latent cache's text embeddings at full scale)."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from dspo.data.tensor_files import concat_safetensors


def _parts(tmp_path: Path, rows: list[int], width: int = 16) -> list[Path]:
    gen = torch.Generator().manual_seed(0)
    paths = []
    for i, n in enumerate(rows):
        tensors = {
            "embeddings": torch.randn(n, 3, width, generator=gen).to(torch.bfloat16),
            "pooled": torch.randn(n, width, generator=gen).half(),
        }
        if i == 0:  # as the cache's part 0 alone holds the empty prompt's embedding
            tensors["empty"] = torch.randn(1, 3, width, generator=gen).to(torch.bfloat16)
        paths.append(tmp_path / f"text-{i:05d}.safetensors")
        save_file(tensors, paths[-1])
    return paths


def test_join_equals_concatenating_the_loaded_tensors(tmp_path: Path) -> None:
    parts = _parts(tmp_path, [5, 0, 7, 2])
    header = concat_safetensors(parts, tmp_path / "text.safetensors", chunk_bytes=100)
    joined = load_file(tmp_path / "text.safetensors")
    loaded = [load_file(p) for p in parts]
    assert sorted(joined) == ["embeddings", "empty", "pooled"]
    for name in ("embeddings", "pooled"):
        assert torch.equal(joined[name], torch.cat([t[name] for t in loaded]))
    assert torch.equal(joined["empty"], loaded[0]["empty"])
    assert header["embeddings"]["shape"] == [14, 3, 16]
    assert not list(tmp_path.glob("*.tmp"))


def test_join_holds_one_chunk_not_the_files(tmp_path: Path) -> None:
    parts = _parts(tmp_path, [4096, 4096, 4096], width=256)  # 3 x ~8 MiB of embeddings
    total = sum(p.stat().st_size for p in parts)
    tracemalloc.start()
    try:
        concat_safetensors(parts, tmp_path / "text.safetensors", chunk_bytes=1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total > 20 << 20
    assert peak < 3 << 20, f"joining {total} bytes held {peak} bytes at the peak"


def test_pieces_that_do_not_stack_are_named(tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    parts = _parts(tmp_path, [2]) + _parts(tmp_path / "other", [2], width=8)
    with pytest.raises(ValueError, match=r"other/text-00000.safetensors: tensor embeddings"):
        concat_safetensors(parts, tmp_path / "text.safetensors")
