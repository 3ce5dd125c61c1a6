"""The Snakemake workflow: lint, config validation, the paper DAG, the smoke preset end to end."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file, save_file

from tests.workflow_run import REPO, SMOKE, planned_jobs, snakemake

# The toy world's pairs file (dspo.toy.world.build_world), relative to its folder.
TOY_PAIRS_FILE = "train-00000-of-00001.parquet"
ABLATIONS = ["dspo_ref", "dspo_e", "dspo_nodup", "dspo_lora"]
METHODS_OF_SMOKE = [
    "sft", "diffusion_dpo", "diffusion_kto", "mapo", "dspo", "dspo_ref", "dspo_e",
    "dspo_nodup", "dspo_lora", "ddspo",
]  # fmt: skip


def test_lint_is_clean() -> None:
    result = snakemake("--lint")
    assert "good condition" in result.stdout


def test_snakefile_and_rules_are_snakefmt_formatted() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "snakefmt", "--check", "Snakefile", "rules"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"training": {"learnig_rate": 1.0}}, "learnig_rate"),
        ({"training": {"steps": "many"}}, "many"),
        ({"methods": {"dspo": {"objective": "dspo", "parms": {}}}}, "parms"),
    ],
)
def test_bad_config_fails_naming_the_key(override: dict, named: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(override))
    result = snakemake("-n", "all", "--configfile", str(path), cwd=tmp_path, check=False)
    assert result.returncode != 0
    assert named in result.stdout


def planned_models(output: str, rule: str, wildcard: str = "model") -> list[str]:
    """The ``wildcard`` of each planned job of ``rule`` in a dry run's output."""
    pattern = rf"rule {rule}:\n(?:    .*\n)*?    wildcards: {wildcard}=([^,\s]+)"
    return re.findall(pattern, output)


def tables_params(output: str) -> dict:
    """The tables job's settings (its params, printed with its shell command: ``-p``)."""
    line = next(line for line in output.splitlines() if "dspo tables --params" in line)
    return json.loads(re.search(r"--params '(\{.*?\})' --scores", line).group(1))


def assert_steps_chosen(output: str, steps: list[int], trained: int) -> None:
    """Every trained model's kept ``steps`` are made, sampled and scored as rows
    ``model@step``, and the tables job picks among them and the last step (2000) on the
    Pick-a-Pic validation captions by PickScore, writing step_selection.{md,csv}."""
    trained_models = planned_models(output, "train", "method")
    kept = {f"{model}@{step}" for model in trained_models for step in steps}
    assert len(kept) == trained * len(steps) and "dspo@" + str(steps[0]) in kept
    assert set(planned_models(output, "step_model")) == kept
    for rule in ("generate", "score"):
        assert kept <= set(planned_models(output, rule)), rule
    assert f"results/scores/dspo@{steps[0]}/pickapic_validation.parquet" in output
    params = tables_params(output)
    choice = params["step_selection"]
    assert (choice["prompt_set"], choice["reward"]) == ("pickapic_validation", "pickscore")
    assert choice["candidates"]["dspo"] == {
        **{str(step): f"dspo@{step}" for step in steps},
        "2000": "dspo",
    }
    assert "results/tables/step_selection.md" in output
    # The validation set is no test set: the tables report the others only.
    assert params["prompt_sets"] == ["pickv2", "parti", "hpsv2", "editing"]
    assert all(
        "pickapic_validation" not in t["prompt_sets"] for t in params["paper_tables"].values()
    )


