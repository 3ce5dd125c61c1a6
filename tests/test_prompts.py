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
