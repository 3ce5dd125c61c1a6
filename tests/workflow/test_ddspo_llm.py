"""The DDSPO rules with the LLM degrader selected (config/presets/ddspo-llm.yaml): planned
by dry runs, and the two commands they chain run on a tiny random Llama."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import yaml

from dspo.cli.commands import main
from tests.data.llm_standin import write_tiny_llama
from tests.workflow_run import REPO, SMOKE, planned_jobs, snakemake

LLM_PRESET = REPO / "config/presets/ddspo-llm.yaml"


def test_sd15_with_the_llm_degrader_fetches_it_and_degrades_before_sampling(
    tmp_path: Path,
) -> None:
    configs = [str(REPO / "config/presets/sd15.yaml"), str(LLM_PRESET)]
    result = snakemake("-n", "all", "--printshellcmds", "--configfile", *configs, cwd=tmp_path)
    jobs = planned_jobs(result.stdout)
    # One more hub artefact than sd15 alone (23 with the binding sets, BLIP, Inception and the
    # validation captions): the LLM.
    assert jobs["ddspo_degrade"] == 1 and jobs["fetch_item"] == 24 and jobs["ddspo_part"] == 32
    assert "results/fetch/items/ddspo.degrader.json" in result.stdout
    degrade = re.findall(r"dspo ddspo-degrade --params '(\{.*?\})'", result.stdout)
    assert len(degrade) == 1 and set(json.loads(degrade[0])) == {"prompts", "seed", "degrader"}
    assert json.loads(degrade[0])["degrader"]["model"] == "meta-llama/Meta-Llama-3-8B-Instruct"
    parts = [line for line in result.stdout.splitlines() if "dspo ddspo-part" in line]
    assert len(parts) == 32
    assert all("--degraded results/data/ddspo_degraded.parquet" in line for line in parts)


def test_word_dropping_plans_no_llm_and_a_missing_local_model_is_named(tmp_path: Path) -> None:
    result = snakemake("-n", "all", "--printshellcmds", "--configfile", str(SMOKE), cwd=tmp_path)
    assert planned_jobs(result.stdout)["ddspo_part"] >= 1
    assert "ddspo_degrade" not in result.stdout and "--degraded" not in result.stdout
    # The LLM's defaults are not in word dropping's settings: adding them reran no part.
    settings = re.findall(r"dspo ddspo-part --part \d+ --params '(\{.*?\})'", result.stdout)
    assert settings and all(
        json.loads(s)["degrader"]
        == {"kind": "drop_words", "min_fraction": 0.4, "max_fraction": 0.7}
        for s in settings
    )
    missing = tmp_path / "llm.yaml"
    missing.write_text(yaml.safe_dump({"ddspo": {"degrader": {"kind": "llm", "model": "m/"}}}))
    result = snakemake(
        "-n", "all", "--configfile", str(SMOKE), str(missing), cwd=tmp_path, check=False
    )
    assert result.returncode != 0 and "ddspo.degrader.model: local model 'm/'" in result.stdout


def test_the_degrade_command_feeds_the_part_command(
    tiny_model: Path, tiny_pairs: pd.DataFrame, tmp_path: Path
) -> None:
    """What rule ddspo_degrade runs, then rule ddspo_part with --degraded, on the stand-ins."""
    llm = write_tiny_llama(tmp_path / "llm")
    pairs = tmp_path / "pairs.parquet"
    tiny_pairs.to_parquet(pairs)
    degrader = yaml.safe_load((REPO / "config/config.yaml").read_text())["ddspo"]["degrader"]
    degrader |= {"kind": "llm", "model": str(llm), "dtype": "float32", "max_new_tokens": 6}
    cfg = {"prompts": 3, "seed": 0, "steps": 2, "guidance": 2.0, "batch_size": 2}
    cfg["degrader"] = degrader
    table, report = tmp_path / "degraded.parquet", tmp_path / "degraded.json"
    main(
        ["ddspo-degrade", "--params", json.dumps(cfg), "--input", str(pairs)]
        + ["--cache", str(tmp_path / "cache"), "--out", str(table), "--report", str(report)]
    )
    assert json.loads(report.read_text())["prompts"] == 3
    out = tmp_path / "part0"
    main(
        ["ddspo-part", "--params", json.dumps(cfg), "--input", str(pairs)]
        + ["--base", str(tiny_model), "--out", str(out), "--degraded", str(table)]
    )
    made = pd.read_parquet(out / "pairs.parquet", columns=["caption", "caption_l"])
    degraded = pd.read_parquet(table)
    assert dict(zip(made["caption"], made["caption_l"], strict=True)) == dict(
        zip(degraded["prompt"], degraded["degraded"], strict=True)
    )
