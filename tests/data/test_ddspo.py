"""DDSPO pair generation and its pluggable prompt degrader."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dspo.data.ddspo import (
    ddspo_prompts,
    degrade,
    drop_words,
    gather_ddspo,
    make_ddspo_part,
    part_batches,
)
from dspo.data.pair_table import read_pairs

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


CFG = {
    "prompts": 5,
    "seed": 0,
    "steps": 2,
    "guidance": 2.0,
    "batch_size": 2,
    "degrader": {"kind": "drop_words", "min_fraction": 0.4, "max_fraction": 0.7},
}


def _generate(model: Path, pairs: pd.DataFrame, out: Path, parts: int) -> pd.DataFrame:
    captions = pairs["caption"].tolist()
    folders = [out / f"part{p}" for p in range(parts)]
    for part, folder in enumerate(folders):
        make_ddspo_part(captions, str(model), CFG, folder, part=part, parts=parts)
    stats = gather_ddspo(folders, out / "ddspo.parquet")
    assert stats["pairs"] == CFG["prompts"] and stats["parts"] == parts
    return read_pairs(out / "ddspo.parquet")


def test_pairs_come_from_the_reference_with_degraded_prompts(
    tiny_model: Path, tiny_pairs: pd.DataFrame, tmp_path: Path
) -> None:
    table = _generate(tiny_model, tiny_pairs, tmp_path, parts=1)
    assert len(table) == CFG["prompts"] and table["pair_id"].tolist() == list(range(5))
    assert set(table["caption"]) <= set(tiny_pairs["caption"])
    assert all(
        len(degraded.split()) < len(caption.split())
        for caption, degraded in zip(table["caption"], table["caption_l"], strict=True)
    )
    assert (table["jpg_w"] != table["jpg_l"]).any()


def test_any_number_of_parts_gives_the_same_pairs(
    tiny_model: Path, tiny_pairs: pd.DataFrame, tmp_path: Path
) -> None:
    one = _generate(tiny_model, tiny_pairs, tmp_path / "one", parts=1)
    # 5 prompts in batches of 2 are 3 batches: with 4 parts one part is empty.
    for parts in (2, 4):
        many = _generate(tiny_model, tiny_pairs, tmp_path / f"n{parts}", parts=parts)
        pd.testing.assert_frame_equal(one, many)


def test_gather_refuses_missing_or_misordered_parts(
    tiny_model: Path, tiny_pairs: pd.DataFrame, tmp_path: Path
) -> None:
    captions = tiny_pairs["caption"].tolist()
    folders = [tmp_path / f"part{p}" for p in range(3)]
    for part in (0, 2):
        make_ddspo_part(captions, str(tiny_model), CFG, folders[part], part=part, parts=3)
    with pytest.raises(FileNotFoundError, match="part1"):
        gather_ddspo(folders, tmp_path / "out.parquet")
    # Parts may come in any order, but all of them must be there.
    with pytest.raises(ValueError, match=r"parts \[0, 2\] given, expected all of 0..2"):
        gather_ddspo(folders[::-2], tmp_path / "out.parquet")
    assert not (tmp_path / "out.parquet").exists()
    with pytest.raises(ValueError, match="part 3 is not in 0..2"):
        make_ddspo_part(captions, str(tiny_model), CFG, tmp_path / "x", part=3, parts=3)


def test_prompts_and_batches_do_not_depend_on_parts() -> None:
    captions = [f"prompt {i}" for i in range(50)] * 2
    chosen = ddspo_prompts(captions, {"prompts": 20, "seed": 1})
    assert len(set(chosen)) == 20 and chosen == ddspo_prompts(
        captions[::-1], {"prompts": 20, "seed": 1}
    )
    for parts in (1, 3, 7, 11):
        blocks = [part_batches(20, 3, p, parts) for p in range(parts)]
        assert blocks[0][0] == 0 and blocks[-1][1] == 7
        assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:], strict=False))
