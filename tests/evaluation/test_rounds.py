"""The summary of rounds of AI feedback and its README block (dspo.evaluation.rounds)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from dspo.evaluation.rounds import END, START, rounds_summary, verdict, write_readme


def _head_to_head() -> pd.DataFrame:
    rows = []
    # (model, opponent, reward): (win rate, low, high)
    cells = {
        ("dspo@round2", "base", "oracle"): (0.70, 0.60, 0.80),
        ("dspo@round2", "dspo", "oracle"): (0.48, 0.40, 0.56),
        ("dspo@round2", "base", "alignment"): (0.90, 0.85, 0.95),
        ("dspo@round2", "dspo", "alignment"): (0.30, 0.20, 0.45),
    }
    for (model, opponent, reward), (rate, low, high) in cells.items():
        rows.append(
            {
                "prompt_set": "pickv2",
                "guidance": 2.0,
                "reward": reward,
                "model": model,
                "opponent": opponent,
                "win_rate": rate,
                "ci_low": low,
                "ci_high": high,
                "p_value": 0.1,
            }  # fmt: skip
        )
    return pd.DataFrame(rows)


def test_verdicts_say_what_the_interval_says() -> None:
    assert verdict(0.51, 0.7) == "beats"
    assert verdict(0.2, 0.49) == "loses to"
    assert verdict(0.45, 0.55) == "does not clearly differ from"


def test_the_block_names_the_rewards_and_judges_round_2_whatever_the_answer(
    tmp_path: Path,
) -> None:
    rounds = rounds_summary(
        _head_to_head(), {"dspo": ["dspo", "dspo@round2"]}, "oracle", ["alignment"], [3, 3]
    )
    summary = {"preset": "ai-feedback", "labels": {"oracle": "Oracle", "dspo": "DSPO",
               "dspo@round2": "DSPO round 2", "base": "Base"}, "rounds": rounds}  # fmt: skip
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{START}\nold\n{END}\nafter\n")
    assert write_readme(summary, readme)
    text = readme.read_text()
    assert "pairs labelled by alignment; judged by the held-out Oracle reward" in text
    assert "DSPO round 2 beats Base under Oracle (pickv2, guidance 2: 70.0 [60.0, 80.0])." in text
    assert (
        "DSPO round 2 does not clearly differ from DSPO under Oracle (pickv2, guidance 2: "
        "48.0 [40.0, 56.0])." in text
    )
    # The labelling reward's own verdict is in the table beside the held-out one.
    assert "| DSPO round 2 | DSPO | alignment | pickv2 | 2 | 30.0 [20.0, 45.0] | loses to |" in text
    assert "replicates" in text and text.startswith("intro\n") and text.endswith("after\n")
    assert not write_readme(summary, readme)  # written again: the same text


def test_a_summary_without_rounds_or_a_readme_without_markers_is_refused(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("no block\n")
    with pytest.raises(ValueError, match="no rounds"):
        write_readme({"preset": "toy"}, readme)
    rounds = rounds_summary(_head_to_head(), {"dspo": ["dspo", "dspo@round2"]}, "oracle", [])
    with pytest.raises(ValueError, match="exactly one AI-feedback block"):
        write_readme({"preset": "x", "rounds": rounds}, readme)
    with pytest.raises(ValueError, match="no dspo@round3 against"):
        rounds_summary(_head_to_head(), {"dspo": ["dspo", "dspo@round3"]}, "oracle", [])


def test_readme_ai_feedback_block_is_what_the_kept_summary_writes() -> None:
    """The README's AI-feedback figures come from docs/ai_feedback_summary.json, a run of
    config/presets/ai-feedback.yaml with its replicates (`make readme-ai-feedback`)."""
    import json

    from dspo.evaluation.rounds import render_block, replace_block

    root = Path(__file__).resolve().parents[2]
    summary = json.loads((root / "docs" / "ai_feedback_summary.json").read_text())
    readme = (root / "README.md").read_text()
    block = render_block(summary["rounds"], summary["preset"], summary.get("labels", {}))
    assert replace_block(readme, block) == readme, (
        "README.md's AI-feedback block differs from what `make readme-ai-feedback` writes for "
        "docs/ai_feedback_summary.json"
    )
    assert summary["preset"] == "ai-feedback" and min(summary["rounds"]["replicates"]) >= 3
    judged = {(c["model"], c["opponent"]) for c in summary["rounds"]["comparisons"]}
    assert {("dspo@round2", "base"), ("dspo@round2", "dspo")} <= judged
