"""The canonical pair table's parquet I/O: atomic writes, checked columns, row slices."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from dspo.data import pair_table as T
from tests.data.test_pairs import BLUE, RED, jpeg, normalise, row

# --- write_pairs / read_pairs --------------------------------------------------------------


def test_write_read_roundtrip_leaves_no_temp_files(raw, tmp_path):
    pairs, _ = normalise(raw)
    out = tmp_path / "sub" / "pairs.parquet"
    T.write_pairs(pairs, out)
    T.write_pairs(pairs, out)  # overwriting is fine too
    assert os.listdir(out.parent) == ["pairs.parquet"]
    back = T.read_pairs(out)
    pd.testing.assert_frame_equal(back, pairs)


def test_failed_write_leaves_old_file_and_no_temp(raw, tmp_path, monkeypatch):
    pairs, _ = normalise(raw)
    out = tmp_path / "pairs.parquet"
    T.write_pairs(pairs.iloc[:1], out)

    def boom(*args, **kwargs):
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(T.pq.ParquetWriter, "write_table", boom)
    with pytest.raises(RuntimeError):
        T.write_pairs(pairs, out)
    assert os.listdir(tmp_path) == ["pairs.parquet"]
    monkeypatch.undo()
    assert len(T.read_pairs(out)) == 1


def test_read_pair_rows_reads_a_slice(tmp_path, monkeypatch):
    red, blue = jpeg(RED), jpeg(BLUE)
    pairs, _ = normalise(pd.DataFrame([row(f"p{i}", red, blue, 1, 0) for i in range(10)]))
    monkeypatch.setattr(T, "ROW_GROUP_PAIRS", 3)
    out = tmp_path / "pairs.parquet"
    T.write_pairs(pairs, out)
    assert T.pq.ParquetFile(out).num_row_groups == 4
    for start, stop in [(0, 3), (2, 8), (9, 10)]:
        part = T.read_pair_rows(out, start, stop).reset_index(drop=True)
        pd.testing.assert_frame_equal(part, pairs.iloc[start:stop].reset_index(drop=True))
    assert list(T.read_pair_texts(out)["caption"]) == [f"p{i}" for i in range(10)]
    with pytest.raises(ValueError, match="beyond its 10 rows"):
        T.read_pair_rows(out, 10, 12)


def test_read_and_write_check_canonical_columns(raw, tmp_path):
    pairs, _ = normalise(raw)
    bad = tmp_path / "bad.parquet"
    pairs.drop(columns=["jpg_l"]).to_parquet(bad, index=False)
    with pytest.raises(ValueError) as err:
        T.read_pairs(bad)
    assert str(bad) in str(err.value) and "'jpg_l'" in str(err.value)
    with pytest.raises(ValueError, match="'prompt_id'"):
        T.write_pairs(pairs.drop(columns=["prompt_id"]), tmp_path / "x.parquet")
