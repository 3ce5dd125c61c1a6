"""Prompt sets from the toy world and from local files."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from dspo.data.pairs import prompt_id_of
from dspo.data.prompts import load_prompt_set


def test_toy_split_is_selected(tmp_path: Path) -> None:
    path = tmp_path / "prompts.parquet"
    pd.DataFrame(
        {"prompt_set": ["a", "b", "b"], "prompt_id": [0, 0, 1], "prompt": ["x", "y", "z"]}
    ).to_parquet(path)
    table = load_prompt_set("parti", {"source": {"kind": "toy", "split": "b"}}, str(path))
    assert table["prompt"].tolist() == ["y", "z"] and set(table["prompt_set"]) == {"parti"}
    with pytest.raises(ValueError, match="'c'"):
        load_prompt_set("parti", {"source": {"kind": "toy", "split": "c"}}, str(path))


def test_file_sources_deduplicate_and_limit(tmp_path: Path) -> None:
    txt = tmp_path / "p.txt"
    txt.write_text("a cat\na dog\na cat\n\na bird\n")
    with pytest.warns(UserWarning, match="skipped 1 missing or blank"):
        table = load_prompt_set("hps", {"source": {"kind": "file", "path": str(txt), "limit": 2}})
    assert table["prompt"].tolist() == ["a cat", "a dog"]
    assert table["prompt_id"].tolist() == [prompt_id_of("a cat"), prompt_id_of("a dog")]
    csv = tmp_path / "p.csv"
    pd.DataFrame({"Prompt": ["x", "y"]}).to_csv(csv, index=False)
    spec = {"source": {"kind": "file", "path": str(csv), "column": "Prompt"}}
    assert load_prompt_set("parti", spec)["prompt"].tolist() == ["x", "y"]
    with pytest.raises(ValueError, match="no column 'caption'"):
        load_prompt_set(
            "parti", {"source": {"kind": "file", "path": str(csv), "column": "caption"}}
        )
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        load_prompt_set("x", {"source": {"kind": "file", "path": str(tmp_path / "missing.txt")}})


def test_blank_and_missing_prompts_are_skipped_with_a_count(tmp_path: Path) -> None:
    txt = tmp_path / "p.txt"
    txt.write_text("a cat\n   \n\t\n\na dog\n")
    with pytest.warns(UserWarning, match=r"p.txt: skipped 3 missing or blank prompts"):
        table = load_prompt_set("hps", {"source": {"kind": "file", "path": str(txt)}})
    assert table["prompt"].tolist() == ["a cat", "a dog"]
    parquet = tmp_path / "p.parquet"
    pd.DataFrame({"prompt": ["a cat", None, " ", "a dog"]}).to_parquet(parquet)
    with pytest.warns(UserWarning, match="skipped 2"):
        table = load_prompt_set("parti", {"source": {"kind": "file", "path": str(parquet)}})
    assert table["prompt"].tolist() == ["a cat", "a dog"]


def test_prompt_cells_as_bytes_decode_or_name_their_row(tmp_path: Path) -> None:
    parquet = tmp_path / "p.parquet"
    pd.DataFrame({"prompt": ["café".encode(), b"a dog"]}).to_parquet(parquet)
    table = load_prompt_set("parti", {"source": {"kind": "file", "path": str(parquet)}})
    assert table["prompt"].tolist() == ["café", "a dog"]
    pd.DataFrame({"prompt": [b"a cat", b"caf\xe9"]}).to_parquet(parquet)
    with pytest.raises(ValueError, match=r"p.parquet row 1: .* not UTF-8"):
        load_prompt_set("parti", {"source": {"kind": "file", "path": str(parquet)}})
