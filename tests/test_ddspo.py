"""DDSPO pair generation and its pluggable prompt degrader."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dspo.data.ddspo import degrade, drop_words, make_ddspo_pairs
from dspo.data.pairs import read_pairs, write_pairs

PROMPT = "a large red circle at the left on a white background"


def test_drop_words_deletes_40_to_70_percent_seeded() -> None:
    rng = np.random.default_rng(0)
    out = drop_words([PROMPT] * 200, rng, 0.4, 0.7)
    n = len(PROMPT.split())
    dropped = np.array([n - len(o.split()) for o in out])
    # 40-70 % of 11 words, rounded to whole words: 4 to 8 of them.
    assert dropped.min() == round(0.4 * n) and dropped.max() == round(0.7 * n)
    assert all(set(o.split()) <= set(PROMPT.split()) for o in out)
    assert out == drop_words([PROMPT] * 200, np.random.default_rng(0), 0.4, 0.7)
    assert drop_words(["one"], rng, 0.9, 0.9) == ["one"]  # never an empty prompt


def test_command_degrader_and_its_errors() -> None:
    upper = f'{sys.executable} -c "import sys; [print(l.strip().upper()) for l in sys.stdin]"'
    assert degrade(["a b", "c"], {"kind": "command", "command": upper}, 0) == ["A B", "C"]
    with pytest.raises(ValueError, match="returned 1 lines for 2 prompts"):
        degrade(["a", "b"], {"kind": "command", "command": f'{sys.executable} -c "print(1)"'}, 0)
    with pytest.raises(ValueError, match="failed"):
        degrade(["a"], {"kind": "command", "command": f'{sys.executable} -c "exit(3)"'}, 0)


def test_pairs_come_from_the_reference_with_degraded_prompts(
    tiny_model: Path, tiny_pairs: pd.DataFrame, tmp_path: Path
) -> None:
    cfg = {
        "prompts": 4,
        "seed": 0,
        "steps": 2,
        "guidance": 2.0,
        "batch_size": 3,
        "degrader": {"kind": "drop_words", "min_fraction": 0.4, "max_fraction": 0.7},
    }
    table, stats = make_ddspo_pairs(tiny_pairs, str(tiny_model), cfg)
    assert len(table) == 4 and stats["pairs"] == 4
    assert set(table["caption"]) <= set(tiny_pairs["caption"])
    assert all(
        len(degraded.split()) < len(caption.split())
        for caption, degraded in zip(table["caption"], table["caption_l"], strict=True)
    )
    assert (table["jpg_w"] != table["jpg_l"]).any()
    write_pairs(table, tmp_path / "ddspo.parquet")
    assert (
        read_pairs(tmp_path / "ddspo.parquet")["caption_l"].tolist() == table["caption_l"].tolist()
    )
