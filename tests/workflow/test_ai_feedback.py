"""AI feedback through the workflow: the smoke preset with the ai-feedback preset on top (two
rounds of DSPO on generated pairs, a few prompts), run once for this module on a copy of the
shared smoke run; what a changed labelling reward reruns; and the sd15 overlay's plan (two
methods of two rounds each, sharing the base model's labelled samples) and budget."""

from __future__ import annotations

import json
import re
import subprocess
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.workflow_run import REPO, SMOKE, copy_run, planned_jobs, snakemake

PRESETS = REPO / "config" / "presets"
AI_FEEDBACK = PRESETS / "ai-feedback.yaml"
# Twelve of the toy world's training captions: each round's pairs are made in seconds. The
# smoke preset's kept step and image quality are left out: the shared smoke run tests them,
# and here they would add a dozen jobs that have nothing to do with rounds. DSPO alone takes
# the rounds: Diffusion-DPO's two would run the same rules for another method (17 jobs, a
# third of the run); the sd15 overlay's plan below holds both methods' rounds and what they
# share.
SMALL = {
    "name": "ai-feedback-smoke",
    "pairs": {"source": {"prompts": {"kind": "toy", "limit": 12}}},
    "methods": {"dspo": {"training": {"evaluate_steps": []}}, "diffusion_dpo": None},
    "evaluation": {
        "step_selection": None,
        "quality": None,
        "tables": {"ai_feedback": {"methods": ["dspo", "dspo@round2"]}},
    },
}


def _configs(tmp: Path, *extra: dict) -> list[str]:
    files = [str(SMOKE), str(AI_FEEDBACK)]
    for i, overlay in enumerate([SMALL, *extra]):
        path = tmp / f"overlay{i}.yaml"
        path.write_text(yaml.safe_dump(overlay))
        files.append(str(path))
    return files


