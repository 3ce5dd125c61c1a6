"""``dspo budget``: its sizes against what the real code writes, its arithmetic by hand."""

from __future__ import annotations

import json
import shutil
import string
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load_file

from dspo.bench.budget import (
    budget,
    cache_bytes,
    checkpoint_bytes,
    checkpoints_held,
    denoiser_flops,
    model_bytes,
    model_shapes,
    prompt_bytes,
    stages,
    train_flops_per_pair,
)
from dspo.bench.disk import measure
from dspo.cli.commands import main as dspo_main
from dspo.config.step import workflow_config
from dspo.data.cache import build_cache
from dspo.data.pair_table import read_pair_texts
from dspo.families.sd_pipeline import load_pipeline
from dspo.training.train import train
from tests.conftest import jpeg
from tests.families.three_tensors import register
from tests.training.test_train import BASE_CONFIG

PRESETS = Path("config/presets")


def _disk(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _close(predicted: float, measured: float) -> bool:
    return abs(predicted - measured) <= 0.1 * measured


def test_predicted_cache_checkpoint_and_model_sizes_match_the_disk(
    tiny_model: Path, tiny_pairs: pd.DataFrame, tmp_path: Path
) -> None:
    # The stages are built here through the real code at a tiny scale and the budget's
    # formulas compared with the disk (the rehearsal's own sizes: results/bench/disk_*.csv).
    cache_cfg = {"resolution": 64, "dtype": "float16"}
    build_cache(tiny_pairs, str(tiny_model), tmp_path / "cache", shard_size=4096, **cache_cfg)
    shapes = model_shapes({"path": str(tiny_model)})
    prompts = tiny_pairs["caption"].nunique()
    predicted = cache_bytes(shapes, cache_cfg, len(tiny_pairs), prompts)
    assert _close(predicted, _disk(tmp_path / "cache")), (predicted, _disk(tmp_path / "cache"))

    # Three steps, a checkpoint after each but the last (the last step is the model).
    run = {**BASE_CONFIG, "steps": 3, "pairs_per_step": 2, "checkpoint_every": 1}
    run["params"] = {"lam": 0.001, "kappa": 0.001}
    train(
        {**run, "objective": "dspo", "name": "dspo"},
        cache_dir=tmp_path / "cache",
        base_model=str(tiny_model),
        out_dir=tmp_path / "model",
        run_dir=tmp_path / "run",
    )
    pipe = load_pipeline(str(tiny_model))
    unet = sum(p.numel() for p in pipe.unet.parameters())
    held = checkpoints_held(run)
    assert held == len(list((tmp_path / "run" / "checkpoints").glob("step-*"))) == 2
    measured = _disk(tmp_path / "run" / "checkpoints")
    assert _close(held * checkpoint_bytes(unet, "adamw"), measured), measured
    pipeline = sum(
        p.numel() for part in (pipe.unet, pipe.vae, pipe.text_encoder) for p in part.parameters()
    )
    predicted = model_bytes(pipeline, unet, None, {"dtype": "float32"})
    weights = _disk(tmp_path / "model")
    assert _close(predicted, weights), (predicted, weights)


def test_the_cache_budget_counts_every_prompt_tensor_of_the_family(
    tiny_model: Path, tiny_pairs: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A family with a third prompt tensor: per unique prompt, and the empty one, the budget
    # counts each of its tensors, as many bytes as the cache's text file holds.
    register(monkeypatch)
    build_cache(tiny_pairs, str(tiny_model), tmp_path, resolution=16, dtype="float16")
    stored = load_file(str(tmp_path / "text.safetensors"))
    shapes = model_shapes({"path": str(tiny_model)})  # the embeddings, from the folder's configs
    shapes["text"] |= {name: tuple(stored[name].shape[1:]) for name in ("pooled", "t5")}
    prompts = tiny_pairs["caption"].nunique() + 1
    held = sum(tensor.nbytes for tensor in stored.values())
    assert prompts * prompt_bytes(shapes, "float16") == held


def run_pair_rules(config: dict, workdir: Path) -> None:
    """What the pair rules and the nodup rules run (rules/data.smk), in ``workdir``; their
    parts are temporary, as in the workflow."""
    data = workdir / "results" / "data"
    steps = (
        ("pairs", config["pairs"], workdir / config["pairs"]["source"]["path"], "pairs"),
        ("nodup", {"seed": 0}, data / "pairs.parquet", "pairs_nodup"),
    )
    for step, params, source, table in steps:
        part = data / f"{table}.parts" / "0"
        argv = ["--part", "0", "--params", json.dumps(params), "--input", str(source)]
        dspo_main([f"{step}-part", *argv, "--out", str(part)])
        dspo_main(
            [f"{step}-gather", "--inputs", str(part), "--out", str(data / f"{table}.parquet")]
        )
        shutil.rmtree(part.parent)


def test_predicted_pair_tables_match_what_the_pair_rules_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A parquet source of 450 decided pairs with 150-byte captions (the budget's stated
    # caption size), sampled to 400 pairs; the default methods train on the nodup table too.
    rng = np.random.default_rng(0)
    letters = np.array(list(string.ascii_lowercase + "    "))
    rows = [
        {
            "caption": "".join(rng.choice(letters, 150)),
            "jpg_0": jpeg(tuple(int(v) for v in rng.integers(0, 256, 3))),
            "jpg_1": jpeg(tuple(int(v) for v in rng.integers(0, 256, 3))),
            "label_0": 1.0,
            "label_1": 0.0,
        }
        for _ in range(450)
    ]
    (tmp_path / "src").mkdir()
    pd.DataFrame(rows).to_parquet(tmp_path / "src" / "train-00000-of-00001.parquet")
    config = workflow_config([])
    config["pairs"] |= {"source": {"kind": "parquet", "path": "src"}, "max_pairs": 400}
    monkeypatch.chdir(tmp_path)
    run_pair_rules(config, tmp_path)
    predicted = {row["stage"]: row["disk_bytes"] for row in stages(config, tmp_path)}
    measured = {row["stage"]: row["bytes"] for row in measure(config, tmp_path)}
    assert len(read_pair_texts(tmp_path / "results/data/pairs_nodup.parquet")) == 400
    for stage in ("source", "pair tables"):
        assert _close(predicted[stage], measured[stage]), (stage, predicted, measured)


def test_sd15_cache_and_training_by_hand() -> None:
    config = workflow_config([PRESETS / "sd15.yaml"])
    rows = {r["stage"]: r for r in stages(config)}
    # 851,293 pairs x (2 latents of 4 x 64 x 64 float16 + 88 B of ids, sizes and crops)
    # + 58,961 prompts (the empty one too) x 77 x 768 float16.
    hand = 851_293 * (2 * 4 * 64 * 64 * 2 + 88) + 58_961 * 77 * 768 * 2
    assert rows["cache of pairs"]["disk_bytes"] == hand
    # Training one DSPO pair with gradient checkpointing, from the counted table: 2 images x
    # (forward + backward 2.41 + forward recomputed 0.803 + reference forward 0.803) TFLOP,
    # SD1.5 at 512 px (torch's flop counter, as measured before this command existed).
    flops = denoiser_flops("sd", 512)
    pair = train_flops_per_pair(flops, "dspo", False, True)
    assert pair == pytest.approx(2 * (2.41 + 0.803 + 0.803) * 1e12, rel=0.005)
    assert train_flops_per_pair(flops, "sft", False, False) == pytest.approx(2.41e12, rel=0.005)
    # One sd15 run, 2000 steps x 2048 pairs, on an A100 (312 TFLOP/s) at 40 %: 73.2 hours.
    assert 2000 * 2048 * pair / (312e12 * 0.4 * 3600) == pytest.approx(73.2, abs=0.2)
    result = budget(config, "a100", 0.4)
    train_row = next(r for r in result["stages"] if r["stage"] == "training checkpoints")
    assert train_row["gpu_hours"] == pytest.approx(train_row["flops"] / (312e12 * 0.4 * 3600))
    assert result["utilisation"] == 0.4 and result["peak_tflops"] == 312.0


def test_sd15_budgets_its_kept_steps_as_models_of_their_own() -> None:
    config = workflow_config([PRESETS / "sd15.yaml"])
    rows = {r["stage"]: r for r in stages(config)}
    # The base, 10 trained methods, their steps 500, 1000 and 1500, 2 released models; the
    # prompts of Pick-a-Pic (500), Parti (1632), HPSv2 (3200), the edits (1000) and the
    # Pick-a-Pic validation captions (500) that choose the step.
    images = rows["evaluation images"]["items"]
    assert images == "43 models x 6,832 prompts x 5 seeds x 1 guidance = 1,468,880"
    assert rows["trained models"]["items"] == "10 models and 30 kept steps"
    config["training"]["evaluate_steps"] = []
    without = {r["stage"]: r for r in stages(config)}
    assert without["evaluation images"]["items"].startswith("13 models x 6,832 prompts")
    # Each run keeps three more models of its own size.
    assert rows["trained models"]["disk_bytes"] == 4 * without["trained models"]["disk_bytes"]


def test_sd15_caches_ddspo_and_nodup_pairs_at_their_own_counts() -> None:
    """DDSPO's pairs (two images of each of 200,000 prompts) and the nodup table (one pair a
    prompt) are cached at their counts, not at the Pick-a-Pic table's."""
    rows = {r["stage"]: r for r in stages(workflow_config([PRESETS / "sd15.yaml"]))}
    assert rows["cache of pairs_ddspo"]["items"] == "200,000 pairs, 400,000 prompts"
    assert rows["cache of pairs_nodup"]["items"] == "58,960 pairs, 58,960 prompts"
    assert rows["cache of pairs"]["items"] == "851,293 pairs, 58,960 prompts"


def test_every_preset_budgets_and_an_unknown_gpu_is_refused() -> None:
    for preset in ("sdxl", "sd35", "flux"):
        files = [PRESETS / "sd15.yaml", PRESETS / f"{preset}.yaml"]
        result = budget(workflow_config(files), "h100", 0.4)
        assert result["total"]["gpu_hours"] > 0 and result["total"]["disk_bytes"] > 1e12
    # The default (toy) config: sizes from its architecture, no FLOPs counted for its model.
    toy = budget(workflow_config([]), "h100", 0.4)
    assert not toy["flops_counted"] and toy["total"]["disk_bytes"] > 0
    with pytest.raises(ValueError, match="--gpu 'tpu'"):
        budget(workflow_config([PRESETS / "sd15.yaml"]), "tpu", 0.4)
