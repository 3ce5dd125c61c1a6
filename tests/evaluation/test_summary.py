"""The run summary and the README block written from it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from dspo.evaluation.intervals import interval_sentence
from dspo.evaluation.summary import (
    END,
    START,
    build_summary,
    render_block,
    replace_block,
    stage_times,
    wall_seconds,
    write_readme,
)


def _win_rates(path: Path) -> Path:
    rows = []
    for prompt_set in ("heldout", "unseen"):
        for guidance in (2.0, 4.0):
            for method, rate in (("dspo", 0.7), ("sft", 0.6)):
                rows.append(
                    {
                        "prompt_set": prompt_set,
                        "guidance": guidance,
                        "reward": "oracle",
                        "method": method,
                        "win_rate": rate + guidance / 100,
                        "ci_low": rate - 0.1,
                        "ci_high": rate + 0.1,
                        "n_prompts": 48,
                        "n_replicates": 3,
                        "replicate_sd": 0.02,
                    }
                )
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _benchmark(path: Path, seconds: float, cpu: float | None = None) -> Path:
    """A Snakemake benchmark file; with ``cpu``, its columns as Snakemake 9 writes them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if cpu is None:
        path.write_text(f"s\th:m:s\tmax_rss\n{seconds}\t0:00:01\t100\n")
    else:
        header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time"
        path.write_text(f"{header}\n{seconds}\t0:00:01\t100\t1\t1\t1\t0\t0\t90.0\t{cpu}\n")
    return path


def test_summary_holds_the_headline_machine_and_stages(tmp_path: Path) -> None:
    bench = [
        _benchmark(tmp_path / "b" / "train" / "dspo.tsv", 60.5),
        _benchmark(tmp_path / "b" / "train" / "sft.tsv", 30.0),
        _benchmark(tmp_path / "b" / "base_model" / "base.tsv", 400.0),
    ]
    summary = build_summary(
        _win_rates(tmp_path / "w.csv"),
        preset="default",
        method="dspo",
        reward="oracle",
        labels={"heldout": "Held-out captions", "dspo": "DSPO"},
        benchmarks=bench,
    )
    assert [c["prompt_set"] for c in summary["headline"]] == ["heldout"] * 2 + ["unseen"] * 2
    assert summary["headline"][1]["win_rate"] == pytest.approx(0.74)
    assert summary["stages"]["train"] == {"jobs": 2, "seconds": 90.5, "longest": 60.5}
    assert summary["machine"]["cores"] >= 1 and summary["machine"]["source_key"]
    block = render_block(summary)
    assert block.startswith(START) and block.rstrip().endswith(END)
    assert "| Held-out captions | 72.0 [60.0, 80.0] | 74.0 [60.0, 80.0] |" in block
    # What the intervals resample, in the wording of every caption and note: 3 replicates.
    assert interval_sentence(3) in block
    assert "base_model 400 s (1 job), train 90 s (2 jobs)" in block
    # Wall time: from the first job's start (end minus its seconds) to the last job's end.
    for path, end in zip(bench, (1000.0, 1100.0, 900.0), strict=True):
        os.utime(path, (end, end))
    assert wall_seconds(bench) == pytest.approx(1100.0 - (900.0 - 400.0))
    summary["wall_seconds"] = wall_seconds(bench)
    assert "Wall time of the workflow: 10 min 0 s." in render_block(summary)
    with pytest.raises(ValueError, match="no rows for method 'mapo'"):
        build_summary(tmp_path / "w.csv", preset="d", method="mapo", reward="oracle", labels={})


def test_a_rerun_is_kept_in_the_summary_and_compared_cell_by_cell(tmp_path: Path) -> None:
    def summary_of(rate_shift: float, name: str) -> Path:
        wins = pd.read_csv(_win_rates(tmp_path / f"{name}.csv"))
        wins["win_rate"] += rate_shift
        wins.to_csv(tmp_path / f"{name}.csv", index=False)
        built = build_summary(
            tmp_path / f"{name}.csv", preset="toy", method="dspo", reward="oracle", labels={}
        )
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(built))
        return path

    first, rerun = summary_of(0.0, "first"), summary_of(-0.05, "rerun")
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{START}\n{END}\n")
    assert write_readme(first, readme, rerun, "with 2 threads a job")
    block = readme.read_text()
    # dspo at guidance 4: 0.74 here, 0.69 there, inside [0.6, 0.8].
    assert "| heldout | 67.0 (-5.0, inside) | 69.0 (-5.0, inside) |" in block
    assert "The same run with 2 threads a job" in block
    assert "Largest move 5.0 points; 4 of 4 cells inside the intervals above." in block
    # The rerun now lives in the first summary: the block is a function of that file alone.
    kept = json.loads(first.read_text())
    assert kept["rerun"]["label"] == "with 2 threads a job"
    assert render_block(kept) in block
    far = summary_of(-0.2, "far")
    write_readme(first, readme, far, "elsewhere")
    assert "**outside**" in readme.read_text() and "0 of 4 cells inside" in readme.read_text()
    other = json.loads(far.read_text()) | {"preset": "sd15"}
    far.write_text(json.dumps(other))
    with pytest.raises(ValueError, match="not a run of"):
        write_readme(first, readme, far, "x")


