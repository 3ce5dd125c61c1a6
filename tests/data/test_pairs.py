"""Pick-a-Pic sources, scattered normalisation and nodup."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dspo.data import nodup as N
from dspo.data import pair_table as T
from dspo.data import pairs as P
from dspo.data import sources as S
from dspo.data.dedup import caption_group, normalise_caption
from dspo.data.screening import image_is_readable
from dspo.data.tar_source import KEY

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
        # kept: the prompt of row 0 with another losing image (a duplicate prompt, not row)
        row("a cat", jpeg(BLUE, size=48), red, 0.0, 1.0, rid=9),
    ]


def write_parquet(path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path, index=False)


def normalise(df: pd.DataFrame, **settings) -> tuple[pd.DataFrame, dict[str, int]]:
    """The canonical table and counts of a raw table, through one pairs part and the gather."""
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "train-00000-of-00001.parquet"
        df.to_parquet(source, index=False)
        config = P.PairSettings(source={"kind": "parquet", "path": str(source)}, **settings)
        P.normalise_part(config, 0, 1, Path(tmp) / "part0")
        stats = P.gather_pairs([Path(tmp) / "part0"], Path(tmp) / "pairs.parquet")
        return T.read_pairs(Path(tmp) / "pairs.parquet"), stats


# --- load_source ---------------------------------------------------------------------------


def test_parquet_source_reads_only_needed_columns(tmp_path):
    write_parquet(tmp_path / "data" / "train-00000-of-00001.parquet", mixed_rows())
    df = S.load_source({"kind": "parquet", "path": str(tmp_path), "split": "train"})
    assert len(df) == 10
    assert set(df.columns) == {*S.REQUIRED_COLUMNS, *S.OPTIONAL_COLUMNS}
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
        return sorted(S.load_source(src)["caption"])

    assert captions("train") == [f"train {i}" for i in (0, 0, 1, 1, 2)]
    assert captions("validation") == [f"validation {i}" for i in range(4)]
    assert captions("validation_unique") == ["validation_unique 0"]
    assert len(captions(None)) == 10
    glob_src = {"kind": "parquet", "path": str(tmp_path / "data" / "*.parquet"), "split": "train"}
    assert len(S.load_source(glob_src)) == 5
    one_file = {
        "kind": "parquet",
        "path": str(tmp_path / "data" / "validation-00000-of-00001.parquet"),
    }
    assert len(S.load_source(one_file)) == 4

    with pytest.raises(FileNotFoundError) as err:
        S.load_source({"kind": "parquet", "path": str(tmp_path), "split": "test"})
    assert str(tmp_path) in str(err.value) and "test-*.parquet" in str(err.value)


def test_split_subfolder_layout(tmp_path):
    red, blue = jpeg(RED), jpeg(BLUE)
    write_parquet(tmp_path / "train" / "0000.parquet", [row("t", red, blue, 1, 0)])
    write_parquet(tmp_path / "test" / "0000.parquet", [row("s", red, blue, 1, 0)] * 2)
    df = S.load_source({"kind": "parquet", "path": str(tmp_path), "split": "test"})
    assert list(df["caption"]) == ["s", "s"]


def test_missing_required_column_names_file_and_column(tmp_path):
    bad = tmp_path / "train-00000-of-00001.parquet"
    write_parquet(bad, [{k: v for k, v in r.items() if k != "label_1"} for r in mixed_rows()])
    with pytest.raises(ValueError) as err:
        S.load_source({"kind": "parquet", "path": str(tmp_path), "split": "train"})
    assert str(bad) in str(err.value) and "'label_1'" in str(err.value)


@pytest.mark.parametrize(
    ("source", "key"),
    [
        ({"kind": "tfrecord", "path": "x"}, "kind: must be one of"),
        ({"kind": "webdataset", "id": "a/b", "path": "x"}, "id: unknown key"),
        ({"kind": "parquet", "path": "x", "splitt": "train"}, "splitt: unknown key"),
        ({"kind": "hub", "id": "a/b", "path": "x"}, "path: unknown key"),
        ({"kind": "parquet"}, "path: a 'parquet' source needs it"),
        ({"kind": "hub", "split": "train"}, "id: a 'hub' source needs it"),
        ({"kind": "parquet", "path": "x", "streaming": True}, "streaming: unknown key"),
    ],
)
def test_bad_source_keys(source, key):
    with pytest.raises(ValueError, match=key):
        S.load_source(source)


def test_streaming_without_datasets_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(ImportError, match=r"pip install dspo\[hub\]"):
        S.load_source({"kind": "hub", "id": "owner/pickapic_copy", "streaming": True})


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
    df = S.load_source({"kind": "webdataset", "path": str(tmp_path / "wds"), "split": "train"})
    # Each row names its sample too (webdataset's __key__), so that a pair can refer to it.
    assert set(df.columns) == {KEY, *S.REQUIRED_COLUMNS, *S.OPTIONAL_COLUMNS}
    keys = [f"a/{i:06d}" for i in range(5)] + [f"{i:06d}" for i in range(len(rows) - 5)]
    assert list(df[KEY]) == keys
    expected = pd.DataFrame(rows)[[c for c in df.columns if c != KEY]]
    pd.testing.assert_frame_equal(df.drop(columns=KEY), expected, check_dtype=False)
    pairs, stats = normalise(df)
    assert stats["kept"] == 3 and stats["unreadable"] == 2
    glob_src = {"kind": "webdataset", "path": str(tmp_path / "wds" / "valid*.tar")}
    assert len(S.load_source(glob_src)) == 2
    with pytest.raises(FileNotFoundError, match=r"split 'test' \(test-\*\.tar"):
        S.load_source({"kind": "webdataset", "path": str(tmp_path / "wds"), "split": "test"})


def test_webdataset_errors_name_file_and_sample(tmp_path):
    red, blue = jpeg(RED), jpeg(BLUE)
    bad = tmp_path / "train-000000.tar"
    write_tar(bad, [{k: v for k, v in row("x", red, blue, 1, 0).items() if k != "label_1"}])
    with pytest.raises(ValueError) as err:
        S.load_source({"kind": "webdataset", "path": str(bad)})
    assert str(bad) in str(err.value) and "000000.json" in str(err.value)
    assert "'label_1'" in str(err.value)
    with tarfile.open(bad, "w") as tar:
        info = tarfile.TarInfo("000007.jpg_0")
        info.size = len(red)
        tar.addfile(info, io.BytesIO(red))
    with pytest.raises(
        ValueError, match=r"sample '000007' of train-000000.tar has members \['jpg_0'\]"
    ):
        S.load_source({"kind": "webdataset", "path": str(bad)})
    write_tar(bad, [row("x", red, blue, 1, 0)] * 2)
    with tarfile.open(bad, "a") as tar:  # a later sample without its json member
        info = tarfile.TarInfo("000007.jpg_0")
        info.size = len(red)
        tar.addfile(info, io.BytesIO(red))
    with pytest.raises(ValueError, match="sample '000007' has no 000007.jpg_1, 000007.json member"):
        S.load_source({"kind": "webdataset", "path": str(bad)})


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

    def __len__(self):
        return len(self.rows)

    def select(self, indices):
        return _FakeDataset([self.rows[i] for i in indices], self.features)

    # Streaming: two shard files, as a hub copy split into files has.
    num_shards = 2

    def shard(self, num_shards, index):
        assert num_shards == self.num_shards
        half = len(self.rows) // 2
        return _FakeDataset(self.rows[:half] if index == 0 else self.rows[half:], self.features)

    def __iter__(self):
        if isinstance(self.features.get("jpg_0"), _FakeImage) and self.features["jpg_0"].decode:
            raise AssertionError("images must not be decoded while streaming")
        return iter(self.rows)


def test_streamed_hub_source_with_fake_datasets(monkeypatch):
    # Units: the two shard files. (Without streaming, tests/data/test_sources.py: no `datasets`.)
    streaming = True
    calls = []
    rows = [dict(r, jpg_0={"bytes": r["jpg_0"], "path": None}) for r in mixed_rows()]

    def load_dataset(name, **kwargs):
        calls.append((name, kwargs))
        return _FakeDataset(rows, {"jpg_0": _FakeImage()})

    fake = types.SimpleNamespace(load_dataset=load_dataset, Image=_FakeImage)
    monkeypatch.setitem(sys.modules, "datasets", fake)
    src = {"kind": "hub", "id": "me/pickapic", "split": "validation", "streaming": streaming}
    assert len(S.source_units(src)) == 2
    calls.clear()
    df = S.load_source(src)
    assert calls == [
        ("me/pickapic", {"split": "validation", "revision": None, "streaming": streaming})
    ]
    assert "user_id" not in df.columns and len(df) == 10
    pairs, stats = normalise(df)  # {"bytes": ...} image cells are accepted
    assert stats["kept"] == 3 and all(colour_of(b) == RED for b in pairs["jpg_w"])


def test_streamed_unit_without_a_column_is_named(monkeypatch, tmp_path):
    # Some streaming datasets know their columns only once iterated: each unit is checked.
    class _Unknown(_FakeDataset):
        column_names = None

    rows = [{k: v for k, v in r.items() if k != "label_1"} for r in mixed_rows()]
    fake = types.SimpleNamespace(load_dataset=lambda *a, **k: _Unknown(rows, {}), Image=_FakeImage)
    monkeypatch.setitem(sys.modules, "datasets", fake)
    source = {"kind": "hub", "id": "me/pickapic", "streaming": True}
    with pytest.raises(ValueError, match=r"me/pickapic \(train\) shard 0 of 2: .*'label_1'"):
        P.normalise_part(P.PairSettings(source=source), 0, 1, tmp_path / "part0")
    assert not (tmp_path / "part0").exists()


# --- normalising: what is kept and why ---------------------------------------------------


def test_normalise_puts_winner_first_and_counts_every_drop(raw):
    pairs, stats = normalise(raw)
    assert stats == {
        "input": 10,
        "kept": 3,
        "caption_missing": 0,
        "caption_unreadable": 0,
        "caption_blank": 0,
        "eval_prompt": 0,
        "duplicate": 0,
        "unlabelled": 1,
        "invalid_label": 1,
        "identical": 1,
        "ties_dropped": 1,
        "unreadable": 3,
        "not_sampled": 0,
    }
    assert list(pairs.columns) == list(T.CANONICAL_COLUMNS)
    assert list(pairs["pair_id"]) == [0, 1, 2]
    assert list(pairs["source_row"]) == [0, 1, 9]
    assert list(pairs["caption"]) == ["a cat", "a dog", "a cat"]
    assert [colour_of(b) for b in pairs["jpg_w"]] == [RED] * 3
    assert [colour_of(b) for b in pairs["jpg_l"]] == [BLUE] * 3
    assert list(pairs["label_w"]) == [1.0] * 3
    assert pairs["prompt_id"].dtype == np.int64
    assert pairs["prompt_id"][0] == pairs["prompt_id"][2] != pairs["prompt_id"][1]


def test_keep_ties_keeps_order_and_half_label(raw):
    pairs, stats = normalise(raw, drop_ties=False)
    assert stats["ties_dropped"] == 0 and stats["kept"] == 4
    tie = pairs[pairs["caption"] == "a tie"].iloc[0]
    assert tie["label_w"] == 0.5 and tie["source_row"] == 2
    assert colour_of(tie["jpg_w"]) == BLUE  # jpg_0 stays first
    assert colour_of(tie["jpg_l"]) == RED


def test_nothing_left_reports_why(raw):
    dropped = raw.drop(index=[0, 1, 9])
    with pytest.raises(ValueError) as err:
        normalise(dropped)
    msg = str(err.value)
    for part in ("7 rows", "unlabelled=1", "invalid_label=1", "identical=1", "ties_dropped=1"):
        assert part in msg
    assert "unreadable=3" in msg


def test_max_pairs_is_seeded_subset():
    red, blue = jpeg(RED), jpeg(BLUE)
    df = pd.DataFrame([row(f"p{i}", red, blue, 1.0, 0.0) for i in range(20)])
    a, stats = normalise(df, max_pairs=5, seed=3)
    b, _ = normalise(df, max_pairs=5, seed=3)
    c, _ = normalise(df, max_pairs=5, seed=4)
    assert len(a) == 5 and list(a["pair_id"]) == list(range(5))
    assert stats["kept"] == 5 and stats["not_sampled"] == 15
    assert a.equals(b)
    assert list(a["source_row"]) != list(c["source_row"])
    assert list(a["source_row"]) == sorted(a["source_row"])
    everything, _ = normalise(df, max_pairs=100)
    assert len(everything) == 20
    with pytest.raises(ValueError, match="max_pairs"):
        normalise(df, max_pairs=0)


def test_max_pairs_refills_past_unreadable(raw):
    pairs, stats = normalise(raw, max_pairs=2, seed=0)
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


# --- nodup --------------------------------------------------------------------------------


def test_nodup_rows_one_per_prompt_uniform_and_seeded():
    prompt_ids = np.array([5, 5, 5, 5, 9, 7, 5, 7])
    picks = set()
    for seed in range(20):
        rows = N.nodup_rows(prompt_ids, seed)
        assert list(rows) == sorted(rows) and sorted(prompt_ids[rows]) == [5, 7, 9]
        assert list(N.nodup_rows(prompt_ids, seed)) == list(rows)
        picks.add(int(rows[prompt_ids[rows] == 5][0]))
    assert picks == {0, 1, 2, 3, 6}  # the choice really depends on the seed, over all five


@pytest.mark.parametrize("parts", [1, 3, 6])  # 6 > 4 row groups: two parts are empty
def test_nodup_parts_copy_the_chosen_pairs_row_group_by_row_group(tmp_path, monkeypatch, parts):
    red, blue = jpeg(RED), jpeg(BLUE)
    # Eight pairs of one prompt, written four ways that normalise alike (other images each).
    spellings = ["same prompt", "Same prompt.", " SAME   prompt ", "«same prompt»"]
    rows = [row(spellings[i % 4], jpeg(RED, 16 + 4 * i), blue, 1.0, 0.0) for i in range(8)]
    rows += [row("other", red, blue, 1.0, 0.0), row("third", blue, red, 0.0, 1.0)]
    pairs, _ = normalise(pd.DataFrame(rows))
    monkeypatch.setattr(T, "ROW_GROUP_PAIRS", 3)  # 4 groups, some without a kept pair
    T.write_pairs(pairs, tmp_path / "pairs.parquet")
    dirs = [tmp_path / "parts" / str(k) for k in range(parts)]
    for k, folder in enumerate(dirs):
        N.nodup_part(tmp_path / "pairs.parquet", k, parts, 4, folder)
    stats = N.gather_nodup(dirs, tmp_path / "nodup.parquet")
    nodup = T.read_pairs(tmp_path / "nodup.parquet")
    assert stats == {"input": 10, "kept": 3, "prompts": 3, "captions": 6}
    assert list(nodup["pair_id"]) == [0, 1, 2]
    assert sorted(normalise_caption(c) for c in nodup["caption"]) == [
        "other",
        "same prompt",
        "third",
    ]
    groups = np.array([caption_group(c) for c in pairs["caption"]])
    expected = pairs.iloc[N.nodup_rows(groups, 4)]
    assert list(nodup["source_row"]) == list(expected["source_row"])
    assert list(nodup["jpg_w"]) == list(expected["jpg_w"])
    one_part = tmp_path / "one.parquet"
    N.nodup_part(tmp_path / "pairs.parquet", 0, 1, 4, tmp_path / "one")
    N.gather_nodup([tmp_path / "one"], one_part)
    assert one_part.read_bytes() == (tmp_path / "nodup.parquet").read_bytes()


# --- scattered normalisation ---------------------------------------------------------------


def swapped(r: dict) -> dict:
    """The same pair with its two image columns (and labels) the other way round."""
    return dict(r, jpg_0=r["jpg_1"], jpg_1=r["jpg_0"], label_0=r["label_1"], label_1=r["label_0"])


def scatter_source(tmp_path, duplicates: bool = False) -> dict:
    """Two parquet files in row groups of 3 rows (14 units, 15 with ``duplicates``), every kind
    of row in them; ``duplicates`` adds to the second file copies of two kept rows (images
    swapped) and of an unreadable one of the first."""
    rows = []
    for i in range(4):
        rows += [dict(r, caption=f"{r['caption']} {i}") for r in mixed_rows()]
    if duplicates:
        rows += [swapped(rows[0]), swapped(rows[1]), rows[6]]
    for name, block in (("train-00000-of-00002", rows[:22]), ("train-00001-of-00002", rows[22:])):
        (tmp_path / "src").mkdir(exist_ok=True)
        pd.DataFrame(block).to_parquet(tmp_path / "src" / f"{name}.parquet", row_group_size=3)
    return {"kind": "parquet", "path": str(tmp_path / "src"), "split": "train"}


def run_parts(settings: P.PairSettings, parts: int, root: Path) -> tuple[bytes, dict]:
    dirs = [root / f"parts{parts}" / str(k) for k in range(parts)]
    for k, folder in enumerate(dirs):
        P.normalise_part(settings, k, parts, folder)
    out = root / f"pairs{parts}.parquet"
    stats = P.gather_pairs(dirs, out)
    return out.read_bytes(), stats


@pytest.mark.parametrize("max_pairs", [None, 6])
@pytest.mark.parametrize("seed", [1, 2])
def test_any_number_of_parts_gives_the_same_table(tmp_path, max_pairs, seed):
    # Duplicates across files: which copy stays must not depend on where the parts split.
    source = scatter_source(tmp_path, duplicates=True)
    assert len(S.source_units(source)) == 15
    settings = P.PairSettings(source=source, max_pairs=max_pairs, seed=seed)
    one, stats = run_parts(settings, 1, tmp_path)
    for parts in (3, 17):  # 17 > 15 units: two parts are empty
        assert run_parts(settings, parts, tmp_path) == (one, stats)
    dropped = sum(n for k, n in stats.items() if k not in ("input", "kept"))
    assert stats["input"] == 43 == stats["kept"] + dropped
    table = T.read_pairs(tmp_path / "pairs1.parquet")
    assert list(table["pair_id"]) == list(range(len(table)))
    assert list(table["source_row"]) == sorted(table["source_row"])
    if max_pairs is None:
        assert stats["kept"] == 12 and stats["unreadable"] == 12 and stats["duplicate"] == 3
        assert stats["not_sampled"] == 0


def test_max_pairs_takes_the_readable_pairs_with_the_smallest_keys(tmp_path):
    source = scatter_source(tmp_path)
    settings = P.PairSettings(source=source, max_pairs=5, seed=3)
    _, stats = run_parts(settings, 3, tmp_path)
    table = T.read_pairs(tmp_path / "pairs3.parquet")
    # Brute force over the whole source: every readable candidate with its key.
    whole = S.load_source(source)
    readable, unreadable = [], []
    offset = 0
    for unit, meta in enumerate(S.source_units(source)):
        df = meta.read()
        keys = P.sample_keys(3, unit, len(df))
        for r in range(len(df)):
            good = whole.iloc[offset + r]
            if good["label_0"] == good["label_1"] or not good["has_label"]:
                continue  # ties (dropped), unlabelled, invalid and identical rows
            ok = image_is_readable(good["jpg_0"]) and image_is_readable(good["jpg_1"])
            (readable if ok else unreadable).append((keys[r], offset + r))
        offset += len(df)
    chosen = sorted(readable)[:5]
    assert list(table["source_row"]) == sorted(row for _, row in chosen)
    cut = chosen[-1][0]
    assert stats["unreadable"] == sum(key < cut for key, _ in unreadable)
    # 24 candidates: 12 readable, 12 unreadable; those past the cut were never visited.
    assert stats["kept"] == 5 and stats["not_sampled"] == 24 - 5 - stats["unreadable"]


def test_parts_gather_to_the_same_table_in_any_order(tmp_path):
    # One rule for every gather step: parts are taken in part order, whatever order is given.
    settings = P.PairSettings(source=scatter_source(tmp_path))
    dirs = [tmp_path / "parts" / str(k) for k in range(3)]
    for k, folder in enumerate(dirs):
        P.normalise_part(settings, k, 3, folder)
    stats = P.gather_pairs(dirs, tmp_path / "in_order.parquet")
    assert P.gather_pairs(dirs[::-1], tmp_path / "reversed.parquet") == stats
    reversed_bytes = (tmp_path / "reversed.parquet").read_bytes()
    assert reversed_bytes == (tmp_path / "in_order.parquet").read_bytes()


def test_gather_refuses_parts_that_do_not_belong_together(tmp_path):
    source = scatter_source(tmp_path)
    settings = P.PairSettings(source=source)
    for k in range(2):
        P.normalise_part(settings, k, 2, tmp_path / "a" / str(k))
    P.normalise_part(P.PairSettings(source=source, seed=9), 1, 2, tmp_path / "b" / "1")
    out = tmp_path / "pairs.parquet"
    with pytest.raises(ValueError, match="settings .* differs from part 0"):
        P.gather_pairs([tmp_path / "a" / "0", tmp_path / "b" / "1"], out)
    with pytest.raises(ValueError, match=r"pairs parts \[1\] given, expected all of 0..1"):
        P.gather_pairs([tmp_path / "a" / "1"], out)
    with pytest.raises(FileNotFoundError, match="not a finished pairs part"):
        P.gather_pairs([tmp_path / "a" / "0", tmp_path / "missing"], out)
    assert not out.exists()


def test_a_failed_part_leaves_no_part_behind(tmp_path, monkeypatch):
    source = scatter_source(tmp_path)

    def broken(*args, **kwargs):
        raise OSError("disk gone")

    monkeypatch.setattr(S, "_read_row_group", broken)
    with pytest.raises(OSError, match="disk gone"):
        P.normalise_part(P.PairSettings(source=source), 0, 2, tmp_path / "part0")
    assert not (tmp_path / "part0").exists() and not (tmp_path / ".part0.tmp").exists()
