"""Pair tables that refer to their images in the source, and the one reader of them.

Each source kind goes through the pair rules' commands (rules/data.smk: ``dspo pairs-part``
and ``dspo pairs-gather``) and the cache rules' (``dspo cache-part``, ``dspo cache-gather``):
the local parquet folder, the hub's parquet layout read from an offline hub cache, the public
webdataset copy and the toy world's pairs (the miniatures of tests/data/test_sources.py, which say
where each layout comes from). The cache built from the references must be the one built
from a table holding the bytes, as every pair table did before: the latent files' SHA-256
are compared.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dspo.cli.commands import main as dspo_main
from dspo.data.image_refs import IMAGE_COLUMNS, REF_COLUMNS, image_bytes
from dspo.data.pair_table import read_pair_rows, read_pairs, write_pairs
from dspo.data.sources import load_source
from dspo.toy.world import ToyWorldConfig, build_world
from tests.data.test_pairs import RED, colour_of, jpeg, row, write_parquet
from tests.data.test_sources import hub_cache, public_copy, write_hub_layout

CACHE = {"resolution": 16, "shard_size": 4, "batch_size": 3, "dtype": "float32", "shards": 1}


def local_folder(tmp_path: Path, monkeypatch) -> dict:
    return {"kind": "parquet", "path": str(write_hub_layout(tmp_path / "copy")), "split": "train"}


def hub_layout(tmp_path: Path, monkeypatch) -> dict:
    hub_cache(tmp_path, monkeypatch, corrupt=("test_unique",))
    return {"kind": "hub", "id": "me/pickapic_v2", "split": "train"}


def webdataset(tmp_path: Path, monkeypatch) -> dict:
    return {"kind": "webdataset", "path": str(public_copy(tmp_path / "pickapic_v2_webdataset"))}


def toy(tmp_path: Path, monkeypatch) -> dict:
    # The toy preset's source: the toy world's pairs folder, read as a parquet folder.
    build_world(ToyWorldConfig(n_pairs=30, prompts_per_set=4), tmp_path / "toy")
    return {"kind": "parquet", "path": str(tmp_path / "toy" / "pairs")}


SOURCES = {"local": local_folder, "hub": hub_layout, "webdataset": webdataset, "toy": toy}


def pair_rules(source: dict, workdir: Path, parts: int = 2) -> Path:
    """The pair table the pair rules' commands make of ``source``."""
    params = json.dumps({"source": source, "drop_ties": True, "shards": parts, "nodup_seed": 0})
    outs = [str(workdir / "parts" / str(part)) for part in range(parts)]
    for part, out in enumerate(outs):
        argv = ["pairs-part", "--part", str(part), "--params", params, "--input", "x"]
        dspo_main([*argv, "--out", out])
    table = workdir / "pairs.parquet"
    dspo_main(["pairs-gather", "--inputs", *outs, "--out", str(table)])
    return table


def cache_rules(table: Path, model: Path, out: Path) -> dict:
    """The manifest of the cache the cache rules' commands build of a pair table."""
    part = out.parent / f"{out.name}.parts" / "0"
    common = ["--params", json.dumps(CACHE), "--input", str(table), "--base", str(model)]
    dspo_main(["cache-part", "--part", "0", *common, "--out", str(part), "--device", "cpu"])
    dspo_main(["cache-gather", "--inputs", str(part), "--out", str(out)])
    return json.loads((out / "manifest.json").read_text())


def bytes_table(table: Path, source: dict, out: Path) -> Path:
    """The table of the same pairs holding the images' bytes, as the pairs rules wrote it
    before: each pair's source row, read with the source reader, the preferred image first."""
    pairs = pq.read_table(table).to_pandas().drop(columns=list(REF_COLUMNS))
    raw = load_source(source).iloc[pairs["source_row"]].reset_index(drop=True)
    first = raw["label_0"].to_numpy() >= raw["label_1"].to_numpy()
    pairs_0_1 = zip(raw["jpg_0"], raw["jpg_1"], strict=True)
    images = [(image_bytes(a), image_bytes(b)) for a, b in pairs_0_1]
    pairs["jpg_w"] = [a if f else b for (a, b), f in zip(images, first, strict=True)]
    pairs["jpg_l"] = [b if f else a for (a, b), f in zip(images, first, strict=True)]
    write_pairs(pairs, out)
    return out


@pytest.mark.parametrize("kind", sorted(SOURCES))
def test_each_source_kind_is_referred_to_and_caches_as_its_bytes_did(
    kind: str, tmp_path: Path, monkeypatch, tiny_model: Path
) -> None:
    source = SOURCES[kind](tmp_path, monkeypatch)
    table = pair_rules(source, tmp_path / "rules")
    schema = pq.read_schema(table)
    assert not any(field.type == pa.binary() for field in schema)  # no image bytes
    assert set(REF_COLUMNS) <= set(schema.names) and not set(IMAGE_COLUMNS) & set(schema.names)
    stored = pq.read_table(table).to_pandas()
    assert len(stored) > 0 and stored["image_key"].str.len().eq(16).all()
    assert not stored["image_file"].str.startswith("/").any()  # relative to the root
    by_bytes = bytes_table(table, source, tmp_path / "bytes.parquet")
    pd.testing.assert_frame_equal(read_pairs(table), read_pairs(by_bytes))
    referred = cache_rules(table, tiny_model, tmp_path / "cache_refs")
    held = cache_rules(by_bytes, tiny_model, tmp_path / "cache_bytes")
    assert referred["shards"] == held["shards"]  # the same latent files, byte for byte
    assert referred["text_sha256"] == held["text_sha256"]


def test_a_changed_or_missing_source_file_is_named(tmp_path: Path) -> None:
    red, blue = jpeg(RED), jpeg((20, 20, 220))
    source_file = tmp_path / "src" / "train-00000-of-00001.parquet"
    write_parquet(source_file, [row(f"p{i}", red, blue, 1.0, 0.0) for i in range(4)])
    source = {"kind": "parquet", "path": str(tmp_path / "src")}
    table = pair_rules(source, tmp_path, parts=1)
    assert all(colour_of(image) == RED for image in read_pair_rows(table, 1, 3)["jpg_w"])
    # The same file name, other content (a re-download of another revision, say).
    write_parquet(source_file, [row(f"p{i}", blue, red, 1.0, 0.0) for i in range(4)])
    with pytest.raises(ValueError, match="content changed") as err:
        read_pair_rows(table, 0, 2)
    assert str(source_file) in str(err.value) and str(table) in str(err.value)
    source_file.unlink()
    with pytest.raises(FileNotFoundError, match="missing") as err:
        read_pairs(table)
    assert str(source_file) in str(err.value)


def test_a_missing_tar_member_is_named(tmp_path: Path) -> None:
    copy = public_copy(tmp_path / "wds")
    table = pair_rules({"kind": "webdataset", "path": str(copy)}, tmp_path, parts=1)
    stored = pq.read_table(table).to_pandas()
    assert stored["ref_w"].str.fullmatch(r"\d{9}\.jpg_[01]\.jpg").all()
    stored.loc[0, "ref_w"] = "999999999.jpg_0.jpg"
    write_pairs(stored, tmp_path / "edited.parquet")
    with pytest.raises(ValueError, match=r"00000\.tar: has no member 999999999\.jpg_0\.jpg"):
        read_pairs(tmp_path / "edited.parquet")
