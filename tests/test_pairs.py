"""Tests for dspo.data.pairs: Pick-a-Pic loading, normalisation, nodup and parquet I/O."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import types

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dspo.data import pairs as P

RED, BLUE, GREEN = (220, 20, 20), (20, 20, 220), (20, 200, 20)


def jpeg(color: tuple[int, int, int], size: int = 64) -> bytes:
    """A real JPEG of one colour plus noise (noise makes the scan data long enough to cut)."""
    rng = np.random.default_rng(sum(color))
    arr = np.clip(np.array(color) + rng.integers(-15, 16, (size, size, 3)), 0, 255)
    buf = io.BytesIO()
    Image.fromarray(arr.astype("uint8")).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def colour_of(data: bytes) -> tuple[int, int, int]:
    mean = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).reshape(-1, 3).mean(0)
    return min((RED, BLUE, GREEN), key=lambda c: np.abs(mean - np.array(c)).sum())


def row(caption, jpg_0, jpg_1, label_0, label_1, has_label=True, are_different=True, rid=0):
    return {
        "caption": caption,
        "jpg_0": jpg_0,
        "jpg_1": jpg_1,
        "label_0": label_0,
        "label_1": label_1,
        "has_label": has_label,
        "are_different": are_different,
        "ranking_id": rid,
        "user_id": 7,  # a column the loader must not read
    }


def mixed_rows() -> list[dict]:
    """One row per rule; red is always the preferred image of a decided pair."""
    red, blue = jpeg(RED), jpeg(BLUE)
    truncated = jpeg(GREEN, size=128)
    truncated = truncated[: len(truncated) // 2]
    return [
        row("a cat", red, blue, 1.0, 0.0, rid=0),  # kept, already winner-first
        row("a dog", blue, red, 0.0, 1.0, rid=1),  # kept, swapped
        row("a tie", blue, red, 0.5, 0.5, rid=2),  # tie
        row("no label", red, blue, 0.0, 0.0, has_label=False, rid=3),  # unlabelled
        row("same", red, red, 0.5, 0.5, are_different=False, rid=4),  # identical
        row("bad label", red, blue, 1.0, 1.0, rid=5),  # invalid label
        row("cut", red, truncated, 1.0, 0.0, rid=6),  # unreadable: truncated JPEG
        row("junk", b"not an image at all", blue, 1.0, 0.0, rid=7),  # unreadable: garbage
        row("none", red, None, 1.0, 0.0, rid=8),  # unreadable: missing bytes
        row("a cat", blue, red, 0.0, 1.0, rid=9),  # kept, duplicate prompt of row 0
    ]


def write_parquet(path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path, index=False)


@pytest.fixture
def raw() -> pd.DataFrame:
    return pd.DataFrame(mixed_rows())


# --- image check ---------------------------------------------------------------------------


def test_truncated_jpeg_passes_verify_but_fails_the_check():
    data = jpeg(GREEN, size=128)
    cut = data[: len(data) // 2]
    Image.open(io.BytesIO(cut)).verify()  # header-only check: does not notice
    assert P.image_is_readable(data)
    assert not P.image_is_readable(cut)
    assert not P.image_is_readable(b"garbage")
    assert not P.image_is_readable(None)


def test_check_ignores_global_load_truncated_images(monkeypatch):
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    cut = jpeg(GREEN, size=128)[:2000]
    df = pd.DataFrame([row("x", jpeg(RED), cut, 1.0, 0.0), row("y", jpeg(RED), jpeg(BLUE), 1, 0)])
    _, stats = P.normalise_pairs(df)
    assert stats["unreadable"] == 1
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored afterwards


# --- load_source ---------------------------------------------------------------------------


def test_parquet_source_reads_only_needed_columns(tmp_path):
    write_parquet(tmp_path / "data" / "train-00000-of-00001.parquet", mixed_rows())
    df = P.load_source({"kind": "parquet", "path": str(tmp_path), "split": "train"})
    assert len(df) == 10
    assert set(df.columns) == {*P.REQUIRED_COLUMNS, *P.OPTIONAL_COLUMNS}
    assert isinstance(df["jpg_0"].iloc[0], bytes)


def test_split_selection_in_folder(tmp_path):
    red, blue = jpeg(RED), jpeg(BLUE)
    layout = {
        "train-00000-of-00002.parquet": 3,
        "train-00001-of-00002.parquet": 2,
        "validation-00000-of-00001.parquet": 4,
        "validation_unique-00000-of-00001.parquet": 1,
    }
    for name, n in layout.items():
        split = name.split("-")[0]
        write_parquet(
            tmp_path / "data" / name, [row(f"{split} {i}", red, blue, 1, 0) for i in range(n)]
        )

    def captions(split):
        src = {"kind": "parquet", "path": str(tmp_path)}
        if split is not None:
            src["split"] = split
        return sorted(P.load_source(src)["caption"])

    assert captions("train") == [f"train {i}" for i in (0, 0, 1, 1, 2)]
    assert captions("validation") == [f"validation {i}" for i in range(4)]
    assert captions("validation_unique") == ["validation_unique 0"]
    assert len(captions(None)) == 10
    glob_src = {"kind": "parquet", "path": str(tmp_path / "data" / "*.parquet"), "split": "train"}
    assert len(P.load_source(glob_src)) == 5
    one_file = {
        "kind": "parquet",
        "path": str(tmp_path / "data" / "validation-00000-of-00001.parquet"),
    }
    assert len(P.load_source(one_file)) == 4

    with pytest.raises(FileNotFoundError) as err:
        P.load_source({"kind": "parquet", "path": str(tmp_path), "split": "test"})
    assert str(tmp_path) in str(err.value) and "test-*.parquet" in str(err.value)


def test_split_subfolder_layout(tmp_path):
    red, blue = jpeg(RED), jpeg(BLUE)
    write_parquet(tmp_path / "train" / "0000.parquet", [row("t", red, blue, 1, 0)])
    write_parquet(tmp_path / "test" / "0000.parquet", [row("s", red, blue, 1, 0)] * 2)
    df = P.load_source({"kind": "parquet", "path": str(tmp_path), "split": "test"})
    assert list(df["caption"]) == ["s", "s"]


def test_missing_required_column_names_file_and_column(tmp_path):
    bad = tmp_path / "train-00000-of-00001.parquet"
    write_parquet(bad, [{k: v for k, v in r.items() if k != "label_1"} for r in mixed_rows()])
    with pytest.raises(ValueError) as err:
        P.load_source({"kind": "parquet", "path": str(tmp_path), "split": "train"})
    assert str(bad) in str(err.value) and "'label_1'" in str(err.value)


@pytest.mark.parametrize(
    ("source", "key"),
    [
        ({"kind": "tfrecord", "path": "x"}, "'kind'"),
        ({"kind": "webdataset", "id": "a/b", "path": "x"}, "'id'"),
        ({"kind": "parquet", "path": "x", "splitt": "train"}, "'splitt'"),
        ({"kind": "hub", "id": "a/b", "path": "x"}, "'path'"),
        ({"kind": "parquet"}, "'path'"),
        ({"kind": "hub", "split": "train"}, "'id'"),
    ],
)
def test_bad_source_keys(source, key):
    with pytest.raises(ValueError, match=key):
        P.load_source(source)


def test_hub_without_datasets_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(ImportError, match=r"pip install dspo\[hub\]"):
        P.load_source({"kind": "hub", "id": "owner/pickapic_copy"})


def write_tar(path, rows, prefix="") -> None:
    """Webdataset shard: KEY.jpg_0, KEY.jpg_1, KEY.json (+ a KEY.txt the loader skips)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for i, r in enumerate(rows):
            meta = {k: v for k, v in r.items() if k not in ("jpg_0", "jpg_1")}
            members = {"jpg_0": r["jpg_0"], "jpg_1": r["jpg_1"], "json": json.dumps(meta).encode()}
            for ext, data in {**members, "txt": b"skipped"}.items():
                info = tarfile.TarInfo(f"{prefix}{i:06d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_webdataset_source_reads_like_parquet(tmp_path):
    rows = [r for r in mixed_rows() if r["jpg_1"] is not None]  # a tar member needs bytes
    write_tar(tmp_path / "wds" / "train-000000.tar", rows[:5], prefix="a/")
    write_tar(tmp_path / "wds" / "train-000001.tar", rows[5:])
    write_tar(tmp_path / "wds" / "validation-000000.tar", rows[:2])
    df = P.load_source({"kind": "webdataset", "path": str(tmp_path / "wds"), "split": "train"})
    assert set(df.columns) == {*P.REQUIRED_COLUMNS, *P.OPTIONAL_COLUMNS}
    expected = pd.DataFrame(rows)[list(df.columns)]
    pd.testing.assert_frame_equal(df, expected, check_dtype=False)
    pairs, stats = P.normalise_pairs(df)
    assert stats["kept"] == 3 and stats["unreadable"] == 2
    glob_src = {"kind": "webdataset", "path": str(tmp_path / "wds" / "valid*.tar")}
    assert len(P.load_source(glob_src)) == 2
    with pytest.raises(FileNotFoundError, match=r"'test-\*\.tar'"):
        P.load_source({"kind": "webdataset", "path": str(tmp_path / "wds"), "split": "test"})


def test_webdataset_errors_name_file_and_sample(tmp_path):
    red, blue = jpeg(RED), jpeg(BLUE)
    bad = tmp_path / "train-000000.tar"
    write_tar(bad, [{k: v for k, v in row("x", red, blue, 1, 0).items() if k != "label_1"}])
    with pytest.raises(ValueError) as err:
        P.load_source({"kind": "webdataset", "path": str(bad)})
    assert str(bad) in str(err.value) and "000000.json" in str(err.value)
    assert "'label_1'" in str(err.value)
    with tarfile.open(bad, "w") as tar:
        info = tarfile.TarInfo("000007.jpg_0")
        info.size = len(red)
        tar.addfile(info, io.BytesIO(red))
    with pytest.raises(ValueError, match="sample '000007' has no jpg_1, json member"):
        P.load_source({"kind": "webdataset", "path": str(bad)})


class _FakeImage:
    def __init__(self, decode=True):
        self.decode = decode


class _FakeDataset:
    """The small part of datasets.Dataset / IterableDataset that the loader uses."""

    def __init__(self, rows, features):
        self.rows, self.features = rows, features

    @property
    def column_names(self):
        return list(self.rows[0])

    def select_columns(self, cols):
        return _FakeDataset([{c: r[c] for c in cols} for r in self.rows], self.features)

    def cast_column(self, col, feature):
        return _FakeDataset(self.rows, {**self.features, col: feature})

    def to_pandas(self):
        return pd.DataFrame(self.rows)

    def __iter__(self):
        if isinstance(self.features.get("jpg_0"), _FakeImage) and self.features["jpg_0"].decode:
            raise AssertionError("images must not be decoded while streaming")
        return iter(self.rows)


@pytest.mark.parametrize("streaming", [False, True])
def test_hub_source_with_fake_datasets(monkeypatch, streaming):
    calls = []
    rows = [dict(r, jpg_0={"bytes": r["jpg_0"], "path": None}) for r in mixed_rows()]

    def load_dataset(name, **kwargs):
        calls.append((name, kwargs))
        return _FakeDataset(rows, {"jpg_0": _FakeImage()})

    fake = types.SimpleNamespace(load_dataset=load_dataset, Image=_FakeImage)
    monkeypatch.setitem(sys.modules, "datasets", fake)
    src = {"kind": "hub", "id": "me/pickapic", "split": "validation", "streaming": streaming}
    df = P.load_source(src)
    assert calls == [
        ("me/pickapic", {"split": "validation", "revision": None, "streaming": streaming})
    ]
    assert "user_id" not in df.columns and len(df) == 10
    pairs, stats = P.normalise_pairs(df)  # {"bytes": ...} image cells are accepted
    assert stats["kept"] == 3 and all(colour_of(b) == RED for b in pairs["jpg_w"])


# --- normalise_pairs -----------------------------------------------------------------------


def test_normalise_puts_winner_first_and_counts_every_drop(raw):
    pairs, stats = P.normalise_pairs(raw)
    assert stats == {
        "input": 10,
        "kept": 3,
        "unlabelled": 1,
        "invalid_label": 1,
        "identical": 1,
        "ties_dropped": 1,
        "unreadable": 3,
        "not_sampled": 0,
    }
    assert list(pairs.columns) == list(P.CANONICAL_COLUMNS)
    assert list(pairs["pair_id"]) == [0, 1, 2]
    assert list(pairs["source_row"]) == [0, 1, 9]
    assert list(pairs["caption"]) == ["a cat", "a dog", "a cat"]
    assert [colour_of(b) for b in pairs["jpg_w"]] == [RED] * 3
    assert [colour_of(b) for b in pairs["jpg_l"]] == [BLUE] * 3
    assert list(pairs["label_w"]) == [1.0] * 3
    assert pairs["prompt_id"].dtype == np.int64
    assert pairs["prompt_id"][0] == pairs["prompt_id"][2] != pairs["prompt_id"][1]


def test_keep_ties_keeps_order_and_half_label(raw):
    pairs, stats = P.normalise_pairs(raw, drop_ties=False)
    assert stats["ties_dropped"] == 0 and stats["kept"] == 4
    tie = pairs[pairs["caption"] == "a tie"].iloc[0]
    assert tie["label_w"] == 0.5 and tie["source_row"] == 2
    assert colour_of(tie["jpg_w"]) == BLUE  # jpg_0 stays first
    assert colour_of(tie["jpg_l"]) == RED


def test_identical_bytes_count_as_identical_without_flag(raw):
    red = jpeg(RED)
    df = pd.DataFrame([row("x", red, red, 1.0, 0.0)]).drop(columns=["are_different"])
    with pytest.raises(ValueError, match="identical=1"):
        P.normalise_pairs(df)


def test_nothing_left_reports_why(raw):
    dropped = raw.drop(index=[0, 1, 9])
    with pytest.raises(ValueError) as err:
        P.normalise_pairs(dropped)
    msg = str(err.value)
    for part in ("7 rows", "unlabelled=1", "invalid_label=1", "identical=1", "ties_dropped=1"):
        assert part in msg
    assert "unreadable=3" in msg


def test_max_pairs_is_seeded_subset():
    red, blue = jpeg(RED), jpeg(BLUE)
    df = pd.DataFrame([row(f"p{i}", red, blue, 1.0, 0.0) for i in range(20)])
    a, stats = P.normalise_pairs(df, max_pairs=5, seed=3)
    b, _ = P.normalise_pairs(df, max_pairs=5, seed=3)
    c, _ = P.normalise_pairs(df, max_pairs=5, seed=4)
    assert len(a) == 5 and list(a["pair_id"]) == list(range(5))
    assert stats["kept"] == 5 and stats["not_sampled"] == 15
    assert a.equals(b)
    assert list(a["source_row"]) != list(c["source_row"])
    assert list(a["source_row"]) == sorted(a["source_row"])
    everything, _ = P.normalise_pairs(df, max_pairs=100)
    assert len(everything) == 20
    with pytest.raises(ValueError, match="max_pairs"):
        P.normalise_pairs(df, max_pairs=0)


def test_max_pairs_refills_past_unreadable(raw):
    pairs, stats = P.normalise_pairs(raw, max_pairs=2, seed=0)
    assert len(pairs) == 2
    assert stats["input"] == stats["kept"] + sum(
        v for k, v in stats.items() if k not in ("input", "kept")
    )


def test_prompt_id_is_stable_across_processes():
    # Pinned: a changed hash would silently re-key every cached prompt.
    pinned = -6711169336525982361
    assert P.prompt_id_of("a cat") == pinned != P.prompt_id_of("a cat ")
    code = "from dspo.data.pairs import prompt_id_of; print(prompt_id_of('a cat'))"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert int(out.stdout) == pinned


# --- drop_duplicate_prompts ----------------------------------------------------------------


def test_drop_duplicate_prompts_one_per_prompt_deterministic():
    red, blue = jpeg(RED), jpeg(BLUE)
    rows = [row("same prompt", red, blue, 1.0, 0.0, rid=i) for i in range(8)]
    rows += [row("other", red, blue, 1.0, 0.0), row("third", blue, red, 0.0, 1.0)]
    pairs, _ = P.normalise_pairs(pd.DataFrame(rows))
    picks = {}
    for seed in range(6):
        nodup = P.drop_duplicate_prompts(pairs, seed=seed)
        assert nodup["prompt_id"].is_unique and len(nodup) == 3
        assert list(nodup["pair_id"]) == [0, 1, 2]
        assert nodup.equals(P.drop_duplicate_prompts(pairs, seed=seed))
        picks[seed] = int(nodup.loc[nodup["caption"] == "same prompt", "source_row"].iloc[0])
    assert len(set(picks.values())) > 1  # the choice really depends on the seed
    assert set(picks.values()) <= set(range(8))


# --- write_pairs / read_pairs --------------------------------------------------------------


def test_write_read_roundtrip_leaves_no_temp_files(raw, tmp_path):
    pairs, _ = P.normalise_pairs(raw)
    out = tmp_path / "sub" / "pairs.parquet"
    P.write_pairs(pairs, out)
    P.write_pairs(pairs, out)  # overwriting is fine too
    assert os.listdir(out.parent) == ["pairs.parquet"]
    back = P.read_pairs(out)
    pd.testing.assert_frame_equal(back, pairs)


def test_failed_write_leaves_old_file_and_no_temp(raw, tmp_path, monkeypatch):
    pairs, _ = P.normalise_pairs(raw)
    out = tmp_path / "pairs.parquet"
    P.write_pairs(pairs.iloc[:1], out)

    def boom(*args, **kwargs):
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(P.pq.ParquetWriter, "write_table", boom)
    with pytest.raises(RuntimeError):
        P.write_pairs(pairs, out)
    assert os.listdir(tmp_path) == ["pairs.parquet"]
    monkeypatch.undo()
    assert len(P.read_pairs(out)) == 1


def test_read_pair_rows_reads_a_slice(tmp_path, monkeypatch):
    red, blue = jpeg(RED), jpeg(BLUE)
    pairs, _ = P.normalise_pairs(pd.DataFrame([row(f"p{i}", red, blue, 1, 0) for i in range(10)]))
    monkeypatch.setattr(P, "ROW_GROUP_PAIRS", 3)
    out = tmp_path / "pairs.parquet"
    P.write_pairs(pairs, out)
    assert P.pq.ParquetFile(out).num_row_groups == 4
    for start, stop in [(0, 3), (2, 8), (9, 10)]:
        part = P.read_pair_rows(out, start, stop).reset_index(drop=True)
        pd.testing.assert_frame_equal(part, pairs.iloc[start:stop].reset_index(drop=True))
    assert list(P.read_pair_texts(out)["caption"]) == [f"p{i}" for i in range(10)]
    with pytest.raises(ValueError, match="beyond its 10 rows"):
        P.read_pair_rows(out, 10, 12)


def test_read_and_write_check_canonical_columns(raw, tmp_path):
    pairs, _ = P.normalise_pairs(raw)
    bad = tmp_path / "bad.parquet"
    pairs.drop(columns=["jpg_l"]).to_parquet(bad, index=False)
    with pytest.raises(ValueError) as err:
        P.read_pairs(bad)
    assert str(bad) in str(err.value) and "'jpg_l'" in str(err.value)
    with pytest.raises(ValueError, match="'prompt_id'"):
        P.write_pairs(pairs.drop(columns=["prompt_id"]), tmp_path / "x.parquet")


def test_missing_flags_do_not_drop_rows():
    red, blue = jpeg(RED), jpeg(BLUE)
    df = pd.DataFrame(
        [
            row("a", red, blue, 1.0, 0.0, has_label=None, are_different=None),
            row("b", blue, red, 0.0, 1.0, has_label=True, are_different=True),
        ]
    )
    pairs, stats = P.normalise_pairs(df.drop(columns=["ranking_id"]))
    assert stats["kept"] == 2 and stats["unlabelled"] == stats["identical"] == 0