def test_sd15_preset_plans_the_paper_dag(tmp_path: Path) -> None:
    result = snakemake(
        "-n",
        "all",
        "--printshellcmds",
        "--configfile",
        str(REPO / "config/presets/sd15.yaml"),
        cwd=tmp_path,
    )
    jobs = planned_jobs(result.stdout)
    # Ten trained methods, the released Diffusion-DPO and Diffusion-KTO (imported), the base,
    # and the models of steps 500, 1000 and 1500 of each trained method (the step choice).
    assert jobs["train"] == 10 and jobs["import_model"] == 2 and "edit" not in jobs
    assert jobs["step_model"] == 30 and jobs["editing_set"] == 1
    assert jobs["generate"] == 43 and jobs["score"] == 43
    assert "base_model" not in jobs and "toy_world" not in jobs  # SD1.5 comes from the hub
    # In a bare folder: every hub artefact is downloaded first (rules/fetch.smk), once each.
    # Two of them are the released Diffusion-DPO and Diffusion-KTO models the preset scores.
    # One more is the FID Inception-v3 weights file (a pinned URL) for the Inception Score;
    # four T2I-CompBench's colour, shape and texture prompts and the BLIP VQA model; one the
    # Pick-a-Pic validation captions.
    assert jobs["fetch"] == 1 and jobs["fetch_item"] == 23
    assert jobs["quality"] == 43
    # Attribute binding: three more prompt sets, each model's B-VQA scores, one table.
    assert jobs["prompt_set"] == 7 and jobs["score_binding"] == 43 and jobs["binding_table"] == 1
    assert_steps_chosen(result.stdout, [500, 1000, 1500], trained=10)
    assert_validation_reads(result.stdout, "pickapic_validation", trained=10)


def assert_validation_reads(output: str, prompt_set: str, trained: int) -> None:
    """Every planned train job takes the prompt set's table as an input and hands it to
    `dspo train` (training.validation.from_prompt_set)."""
    table = f"results/data/prompts/{prompt_set}.parquet"
    inputs = re.findall(r"rule train:\n    input: (.*)\n", output)
    assert len(inputs) == trained and all(table in line.split(", ") for line in inputs)
    assert output.count(f"--validation-prompts {table}") == trained


def test_sdxl_preset_imports_the_released_sdxl_dpo(tmp_path: Path) -> None:
    configs = [str(REPO / f"config/presets/{name}.yaml") for name in ("sd15", "sdxl")]
    result = snakemake("-n", "all", "--printshellcmds", "--configfile", *configs, cwd=tmp_path)
    jobs = planned_jobs(result.stdout)
    # The base, ten trained methods, the released SDXL Diffusion-DPO, steps 600 and 700 of each.
    assert jobs["import_model"] == 1 and jobs["train"] == 10 and jobs["generate"] == 32
    assert "dspo import-model --model mhdang/dpo-sdxl-text2image-v1" in result.stdout
    assert jobs["score_binding"] == 32 and jobs["binding_table"] == 1
    assert '"kind": "bvqa", "model": "Salesforce/blip-vqa-base"' in result.stdout
    # DDSPO's Inception Score of every model's images, from the FID Inception-v3.
    assert jobs["quality"] == 32 and '"classifier": "inception"' in result.stdout
    assert_steps_chosen(result.stdout, [600, 700], trained=10)


@pytest.mark.parametrize("preset", ["sd35", "flux"])
def test_flow_matching_presets_plan_the_paper_dag(preset: str, tmp_path: Path) -> None:
    """SD3.5 and FLUX, merged over sd15 as their headers say: the same paper DAG, every
    method trained as LoRA under the family's timestep recipe, sampled with Euler."""
    configs = [str(REPO / f"config/presets/{name}.yaml") for name in ("sd15", preset)]
    result = snakemake("-n", "all", "--printshellcmds", "--configfile", *configs, cwd=tmp_path)
    jobs = planned_jobs(result.stdout)
    # The base, ten trained methods and sd15's steps 500, 1000 and 1500 of each.
    assert jobs["train"] == 10 and jobs["generate"] == 41 and jobs["score"] == 41
    assert "base_model" not in jobs and "toy_world" not in jobs
    assert '"scheduler": "euler"' in result.stdout
    assert '"logit_normal"' in result.stdout and '"rank": 16' in result.stdout