@pytest.fixture(scope="module")
def ai_feedback_run(smoke_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the shared smoke run carried on with the ai-feedback preset: the toy world,
    the base model and its images stay; the generated pairs, the rounds and what reads them
    run."""
    workdir = copy_run(smoke_run, tmp_path_factory.mktemp("ai-feedback") / "run")
    snakemake("--cores", "2", "all", "--configfile", *_configs(workdir), cwd=workdir)
    return workdir


def test_two_rounds_run_end_to_end(ai_feedback_run: Path) -> None:
    run = ai_feedback_run
    # Round 1 learns from the base model's labelled samples, round 2 from round 1's.
    for sampled in ("base", "dspo"):
        labelled = pd.read_parquet(run / f"results/data/generated/{sampled}/labels/part0.parquet")
        assert len(labelled) == 12 and set(labelled["label_0"]) <= {0.0, 0.5, 1.0}
    record = json.loads((run / "results/models/dspo@round2/dspo_config.json").read_text())
    assert record["config"]["data"] == "generated_dspo"
    # ... starting from round 1's weights, as its model card says.
    card = (run / "results/models/dspo@round2/README.md").read_text()
    assert 'base_model: "results/models/dspo"' in card
    wins = pd.read_csv(run / "results/tables/win_rates.csv")
    assert {"dspo", "dspo@round2"} <= set(wins["method"])
    # Each later round is a row of the attribute-binding table too, as of every other table.
    binding = pd.read_csv(run / "results/tables/attribute_binding.csv")
    assert "dspo@round2" in set(binding["model"])
    table = (run / "results/tables/ai_feedback.md").read_text()
    assert "| DSPO round 2 |" in table
    # The labelling reward is named in every table, with the rewards held out from it.
    for name in ("win_rates", "mean_scores", "head_to_head", "ai_feedback"):
        text = (run / f"results/tables/{name}.md").read_text()
        assert (
            "labelled by Alignment" in text
            and "Held-out rewards (not used to label): Oracle, Aesthetics" in text
        )
        assert "reference: the previous round's model" in text
    summary = json.loads((run / "results/summary.json").read_text())
    assert summary["rounds"]["reward"] == "oracle"
    judged = {(c["model"], c["opponent"], c["reward"]) for c in summary["rounds"]["comparisons"]}
    assert ("dspo@round2", "dspo", "oracle") in judged and (
        "dspo@round2",
        "base",
        "oracle",
    ) in judged
    assert ("dspo@round2", "dspo", "alignment") in judged


def test_the_readme_block_is_written_from_the_run(ai_feedback_run: Path, tmp_path: Path) -> None:
    from dspo.evaluation.rounds import END, START

    readme = tmp_path / "README.md"
    readme.write_text(f"{START}\n{END}\n")
    result = subprocess.run(
        ["dspo", "readme-results", "--rounds", "--input",
         str(ai_feedback_run / "results/summary.json"), "--out", str(readme)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    text = readme.read_text()
    assert "preset `ai-feedback-smoke`" in text
    assert "DSPO round 2" in text and ("beats DSPO" in text or "DSPO under Oracle" in text)


def test_nothing_reruns_without_an_edit(ai_feedback_run: Path, tmp_path: Path) -> None:
    result = snakemake("-n", "all", "--configfile", *_configs(tmp_path), cwd=ai_feedback_run)
    assert "Nothing to be done" in result.stdout


def test_a_new_labelling_reward_relabels_and_reruns_downstream_only(
    ai_feedback_run: Path, tmp_path: Path
) -> None:
    edit = {"pairs": {"source": {"label": {"reward": "oracle"}}}}
    result = snakemake("-n", "all", "--configfile", *_configs(tmp_path, edit), cwd=ai_feedback_run)
    jobs = planned_jobs(result.stdout)
    # Upstream of the labels: nothing (the base model's images are labelled again as they are).
    for upstream in ("toy_world", "base_model", "generated_prompts", "prompt_set"):
        assert upstream not in jobs
    sampled = re.findall(
        r"rule generated_images:\n(?:    .*\n)*?    wildcards: model=([^,\s]+)", result.stdout
    )
    assert sampled == ["dspo"]
    # Downstream: the base's labels, every model trained on them and what follows.
    assert jobs["generated_labels"] == 2 and jobs["generated_images"] == 1
    assert jobs["train"] == 2 and jobs["cache"] == 2 and jobs["tables"] == 1
    # The base model's images stay: every image set sampled again is a retrained model's.
    regenerated = re.findall(
        r"rule generate:\n(?:    .*\n)*?    wildcards: model=([^,\s]+)", result.stdout
    )
    assert len(regenerated) == jobs["generate"] and "base" not in regenerated


def test_the_sd15_overlay_plans_two_rounds_from_the_hub(tmp_path: Path) -> None:
    presets = [str(PRESETS / "sd15.yaml"), str(PRESETS / "sd15-ai-feedback.yaml")]
    result = snakemake("-n", "all", "--configfile", *presets, cwd=tmp_path)
    jobs = planned_jobs(result.stdout)
    # Sampled: the base for round 1, each method's round 1 for its round 2; 16 parts each.
    assert jobs["generated_images"] == jobs["generated_labels"] == 3 * 16
    assert jobs["train"] == 4 and jobs["generated_pairs"] == 2 and jobs["generated_prompts"] == 1
    assert jobs["generate"] == jobs["score"] == 5  # the base and four trained models
    assert "results/fetch/items/generated.prompts.json" in result.stdout  # Parti, downloaded
    assert "prompt_set.parti" not in result.stdout  # the training prompts are not evaluated


def test_the_budget_counts_each_rounds_samples() -> None:
    from dspo.bench.budget import budget
    from dspo.config.step import workflow_config

    config = workflow_config([PRESETS / "sd15.yaml", PRESETS / "sd15-ai-feedback.yaml"])
    rows = {row["stage"]: row for row in budget(config, "h100", 0.4)["stages"]}
    images = rows["AI-feedback images (generated pair source)"]
    assert images["items"].startswith("3 models x 13,056 images")
    # 50 steps with guidance: 100 forwards of 0.803 TFLOP per image, 3 x 13,056 images.
    assert images["flops"] == pytest.approx(3 * 13056 * 100 * 0.803e12, rel=0.02)
    assert "cache of generated_dspo" in rows and rows["cache of pairs"]["items"].startswith(
        "45,696"
    )
    assert Counter(r.startswith("cache of") for r in rows)[True] == 3
