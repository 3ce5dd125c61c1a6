"""The step choice end to end on the smoke run: DSPO keeps its step 2, both candidates are
sampled and scored on the validation set and the test sets, and the paper tables show the
picked step's own row."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from dspo.evaluation.statistics import load_scores, win_rates


def test_the_paper_tables_use_the_step_picked_on_the_validation_set(smoke_run: Path) -> None:
    selection = pd.read_csv(smoke_run / "results/tables/step_selection.csv")
    assert set(selection["prompt_set"]) == {"validation"} and set(selection["reward"]) == {"oracle"}
    dspo = selection[selection["model"] == "dspo"]
    assert dspo[["step", "row"]].values.tolist() == [[2, "dspo@2"], [4, "dspo"]]
    assert dspo["picked"].sum() == 1 and (selection.groupby("model")["picked"].sum() == 1).all()
    best = dspo.loc[dspo["mean"].idxmax()]
    step, picked = int(best["step"]), best["row"]
    assert dspo.loc[dspo["picked"], "row"].item() == picked

    # The kept step is a loadable model with its card, kept in the run folder after the end.
    kept = smoke_run / "results/train/dspo/steps/step-000002"
    assert json.loads((kept / "dspo_config.json").read_text())["step"] == 2
    assert "# dspo@2" in (smoke_run / "results/models/dspo@2/README.md").read_text()

    # The picked step's own row: its scores on the test sets against the base model's.
    sets = ("pickv2", "editing")
    files = [smoke_run / f"results/scores/{m}/{s}.parquet" for m in ("base", picked) for s in sets]
    scores = load_scores(files)
    own = win_rates(scores.replace({"model": {picked: "dspo"}}), "base", n_boot=100, seed=0)
    table = pd.read_csv(smoke_run / "results/tables/table1.csv")
    keys = ["prompt_set", "guidance", "reward", "method"]
    merged = table[table["method"] == "dspo"].merge(own, on=keys, suffixes=("", "_own"))
    assert len(merged) == len(table[table["method"] == "dspo"]) > 0
    for column in ("win_rate", "ci_low", "ci_high"):
        assert (merged[column] - merged[f"{column}_own"]).abs().max() < 1e-6, column

    note = f"dspo step {step} of 4"
    assert note in (smoke_run / "results/tables/table1.md").read_text()
    # The validation set is in no table of test sets.
    for name in ("table1", "win_rates", "mean_scores"):
        assert "validation" not in set(
            pd.read_csv(smoke_run / f"results/tables/{name}.csv")["prompt_set"]
        )