def test_the_80gb_preset_trains_sd15_without_checkpointing(tmp_path: Path) -> None:
    configs = [str(REPO / f"config/presets/{name}.yaml") for name in ("sd15", "sd15-80gb")]
    result = snakemake("-n", "all", "--printshellcmds", "--configfile", *configs, cwd=tmp_path)
    assert planned_jobs(result.stdout)["train"] == 10
    train = [line for line in result.stdout.splitlines() if "-- train --params" in line]
    assert train and all('"gradient_checkpointing": false' in line for line in train)
    assert all('"local_pairs": 8' in line for line in train)


def test_the_ddspo_table_reads_the_binding_table_unless_binding_is_off(tmp_path: Path) -> None:
    def tables_command(*configs: str) -> str:
        args = ["-n", "all", "--printshellcmds", "--configfile", str(SMOKE), *configs]
        lines = snakemake(*args, cwd=tmp_path).stdout.splitlines()
        return next(line for line in lines if "dspo tables " in line)

    assert "--binding results/tables/attribute_binding.csv >" in tables_command()
    off = tmp_path / "off.yaml"
    off.write_text(yaml.safe_dump({"evaluation": {"attribute_binding": None}}))
    assert "--binding" not in tables_command(str(off))


def test_smoke_preset_runs_end_to_end(smoke_run: Path) -> None:
    methods = [
        m
        for m, v in yaml.safe_load((REPO / "config/config.yaml").read_text())["methods"].items()
        if v
    ]
    table = pd.read_csv(smoke_run / "results/tables/win_rates.csv")
    assert sorted(table["method"].unique()) == sorted(methods)
    markdown = (smoke_run / "results/tables/win_rates.md").read_text()
    for label in ("DSPO", "Diff.-DPO", "DDSPO", "DSPO-LoRA", "DSPO-nodup", "DSPO-E", "DSPO-ref"):
        assert f"| {label} |" in markdown
    assert table["win_rate"].between(0, 1).all() and (table["ci_low"] <= table["win_rate"]).all()
    assert "| DSPO-E |" in (smoke_run / "results/tables/table5.md").read_text()
    # Attribute binding: every model's mean B-VQA (the toy oracle asked about each phrase)
    # on the toy binding set, beside its win rate against the base model.
    binding = pd.read_csv(smoke_run / "results/tables/attribute_binding.csv")
    assert sorted(binding["model"]) == sorted(["base", *methods])
    assert set(binding["prompt_set"]) == {"color"} and (binding["n_prompts"] == 4).all()
    assert binding["mean"].between(0, 1).all() and binding["win_rate"].isna().sum() == 1
    binding_md = (smoke_run / "results/tables/attribute_binding.md").read_text()
    assert "| Model | Colour binding B-VQA | Colour binding win % |" in binding_md
    # 11 models x 10 opponents x 3 rewards x 2 image sets (pickv2 and the edits).
    assert len(pd.read_csv(smoke_run / "results/tables/head_to_head.csv")) == 11 * 10 * 3 * 2
    # The toy classifier's Inception Score of every model (2 splits of 4 images: 1 to 2 here),
    # beside the win rates in the DDSPO table, whose rows start as DDSPO's tables do.
    quality = pd.read_csv(smoke_run / "results/tables/image_quality.csv")
    assert len(quality) == 11 and quality["inception_score"].between(1, 2).all()
    ddspo = pd.read_csv(smoke_run / "results/tables/ddspo.csv")
    pickv2 = ddspo[ddspo["prompt_set"] == "pickv2"]
    assert pickv2["model"].tolist()[:3] == ["base", "diffusion_dpo", "ddspo"] and len(pickv2) == 11
    assert pickv2["inception_score"].notna().all() and "oracle_win_rate" in ddspo.columns
    # Beside them, each model's mean B-VQA with its interval: the attribute-binding table's
    # (to the 6 decimals of the ddspo table's CSV).
    shown = pickv2.merge(binding, on=["guidance", "model"])
    assert len(shown) == len(binding)
    for column, source in [("color_bvqa", "mean"), ("color_bvqa_ci_high", "ci_high")]:
        assert np.allclose(shown[column], shown[source], rtol=0, atol=1e-6), column
    assert "| Colour binding B-VQA | IS |" in (smoke_run / "results/tables/ddspo.md").read_text()
    for produced in (
        "results/plots/win_rates.png",
        "results/plots/grid_pickv2.png",
        "results/data/toy/preview.png",
    ):
        assert (smoke_run / produced).stat().st_size > 1000
    pairs_log = (smoke_run / "results/logs/pairs/gather.log").read_text()
    assert '"ties_dropped"' in pairs_log and '"unreadable"' in pairs_log
    counts = json.loads((smoke_run / "results/data/pairs_report.json").read_text())["counts"]
    assert counts["input"] == 200 == sum(n for k, n in counts.items() if k != "input")
    note = f"Training pairs: {counts['kept']} kept of 200 source rows; dropped: "
    assert note in markdown and note in (smoke_run / "results/tables/table6.md").read_text()
    nodup = json.loads((smoke_run / "results/data/pairs_nodup_report.json").read_text())
    assert f"One pair per prompt (nodup): {nodup['counts']['kept']} of {counts['kept']}" in markdown
    # Two pairs parts (smoke preset), each screening one of the toy source's two row groups.
    for part in (0, 1):
        log = (smoke_run / f"results/logs/pairs/part{part}.log").read_text()
        report = json.loads(log[log.index("{") :])
        assert report["units"] == [part, part + 1] and report["input"] == 100
    assert not (smoke_run / "results/data/pairs.parts/0").exists()  # temporary
    # The pair tables refer to the toy world's pairs file; DDSPO's generated pairs keep bytes.
    for table in ("pairs", "pairs_nodup"):
        stored = pq.read_table(smoke_run / f"results/data/{table}.parquet").to_pandas()
        assert "jpg_w" not in stored and set(stored["image_file"]) == {TOY_PAIRS_FILE}
    assert "jpg_w" in pq.read_schema(smoke_run / "results/data/pairs_ddspo.parquet").names
    assert (smoke_run / "results/models/dspo_lora/pytorch_lora_weights.safetensors").exists()
    # Checkpoints were written (checkpoint_every 2 of 4 steps), then dropped once the model was
    # saved; what stays is the finished-run mark, the metrics and the model with its card.
    assert (smoke_run / "results/train/dspo/finished.json").exists()
    assert not (smoke_run / "results/train/dspo/checkpoints").exists()
    assert "library_name" in (smoke_run / "results/models/dspo/README.md").read_text()