def test_block_replacement_needs_exactly_one_block() -> None:
    text = f"intro\n{START}\nold\n{END}\nrest\n"
    assert replace_block(text, f"{START}\nnew\n{END}\n") == f"intro\n{START}\nnew\n{END}\nrest\n"
    with pytest.raises(ValueError, match="exactly one results block"):
        replace_block("no block here", "x")


def test_stage_times_add_each_stages_cpu_time_where_snakemake_wrote_it(tmp_path: Path) -> None:
    bench = [
        _benchmark(tmp_path / "train" / "dspo.tsv", 60.0, cpu=50.25),
        _benchmark(tmp_path / "train" / "sft.tsv", 30.0, cpu=20.0),
        _benchmark(tmp_path / "score" / "base.tsv", 10.0, cpu=4.0),
    ]
    stages = stage_times(bench)
    assert stages["train"] == {"jobs": 2, "seconds": 90.0, "longest": 60.0, "cpu_seconds": 70.2}
    line = render_block({**_bare_summary(), "stages": stages})
    assert "(1.7 and 1.2 min in all;" in line
    assert "train 90 s (CPU 70 s, 2 jobs), score 10 s (CPU 4 s, 1 job)." in line
    # A stage without CPU times (an older Snakemake's files): wall times only, for every stage.
    stages["score"].pop("cpu_seconds")
    assert "train 90 s (2 jobs), score 10 s (1 job)." in render_block(
        {**_bare_summary(), "stages": stages}
    )


def _bare_summary() -> dict:
    machine = {"cpu": "x", "cores": 2, "torch": "t", "dspo": "d", "source_key": "k"}
    cell = {"prompt_set": "heldout", "guidance": 2.0, "win_rate": 0.5, "ci_low": 0.4,
            "ci_high": 0.6, "n_replicates": 1}  # fmt: skip
    return {"preset": "toy", "method": "dspo", "reward": "oracle", "labels": {},
            "headline": [cell], "machine": machine, "stages": {}, "wall_seconds": None}  # fmt: skip


def test_stage_times_refuses_other_files(tmp_path: Path) -> None:
    bad = tmp_path / "train" / "x.tsv"
    bad.parent.mkdir()
    bad.write_text("a\tb\n1\t2\n")
    with pytest.raises(ValueError, match="x.tsv"):
        stage_times([bad])


def test_readme_results_block_is_what_the_kept_summary_writes() -> None:
    """The README's figures come from docs/run_summary.json (`make readme-results`)."""
    root = Path(__file__).resolve().parents[2]
    summary = json.loads((root / "docs" / "run_summary.json").read_text())
    readme = (root / "README.md").read_text()
    expected = render_block(summary)
    assert replace_block(readme, expected) == readme, (
        "README.md's results block differs from what `make readme-results` writes for "
        "docs/run_summary.json"
    )
    # The kept summary is a default run's, with replicates and every stage timed.
    assert summary["preset"] == "toy"
    assert min(c["n_replicates"] for c in summary["headline"]) >= 3
    assert summary["stages"] and summary["wall_seconds"]


def test_readme_describes_the_default_run_as_configured() -> None:
    """The README's sentence on what the default run does follows config/config.yaml."""
    import yaml

    from dspo.config import experiments

    root = Path(__file__).resolve().parents[2]
    config = yaml.safe_load((root / "config" / "config.yaml").read_text())
    readme = " ".join((root / "README.md").read_text().split())
    trained = len(experiments.trained_models(config))
    pretrain = config["base_model"]["pretrain"]
    evaluation = config["evaluation"]
    image_sets = len(evaluation["prompt_sets"]) + bool(evaluation.get("editing"))
    training = config["training"]
    expected = [
        f"({trained} fine-tuning runs of {training['steps']} steps of "
        f"{training['pairs_per_step']} pairs)",
        f"pre-trains the base model for {pretrain['unet']['steps']:,} steps on "
        f"{pretrain['n_images']:,} renders",
        f"samples {trained + 1} models x {image_sets} image sets x "
        f"{config['world']['prompts_per_set']} prompts x {len(evaluation['seeds'])} seeds x "
        f"{len(evaluation['guidance'])} guidance scales",
    ]
    for phrase in expected:
        assert phrase in readme, f"README.md should say: {phrase}"
