"""Step selection: the best candidate on the validation set, and the paper tables' rows."""

from __future__ import annotations

import pandas as pd
import pytest

from dspo.evaluation.step_selection import (
    overlap_sentence,
    pick_steps,
    picked_rows,
    selection_markdown,
    selection_note,
    shared_prompts,
    use_picked,
)
from dspo.evaluation.tables import build_tables, labeller
from tests.evaluation.test_tables import make_scores

CANDIDATES = {"dspo": {2: "dspo@2", 4: "dspo"}, "sft": {4: "sft"}}
# DSPO's step 2 is far better than its last step on every set; SFT has only its last.
SHIFTS = {"dspo": 0.0, "dspo@2": 2.0, "sft": 0.3}


def scores() -> pd.DataFrame:
    return make_scores(12, methods=SHIFTS, prompt_sets=("validation", "pickv2"))


def test_the_best_validation_mean_is_picked_and_the_last_step_is_a_candidate() -> None:
    chosen = pick_steps(scores(), CANDIDATES, "validation", "pick")
    assert chosen[["model", "step", "row"]].values.tolist() == [
        ["dspo", 2, "dspo@2"],
        ["dspo", 4, "dspo"],
        ["sft", 4, "sft"],
    ]
    assert picked_rows(chosen) == {"dspo": "dspo@2", "sft": "sft"}
    validation = scores().query("prompt_set == 'validation' and reward == 'pick'")
    means = validation.groupby("model")["score"].mean()
    assert chosen["mean"].tolist() == pytest.approx([means["dspo@2"], means["dspo"], means["sft"]])
    assert (chosen["n_images"] == 12 * 3).all()
    name = labeller({"validation": "Validation", "pick": "PickScore"})
    assert "on the validation prompt set Validation" in selection_markdown(chosen, name)
    assert "dspo step 2 of 4, sft step 4 of 4" in selection_note(chosen, name)


def test_a_tie_goes_to_the_later_step_and_a_missing_candidate_is_named() -> None:
    frame = scores()
    tied = pd.concat(
        [frame[frame["model"] != "dspo@2"], frame[frame["model"] == "dspo"].assign(model="dspo@2")]
    )
    assert picked_rows(pick_steps(tied, CANDIDATES, "validation", "pick"))["dspo"] == "dspo"
    with pytest.raises(ValueError, match="no 'pick' scores of 'dspo@3'"):
        pick_steps(frame, {"dspo": {3: "dspo@3", 4: "dspo"}}, "validation", "pick")


def test_the_table_states_whether_the_validation_prompts_are_also_tested() -> None:
    frame = scores()
    # Every set of make_scores holds the texts "prompt 0" ... "prompt 11".
    assert shared_prompts(frame, "validation", ["pickv2"]) == (12, {"pickv2": 12})
    apart = frame.assign(
        prompt=frame["prompt"].where(
            frame["prompt_set"] != "validation", "held-out " + frame["prompt"]
        )
    )
    apart.loc[(apart["prompt_set"] == "pickv2") & (apart["prompt_id"] == 3), "prompt"] = (
        "held-out prompt 3"
    )
    n, shared = shared_prompts(apart, "validation", ["pickv2", "editing"])
    assert (n, shared) == (12, {"pickv2": 1})
    name = labeller({"pickv2": "PickV2"})
    assert "of its 12 prompts, 1 with PickV2" in overlap_sentence(n, shared, name)
    disjoint = apart[apart["prompt"] != "held-out prompt 3"]
    assert shared_prompts(disjoint, "validation", ["pickv2"]) == (11, {})
    assert overlap_sentence(11, {}, name) == (
        "The validation set shares no prompt with the test sets."
    )


def test_the_paper_table_row_of_a_method_is_its_picked_steps_own_row() -> None:
    frame = scores()
    chosen = pick_steps(frame, CANDIDATES, "validation", "pick")
    common = {"rewards": ["pick"], "prompt_sets": ["pickv2"], "n_boot": 200}
    table = {"table1": {"title": "Table 1", "methods": ["sft", "dspo"]}}
    tables = build_tables(
        frame,
        ["sft", "dspo"],
        paper_tables=table,
        paper_scores=use_picked(frame, picked_rows(chosen)),
        paper_note="picked note",
        **common,
    )
    # The step's own row: the kept model scored as a method of its own.
    own = build_tables(frame, ["sft", "dspo@2"], **common)["win_rates"][0]
    paper = tables["table1"][0].set_index("method")
    step_row = own.set_index("method").loc["dspo@2"]
    for column in ("win_rate", "ci_low", "ci_high", "p_value", "n_prompts"):
        assert paper.loc["dspo", column] == step_row[column], column
    # The other tables keep the final models; the note closes the paper table only.
    final = tables["win_rates"][0].set_index("method").loc["dspo", "win_rate"]
    assert final != paper.loc["dspo", "win_rate"]
    assert tables["table1"][1].rstrip().endswith("picked note")
    assert "picked note" not in tables["win_rates"][1]


def test_the_tables_command_writes_the_choice_and_uses_it(tmp_path) -> None:
    """`dspo tables` as the tables rule calls it, with the step choice's settings
    (rules/common.smk: tables_config)."""
    import json

    from dspo.cli.commands import main

    frame = scores()
    files = []
    for model, rows in frame.groupby("model"):
        files.append(tmp_path / f"{model}.parquet")
        rows.to_parquet(files[-1], index=False)
    params = {
        "methods": ["sft", "dspo"],
        "rewards": ["pick"],
        "prompt_sets": ["pickv2"],
        "labels": {},
        "bootstrap": {"samples": 100, "seed": 0},
        "groups": {"dspo": ["dspo", 0], "sft": ["sft", 0]},
        "paper_tables": {"table1": {"title": "Table 1", "methods": ["sft", "dspo"]}},
        "step_selection": {
            "prompt_set": "validation",
            "reward": "pick",
            "candidates": {"dspo": {"2": "dspo@2", "4": "dspo"}, "sft": {"4": "sft"}},
        },
    }
    out = tmp_path / "tables"
    args = ["tables", "--params", json.dumps(params), "--out", str(out), "--scores"]
    main([*args, *map(str, files)])
    chosen = pd.read_csv(out / "step_selection.csv")
    assert chosen.loc[chosen["picked"], "row"].tolist() == ["dspo@2", "sft"]
    # make_scores gives both sets the same prompt texts: the table says so.
    assert "of its 12 prompts, 12 with pickv2" in (out / "step_selection.md").read_text()
    assert "dspo step 2 of 4" in (out / "table1.md").read_text()
    paper = pd.read_csv(out / "table1.csv").set_index("method")
    final = pd.read_csv(out / "win_rates.csv").set_index("method")
    assert paper.loc["dspo", "win_rate"] > final.loc["dspo", "win_rate"]
    assert paper.loc["sft", "win_rate"] == final.loc["sft", "win_rate"]