# The flow-matching run trains one method of each kind the family seam treats apart: a
# pairwise objective (Diffusion-DPO), DSPO fully fine-tuned (with its kept step) and DSPO as
# LoRA. Every objective's flow-matching loss is tested on its own (tests/families/test_flow.py);
# the image-quality and attribute-binding scores read images whatever model made them.
FLOW_METHODS = ["diffusion_dpo", "dspo", "dspo_lora"]
FLOW_SUBSET = {
    "methods": {m: None for m in METHODS_OF_SMOKE if m not in FLOW_METHODS},
    "evaluation": {
        "tables": {t: None for t in ("table1", "table4", "table5", "table6")},
        "attribute_binding": None,
        "quality": None,
    },
}


def test_toy_flow_preset_runs_end_to_end(tmp_path: Path) -> None:
    """The flow-matching toy world at the smoke preset's counts: a tiny SD3 pipeline built
    and pre-trained here, three methods trained by flow matching, sampled, edited and scored,
    to the tables."""
    flow = REPO / "config/presets/toy-flow.yaml"
    subset = tmp_path / "flow_subset.yaml"
    subset.write_text(yaml.safe_dump(FLOW_SUBSET))
    configs = [str(SMOKE), str(flow), str(subset)]
    snakemake("--cores", "2", "all", "--configfile", *configs, cwd=tmp_path)
    base = tmp_path / "results/models/base_flow"
    assert json.loads((base / "model_index.json").read_text())["_class_name"] == (
        "StableDiffusion3Pipeline"
    )
    table = pd.read_csv(tmp_path / "results/tables/win_rates.csv")
    assert sorted(table["method"].unique()) == FLOW_METHODS
    assert table["win_rate"].between(0, 1).all()
    models = tmp_path / "results/models"
    assert (models / "dspo/transformer/diffusion_pytorch_model.safetensors").exists()
    assert (models / "dspo@2/transformer/diffusion_pytorch_model.safetensors").exists()
    assert (models / "dspo_lora/pytorch_lora_weights.safetensors").exists()
    assert (
        json.loads((tmp_path / "results/cache/pairs/manifest.json").read_text())["family"] == "sd3"
    )
    assert (tmp_path / "results/plots/grid_pickv2.png").stat().st_size > 1000
    edits = pd.read_parquet(tmp_path / "results/images/dspo/editing/manifest.parquet")
    assert len(edits) > 0


