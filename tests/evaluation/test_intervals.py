"""Every caption, plot note and table note says what its intervals resample, in one wording
(dspo/evaluation/intervals.py): training replicates crossed with prompts where a model has
several, else prompts with their seeds nested."""

from __future__ import annotations

import re
import types
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd
from PIL import Image

from dspo.evaluation.intervals import interval_sentence
from dspo.evaluation.plots import plot_mean_scores, plot_win_rates
from dspo.evaluation.publish import win_rates_section
from dspo.evaluation.summary import render_block
from dspo.evaluation.sweeps import relabel_groups, write_sweep
from dspo.evaluation.tables import write_tables

REPO = Path(__file__).resolve().parents[2]
PROMPTS = "prompts (the seeds of a prompt resampled together"


def scores(replicates: dict[str, int], n_prompts: int = 8, n_seeds: int = 2) -> pd.DataFrame:
    """The base model and each named model trained ``replicates[name]`` times, random scores."""
    rng = np.random.default_rng(0)
    common = {
        "prompt_set": "p",
        "prompt_id": np.repeat(np.arange(n_prompts), n_seeds),
        "prompt": "x",
        "seed": np.tile(np.arange(n_seeds), n_prompts),
        "guidance": 2.0,
        "reward": "r",
    }
    frames = []
    for model, count in {"base": 1, **replicates}.items():
        for k in range(count):
            score = rng.normal(0, 1, n_prompts * n_seeds)
            frames.append(pd.DataFrame({"model": model, "replicate": k, **common, "score": score}))
    return pd.concat(frames, ignore_index=True)


def flat(text: str) -> str:
    return " ".join(text.split())


def test_the_sentence_names_replicates_only_where_there_are_several() -> None:
    once = interval_sentence(1)
    assert once == f"Intervals: 95 % percentile bootstrap over {PROMPTS})."
    assert "replicate" not in once
    thrice = interval_sentence([3, 3], "Error bars", n_boot=500)
    assert thrice.startswith("Error bars: 95 % percentile bootstrap over the training replicates")
    assert f"(3 per model) crossed with the {PROMPTS}, 500 resamples)." in thrice
    assert "one replicate" not in thrice
    mixed = interval_sentence(np.array([1, 2, 3]), ci=0.9)
    assert "90 %" in mixed and "(2 to 3 per model)" in mixed
    assert mixed.endswith("; a model with one replicate resamples its prompts only.")


def test_table_notes_say_replicates_with_replicates_and_prompts_without(tmp_path: Path) -> None:
    write_tables(
        scores({"m": 3, "once": 1}), tmp_path / "a", ["m", "once"], ["r"], ["p"], n_boot=50
    )
    write_tables(scores({"m": 1}), tmp_path / "b", ["m"], ["r"], ["p"], n_boot=50)
    with_replicates = interval_sentence([3, 1], n_boot=50)
    assert "training replicates (3 per model)" in with_replicates
    for table in ("win_rates", "mean_scores", "head_to_head"):
        assert with_replicates in flat((tmp_path / "a" / f"{table}.md").read_text()), table
        note = flat((tmp_path / "b" / f"{table}.md").read_text())
        assert (
            interval_sentence(1, n_boot=50) in note and "over the training replicates" not in note
        )


def test_plot_notes_say_what_the_error_bars_resample(tmp_path: Path) -> None:
    """The note under the panels is also the PNG's "Description" text keyword."""
    for replicates in (3, 1):
        frame = scores({"m": replicates})
        folder = tmp_path / str(replicates)
        write_tables(frame, folder, ["m"], ["r"], ["p"], n_boot=50)
        wins = pd.read_csv(folder / "win_rates.csv")
        means = pd.read_csv(folder / "mean_scores.csv")
        plot_win_rates(wins, folder / "w.png", ["m"], ["r"], ["p"])
        plot_mean_scores(means, folder / "s.png", ["m"], ["r"], ["p"])
        win_note = Image.open(folder / "w.png").text["Description"]
        mean_note = Image.open(folder / "s.png").text["Description"]
        assert win_note.startswith(interval_sentence(replicates, "Error bars"))
        assert mean_note == interval_sentence([1, replicates], "Error bars")
        assert ("training replicates" in win_note) == (replicates > 1)
        assert ("training replicates" in mean_note) == (replicates > 1)


def test_sweep_notes_say_what_the_bands_resample(tmp_path: Path) -> None:
    raw = scores({"lam-1": 1, "lam-1-r1": 1})
    raw["replicate"] = 0
    grouped = relabel_groups(raw, {"lam-1": ["lam-1", 0], "lam-1-r1": ["lam-1", 1]})
    spec = {"method": "dspo", "keys": ["params.lam"], "points": {"lam-1": 1.0}, "compare": []}
    csv, md, png = write_sweep(grouped, "lam", spec, tmp_path, tmp_path, "r", n_boot=40)
    assert interval_sentence(2, n_boot=40) in flat(md.read_text())
    note = Image.open(png).text["Description"]
    assert interval_sentence(2, "Bands") in note and "training replicates (2 per model)" in note


def test_model_card_and_readme_block_say_what_the_interval_resamples(tmp_path: Path) -> None:
    frame = scores({"m": 3})
    write_tables(frame, tmp_path, ["m"], ["r"], ["p"], n_boot=50)
    assert interval_sentence(3) in win_rates_section(tmp_path / "win_rates.csv", "m")
    cell = {"prompt_set": "p", "guidance": 2.0, "win_rate": 0.5, "ci_low": 0.4, "ci_high": 0.6}
    machine = {"cpu": "cpu", "cores": 2, "torch": "2", "dspo": "0", "source_key": "k"}
    summary = {"labels": {}, "method": "m", "reward": "r", "preset": "toy", "machine": machine}
    summary |= {"stages": {}}
    for replicates in (1, 3):
        block = render_block({**summary, "headline": [{**cell, "n_replicates": replicates}]})
        assert interval_sentence(replicates) in block
        assert ("training replicates" in block) == (replicates > 1)


def test_every_caption_of_the_tables_step_states_its_intervals_from_the_helper() -> None:
    """Each caption of a table or plot with intervals renders a sentence the workflow computes
    with the helper (rules/common.smk: interval_captions) and passes as the step's params."""
    rule = (REPO / "rules" / "report.smk").read_text().split("rule tables:")[1].split("\nrule ")[0]
    captions = sorted(set(re.findall(r'caption="\.\./(workflow/report/\w+\.rst)"', rule)))
    # A table of point figures with no interval: the step choice (validation means). The
    # image-quality and DDSPO tables' caption states the intervals of the DDSPO table's B-VQA.
    without = {"workflow/report/step_selection.rst"}
    assert without <= set(captions)
    for caption in without:
        assert "interval" not in (REPO / caption).read_text(), caption
    captions = [caption for caption in captions if caption not in without]
    assert len(captions) == 9
    keys = ("methods", "models", "sweeps", "methods_plot", "models_plot", "sweeps_plot")
    params = types.SimpleNamespace(intervals={key: f"<sentence {key}>" for key in keys})
    snakemake = types.SimpleNamespace(params=params, config={}, wildcards={})
    for caption in captions:
        text = jinja2.Template((REPO / caption).read_text()).render(snakemake=snakemake)
        assert re.search(r"<sentence \w+>", text), caption
        # No wording of its own: what is resampled comes from the helper's sentence only.
        assert "bootstrap" not in text and "resampl" not in text, caption
