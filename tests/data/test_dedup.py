"""Caption cells, caption normalisation, duplicate rows and evaluation prompts in the pairs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dspo.data import pair_table as T
from dspo.data import pairs as P
from dspo.data.dedup import (
    caption_text,
    evaluation_keys,
    normalise_caption,
    pairs_note,
)
from tests.data.test_pairs import BLUE, GREEN, RED, colour_of, jpeg, normalise, row

# --- normalisation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("A Cat", "a cat"),  # case
        ("STRASSE Straße", "strasse strasse"),  # case-folding, not lower()
        ("a\tcat\n on  a\u00a0mat", "a cat on a mat"),  # every whitespace run is one space
        ("ﬁsh in Ｔｏｋｙｏ", "fish in tokyo"),  # NFKC: ligature, full-width letters
        ('  "A cat."  ', "a cat"),  # surrounding quotes, full stop and spaces
        ("«¿a cat?»", "a cat"),  # any Unicode punctuation at either end
        ("...a cat, a dog...", "a cat, a dog"),  # inner punctuation stays
        ("a cat 🐱", "a cat 🐱"),  # symbols are not punctuation
        ("$5 (a coin)", "$5 (a coin"),  # a symbol at the start stays; the closing ")" goes
        (" .,!? ", ""),
    ],
)
def test_normalise_caption(text, key):
    assert normalise_caption(text) == key


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("a cat", ("a cat", None)),
        ("  a cat ", ("  a cat ", None)),  # the text is kept as written
        ("café".encode(), ("café", None)),  # bytes decode as UTF-8
        (bytearray(b"a dog"), ("a dog", None)),
        (b"caf\xe9", ("", "caption_unreadable")),  # Latin-1 bytes are not UTF-8
        (None, ("", "caption_missing")),
        (float("nan"), ("", "caption_missing")),
        (pd.NA, ("", "caption_missing")),
        (3, ("", "caption_unreadable")),
        ("", ("", "caption_blank")),
        (" \t\n", ("", "caption_blank")),
        (b"  ", ("", "caption_blank")),
        ("...", ("", "caption_blank")),
    ],
)
def test_caption_text(cell, expected):
    assert caption_text(cell) == expected


# --- caption cells through the pairs stage ----------------------------------------------------


def with_captions(captions: list) -> pd.DataFrame:
    """One decided pair per caption, each with its own images (no row duplicates another)."""
    return pd.DataFrame(
        [row(c, jpeg(RED, 16 + 4 * i), jpeg(BLUE), 1.0, 0.0, rid=i) for i, c in enumerate(captions)]
    )


def test_binary_caption_column_decodes_or_counts_unreadable():
    df = with_captions([b"a cat", "café".encode(), b"caf\xe9", None, b"", b"\xff\xfe"])
    pairs, stats = normalise(df)
    assert list(pairs["caption"]) == ["a cat", "café"]
    assert list(pairs["source_row"]) == [0, 1]
    assert stats["caption_unreadable"] == 2 and stats["caption_missing"] == 1
    assert stats["caption_blank"] == 1 and stats["kept"] == 2


def test_binary_caption_column_as_stored_in_parquet(tmp_path):
    # A source whose caption column is parquet BYTE_ARRAY without the UTF8 annotation, as a
    # writer other than pandas leaves it (no pandas metadata).
    df = with_captions(["a cat", "a dog", "x"])
    table = pa.Table.from_pandas(df, preserve_index=False).replace_schema_metadata(None)
    binary = pa.array([b"a cat", b"\x80\x81", None], type=pa.binary())
    table = table.set_column(table.schema.get_field_index("caption"), "caption", binary)
    source = tmp_path / "src" / "train-00000-of-00001.parquet"
    source.parent.mkdir()
    pq.write_table(table, source)
    assert pq.read_schema(source).field("caption").type == pa.binary()
    settings = P.PairSettings(source={"kind": "parquet", "path": str(source.parent)})
    P.normalise_part(settings, 0, 1, tmp_path / "part0")
    stats = P.gather_pairs([tmp_path / "part0"], tmp_path / "pairs.parquet")
    assert list(T.read_pairs(tmp_path / "pairs.parquet")["caption"]) == ["a cat"]
    assert (stats["caption_unreadable"], stats["caption_missing"]) == (1, 1)


def test_null_and_blank_captions_are_dropped_and_counted():
    pairs, stats = normalise(with_captions(["a cat", None, "", "   ", "\t\n", "?!", "a dog"]))
    assert list(pairs["caption"]) == ["a cat", "a dog"]
    assert stats["caption_missing"] == 1 and stats["caption_blank"] == 4
    assert stats["input"] == stats["kept"] + sum(
        n for k, n in stats.items() if k not in ("input", "kept")
    )


def test_only_bad_captions_is_an_error_naming_them():
    with pytest.raises(ValueError, match="caption_missing=2.*caption_blank=1"):
        normalise(with_captions([None, None, " "]))


# --- duplicate rows ---------------------------------------------------------------------------


def test_duplicate_rows_in_either_image_order_are_dropped():
    red, blue, green = jpeg(RED), jpeg(BLUE), jpeg(GREEN)
    rows = [
        row("a cat", red, blue, 1.0, 0.0, rid=0),  # kept
        row("A cat.", blue, red, 0.0, 1.0, rid=1),  # duplicate: same pair, columns swapped
        row("a cat", red, blue, 1.0, 0.0, rid=2),  # duplicate: the same row again
        row("a cat", red, blue, 0.0, 1.0, rid=3),  # kept: the opposite vote on the same images
        row("a cat", red, green, 1.0, 0.0, rid=4),  # kept: another image
        row("a dog", red, blue, 1.0, 0.0, rid=5),  # kept: another caption
        # A copy of a row's bytes under a new uid is still the same image.
        row("a cat", bytes(bytearray(red)), bytes(blue), 1.0, 0.0, rid=6),  # duplicate
    ]
    pairs, stats = normalise(pd.DataFrame(rows))
    assert stats["duplicate"] == 3 and stats["kept"] == 4
    assert len(pairs) == 4 and list(pairs["pair_id"]) == [0, 1, 2, 3]
    kept = [tuple(colour_of(b) for b in (r.jpg_w, r.jpg_l)) for r in pairs.itertuples()]
    assert sorted(kept) == sorted([(RED, BLUE), (BLUE, RED), (RED, GREEN), (RED, BLUE)])
    assert sorted(pairs["caption"].str.lower().str.strip(".")) == ["a cat"] * 3 + ["a dog"]


def test_kept_duplicate_is_the_one_with_the_smallest_sample_key():
    red, blue = jpeg(RED), jpeg(BLUE)
    df = pd.DataFrame([row("a cat", red, blue, 1.0, 0.0, rid=i) for i in range(6)])
    for seed in range(4):
        pairs, stats = normalise(df, seed=seed)
        assert stats["duplicate"] == 5 and len(pairs) == 1
        assert pairs["source_row"][0] == int(np.argmin(P.sample_keys(seed, 0, 6)))


def test_tied_duplicates_match_in_either_order():
    red, blue = jpeg(RED), jpeg(BLUE)
    rows = [row("a tie", red, blue, 0.5, 0.5), row("a tie", blue, red, 0.5, 0.5)]
    rows.append(row("a tie", red, blue, 1.0, 0.0))  # decided: not a duplicate of the tie
    pairs, stats = normalise(pd.DataFrame(rows), drop_ties=False)
    assert stats["duplicate"] == 1 and stats["kept"] == 2
    assert sorted(pairs["label_w"]) == [0.5, 1.0]


def test_duplicates_of_an_unreadable_pair_count_once_as_unreadable():
    red = jpeg(RED)
    cut = jpeg(GREEN, size=128)[:300]
    rows = [row("x", red, cut, 1.0, 0.0, rid=i) for i in range(3)]
    rows.append(row("y", red, jpeg(BLUE), 1.0, 0.0))
    _, stats = normalise(pd.DataFrame(rows))
    assert (stats["unreadable"], stats["duplicate"], stats["kept"]) == (1, 2, 1)


def test_duplicates_do_not_shrink_the_max_pairs_sample():
    red, blue = jpeg(RED), jpeg(BLUE)
    rows = [row("same", red, blue, 1.0, 0.0) for _ in range(30)]
    rows += [row(f"p{i}", red, blue, 1.0, 0.0) for i in range(5)]
    pairs, stats = normalise(pd.DataFrame(rows), max_pairs=4, seed=2)
    assert len(pairs) == 4 and pairs["caption"].is_unique
    assert stats["input"] == stats["kept"] + sum(
        n for k, n in stats.items() if k not in ("input", "kept")
    )


# --- evaluation prompts -----------------------------------------------------------------------


def prompt_table(path: Path, prompts: list[str]) -> Path:
    pd.DataFrame(
        {"prompt_set": "x", "prompt_id": range(len(prompts)), "prompt": prompts}
    ).to_parquet(path)
    return path


def test_training_captions_matching_an_evaluation_prompt_are_dropped(tmp_path):
    eval_files = [
        prompt_table(tmp_path / "parti.parquet", ["A red Cube on a table.", "a dog"]),
        prompt_table(tmp_path / "hps.parquet", ["  a  BLUE  ball "]),
    ]
    exclude = evaluation_keys(eval_files)
    assert exclude == {"a red cube on a table", "a dog", "a blue ball"}
    df = with_captions(["a red cube on a table", "a blue ball!", "a blue ball and a dog", "A DOG"])
    source = tmp_path / "src" / "train-00000-of-00001.parquet"
    source.parent.mkdir()
    df.to_parquet(source)
    settings = P.PairSettings(source={"kind": "parquet", "path": str(source.parent)})
    P.normalise_part(settings, 0, 1, tmp_path / "part0", exclude)
    report = tmp_path / "pairs_report.json"
    stats = P.gather_pairs([tmp_path / "part0"], tmp_path / "pairs.parquet", report)
    assert list(T.read_pairs(tmp_path / "pairs.parquet")["caption"]) == ["a blue ball and a dog"]
    assert stats["eval_prompt"] == 3
    assert json.loads(report.read_text()) == {"counts": stats, "evaluation_prompts": 3}


def test_parts_screened_against_other_evaluation_prompts_do_not_gather(tmp_path):
    df = with_captions(["a cat", "a dog"])
    source = tmp_path / "src" / "train-00000-of-00001.parquet"
    source.parent.mkdir()
    df.to_parquet(source, row_group_size=1)
    settings = P.PairSettings(source={"kind": "parquet", "path": str(source.parent)})
    P.normalise_part(settings, 0, 2, tmp_path / "p0", frozenset({"a cat"}))
    P.normalise_part(settings, 1, 2, tmp_path / "p1", frozenset())
    with pytest.raises(ValueError, match="exclude .* differs from part 0"):
        P.gather_pairs([tmp_path / "p0", tmp_path / "p1"], tmp_path / "pairs.parquet")


def test_pairs_note_names_each_drop():
    counts = {"input": 10, "kept": 5, "duplicate": 3, "eval_prompt": 1, "caption_missing": 1}
    note = pairs_note(counts)
    assert note.startswith("Training pairs: 5 kept of 10 source rows; dropped: ")
    assert "3 duplicates of another row" in note and "1 without a caption" in note
    assert "1 whose caption is an evaluation prompt" in note
    assert pairs_note({"input": 4, "kept": 4, "duplicate": 0}).endswith("none dropped.")


def test_every_table_notes_what_the_pairs_dropped(tmp_path):
    from dspo.data.dedup import data_note
    from dspo.evaluation.tables import build_tables
    from tests.evaluation.test_tables import make_scores

    pairs = {"input": 240, "kept": 180, "duplicate": 49, "eval_prompt": 6, "caption_blank": 5}
    (tmp_path / "pairs.json").write_text(json.dumps({"counts": pairs, "evaluation_prompts": 9}))
    nodup = {"input": 180, "kept": 90, "prompts": 90, "captions": 97}
    (tmp_path / "nodup.json").write_text(json.dumps({"counts": nodup}))
    note = data_note(tmp_path / "pairs.json", tmp_path / "nodup.json")
    assert "180 kept of 240 source rows" in note and "49 duplicates of another row" in note
    assert "6 whose caption is an evaluation prompt" in note and "5 with a blank caption" in note
    assert "90 of 180 pairs" in note and "97 distinct caption strings" in note
    scores = make_scores(8, methods={"dspo": 0.5})
    spec = {"t1": {"title": "T1", "methods": ["dspo"]}}
    args = (scores, ["dspo"], ["pick"], ["pickv2"])
    tables = build_tables(*args, n_boot=20, paper_tables=spec, data_note=note)
    assert set(tables) == {"win_rates", "mean_scores", "head_to_head", "t1"}
    assert all(md.rstrip().endswith(note) for _, md in tables.values())
    plain = build_tables(*args, n_boot=20, paper_tables=spec)
    assert all(note not in md for _, md in plain.values())