def test_the_run_writes_its_summary(smoke_run: Path) -> None:
    summary = json.loads((smoke_run / "results/summary.json").read_text())
    assert summary["method"] == "dspo" and len(summary["headline"]) >= 2
    assert summary["stages"]["train"]["jobs"] == 10
    assert {"base_model", "generate", "score", "tables"} <= set(summary["stages"])
    assert 0 < summary["wall_seconds"] < 3600


def test_nothing_reruns_without_an_edit(smoke_run: Path) -> None:
    result = snakemake("-n", "all", "--configfile", str(SMOKE), cwd=smoke_run)
    assert "Nothing to be done" in result.stdout


def test_editing_one_method_reruns_only_that_method(smoke_run: Path, tmp_path: Path) -> None:
    edit = tmp_path / "edit.yaml"
    edit.write_text(yaml.safe_dump({"methods": {"dspo": {"params": {"lam": 0.5, "kappa": 0.5}}}}))
    result = snakemake("-n", "all", "--configfile", str(SMOKE), str(edit), cwd=smoke_run)
    # The smoke preset keeps DSPO's step 2: that model is sampled and scored again too.
    assert planned_jobs(result.stdout) == Counter(
        {
            "train": 1,
            "step_model": 1,
            "training_view": 1,
            "generate": 2,
            "score": 2,
            "quality": 2,
            "score_binding": 2,
            "binding_table": 1,
            "tables": 1,
            "grid": 2,
            "summary": 1,
            "all": 1,
        }
    )
    assert "method=dspo\n" in result.stdout + "\n"
    assert re.search(r"wildcards: model=dspo\n", result.stdout)


def test_editing_shared_training_defaults_reruns_every_method(
    smoke_run: Path, tmp_path: Path
) -> None:
    edit = tmp_path / "edit.yaml"
    edit.write_text(yaml.safe_dump({"training": {"steps": 6, "lr": 2.0e-5}}))
    result = snakemake("-n", "all", "--configfile", str(SMOKE), str(edit), cwd=smoke_run)
    jobs = planned_jobs(result.stdout)
    assert jobs["train"] == 10 and "cache" not in jobs and "base_model" not in jobs


def test_a_method_override_shields_it_from_the_shared_default(
    smoke_run: Path, tmp_path: Path
) -> None:
    # dspo_lora sets its own lr, so changing the shared lr leaves it (and only it) alone.
    edit = tmp_path / "edit.yaml"
    edit.write_text(yaml.safe_dump({"training": {"lr": 2.0e-5}}))
    result = snakemake("-n", "all", "--configfile", str(SMOKE), str(edit), cwd=smoke_run)
    assert planned_jobs(result.stdout)["train"] == 9
    assert "method=dspo_lora\n" not in result.stdout + "\n"


def test_adding_replicates_and_a_sweep_plans_only_the_new_models(
    smoke_run: Path, tmp_path: Path
) -> None:
    edit = tmp_path / "edit.yaml"
    sweep = {"method": "dspo", "keys": ["params.lam", "params.kappa"], "values": [0.1, 10]}
    edit.write_text(
        yaml.safe_dump({"training": {"replicates": 2}, "sweeps": {"lam": sweep}}), "utf-8"
    )
    result = snakemake(
        "-n", "all", "--printshellcmds", "--configfile", str(SMOKE), str(edit), cwd=smoke_run
    )
    trained = set(re.findall(r"wildcards: method=(\S+)", result.stdout))
    # Replicate 0 of each method is the model already trained: nothing of it reruns. The
    # ablations set their own count (one) in config/config.yaml, which the shared one leaves.
    replicated = [m for m in METHODS_OF_SMOKE if m not in ABLATIONS]
    assert trained == {f"{m}-r1" for m in replicated} | {"lam-0.1", "lam-10"}
    seeds = {m: c["seed"] for m, c in train_configs(result.stdout).items()}
    assert seeds["dspo-r1"] == 1 and seeds["lam-10"] == 0
    assert train_configs(result.stdout)["lam-10"]["params"]["lam"] == 10
    assert "results/tables/sweep_lam.csv" in result.stdout


def train_configs(dry_run: str) -> dict[str, dict]:
    """Each planned train job's --params config, by model name."""
    found = [json.loads(c) for c in re.findall(r"train --params '(\{.*?\})' --cache", dry_run)]
    return {c["name"]: c for c in found}


def test_rerunning_a_method_reproduces_the_tables(smoke_copy: Path) -> None:
    tables = smoke_copy / "results" / "tables"
    before = {f.name: f.read_bytes() for f in sorted(tables.iterdir())}
    # Retrain DSPO from scratch (its checkpoints too) and redo everything between it and the
    # tables (its plots are not this test's subject).
    shutil.rmtree(smoke_copy / "results" / "train" / "dspo")
    snakemake(
        "--cores",
        "2",
        *(f"results/tables/{name}" for name in before),
        "--forcerun",
        "results/models/dspo",
        "--configfile",
        str(SMOKE),
        cwd=smoke_copy,
    )
    assert {f.name: f.read_bytes() for f in sorted(tables.iterdir())} == before


def test_a_changed_model_changes_its_pixels(smoke_copy: Path) -> None:
    # New DSPO weights at the same path, its images forced to rerun (as after a code fix):
    # every image and edit of DSPO must be made again from the new weights.
    images = smoke_copy / "results" / "images" / "dspo"
    before = {p: p.read_bytes() for p in sorted(images.rglob("*.png"))}
    weights = smoke_copy / "results/models/dspo/unet/diffusion_pytorch_model.safetensors"
    gen = torch.Generator().manual_seed(0)
    save_file(
        {
            name: t + 0.05 * torch.randn(t.shape, generator=gen).to(t.dtype)
            for name, t in load_file(weights).items()
        },
        weights,
    )
    # The images alone are asked for: what reads them is not this test's subject.
    forced = [f"results/images/dspo/{s}/manifest.parquet" for s in ("pickv2", "editing")]
    snakemake(
        "--cores", "2", *forced, "--forcerun", *forced, "--configfile", str(SMOKE), cwd=smoke_copy
    )  # fmt: skip
    after = {p: p.read_bytes() for p in sorted(images.rglob("*.png"))}
    assert after.keys() == before.keys() and len(before) > 0
    changed = [
        not np.array_equal(np.asarray(Image.open(io.BytesIO(before[p]))), np.asarray(Image.open(p)))
        for p in before
    ]
    assert all(changed)
