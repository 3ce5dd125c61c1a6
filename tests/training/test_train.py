"""The shared training loop: every objective, outputs users can load, resume after a kill."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from diffusers import DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0
from safetensors.torch import load_file

import dspo.training.run_files as run_files_module
import dspo.training.train as train_module
from dspo.data.cache import build_cache
from dspo.data.cache_load import load_cache
from dspo.families import load_family
from dspo.families.sd import SDFamily
from dspo.objectives import OBJECTIVES, get_objective
from dspo.training.optimisation import learning_rate_factor, resolve_mixed_precision
from dspo.training.policy import build_model
from dspo.training.preference import PreferenceModel, make_batch
from dspo.training.processes import accumulation_steps
from dspo.training.settings import TrainSettings
from dspo.training.train import train

BASE_CONFIG = {
    "steps": 4,
    "pairs_per_step": 4,
    "local_pairs": 2,
    "lr": 1e-3,
    "lr_schedule": "constant",
    "warmup_steps": 1,
    "optimizer": "adamw",
    "adam_betas": [0.9, 0.999],
    "adam_eps": 1e-8,
    "weight_decay": 0.01,
    "max_grad_norm": 1.0,
    "prompt_dropout": 0.25,
    "mixed_precision": "no",
    "gradient_checkpointing": False,
    "checkpoint_every": 2,
    "checkpoints_kept": 2,
    "keep_checkpoints": True,
    "log_every": 1,
    "report_to": None,
    "seed": 0,
    "params": {},
    "lora": None,
}


@pytest.fixture(scope="module")
def cache_dir(tiny_model: Path, tiny_pairs: pd.DataFrame, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cache")
    rejected = [c.split()[-1] for c in tiny_pairs["caption"]]  # degraded prompts for DDSPO
    build_cache(
        tiny_pairs, str(tiny_model), path, resolution=16, dtype="float32", prompts_l=rejected
    )
    return path


def run(
    cfg: dict, cache_dir: Path, base: Path, root: Path, reference_dir: Path | None = None
) -> dict:
    """`train` with BASE_CONFIG under `cfg`, writing ``root/model`` and ``root/run``."""
    return train(
        {**BASE_CONFIG, **cfg},
        cache_dir=cache_dir,
        base_model=str(base),
        out_dir=root / "model",
        run_dir=root / "run",
        reference_dir=reference_dir,
    )


def interrupted(
    cfg: dict,
    cache_dir: Path,
    base: Path,
    root: Path,
    monkeypatch: pytest.MonkeyPatch,
    step: int,
    micro_step: int = 1,
) -> None:
    """A run killed (KeyboardInterrupt) in micro-step `micro_step` of `step` (2 micro-steps a
    step), leaving its checkpoints and no model; later runs draw their batches as usual."""
    real = train_module.micro_batch
    calls = {"n": 0}

    def dies(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2 * (step - 1) + micro_step - 1:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "micro_batch", dies)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, cache_dir, base, root)
    monkeypatch.setattr(train_module, "micro_batch", real)
    assert not (root / "model").exists()


def unet_weights(path: Path) -> dict[str, torch.Tensor]:
    return UNet2DConditionModel.from_pretrained(path, subfolder="unet").state_dict()


def assert_same_weights(a: Path, b: Path, atol: float) -> None:
    first, second = unet_weights(a), unet_weights(b)
    for key in first:
        torch.testing.assert_close(second[key], first[key], rtol=0, atol=atol)


def an_image(pipe, **kwargs) -> np.ndarray:
    """One image from a stock pipeline call, checked for shape and finiteness."""
    image = pipe(
        "a red circle",
        num_inference_steps=2,
        height=16,
        width=16,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
        **kwargs,
    ).images[0]
    assert image.shape == (16, 16, 3) and np.isfinite(image).all()
    return image


DSPO = {"objective": "dspo", "params": {"lam": 0.5, "kappa": 100.0}}
# Warm-up over three steps, then decay: a schedule that shows whether it runs at one pace
# however many processes train.
SCHEDULE = {"warmup_steps": 3, "lr_schedule": "inverse_sqrt"}


@pytest.fixture(scope="module")
def dspo_run(cache_dir: Path, tiny_model: Path, tmp_path_factory) -> Path:
    """One plain DSPO run on one process: the yardstick of the runs below."""
    root = tmp_path_factory.mktemp("dspo-run")
    run({**DSPO, **SCHEDULE}, cache_dir, tiny_model, root)
    return root


def test_accumulation_follows_the_effective_batch() -> None:
    assert accumulation_steps(2048, 4, 4) == 128
    with pytest.raises(ValueError, match="2048 pairs .* 3 process"):
        accumulation_steps(2048, 4, 3)


def test_learning_rate_schedules() -> None:
    assert learning_rate_factor(0, 4, "constant") == 0.25
    assert learning_rate_factor(10, 4, "constant") == 1.0
    assert learning_rate_factor(15, 4, "inverse_sqrt") == pytest.approx(0.5)
    with pytest.raises(ValueError, match="cosine"):
        learning_rate_factor(10, 4, "cosine")


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_every_objective_trains_and_saves_a_loadable_pipeline(
    objective: str, cache_dir: Path, tiny_model: Path, tmp_path: Path
) -> None:
    summary = run({"objective": objective, "name": objective}, cache_dir, tiny_model, tmp_path)
    assert summary["accumulation"] == 2 and summary["resumed_from"] == 0
    metrics = [
        json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()
    ]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in metrics)
    pipe = StableDiffusionPipeline.from_pretrained(
        tmp_path / "model", safety_checker=None, requires_safety_checker=False
    )
    before, after = unet_weights(tiny_model), pipe.unet.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "weights did not move"
    an_image(pipe, guidance_scale=3.0)
    saved = json.loads((tmp_path / "model/dspo_config.json").read_text())
    assert saved["config"]["objective"] == objective


LORA = {"rank": 4, "alpha": 4, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}


def _final_weights(folder: Path, lora: bool) -> dict[str, torch.Tensor]:
    return load_file(folder / "pytorch_lora_weights.safetensors") if lora else unet_weights(folder)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_killed_job_resumes_to_the_same_weights(
    cache_dir: Path, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lora: bool
) -> None:
    cfg = {**DSPO, "lora": LORA, "lr": 1e-2} if lora else DSPO
    run(cfg, cache_dir, tiny_model, tmp_path / "straight")

    interrupted(cfg, cache_dir, tiny_model, tmp_path / "killed", monkeypatch, step=3, micro_step=2)
    assert (tmp_path / "killed/run/checkpoints/step-000002/state.json").exists()
    # The checkpoint holds the policy only: the resumed run rebuilds the frozen reference.
    saved = load_file(tmp_path / "killed/run/checkpoints/step-000002/model.safetensors")
    assert saved and not any(key.startswith("reference") for key in saved)
    if lora:  # the frozen base is the reference too: only the adapters are kept
        assert all("lora_" in key for key in saved), sorted(saved)[:3]

    summary = run(cfg, cache_dir, tiny_model, tmp_path / "killed")
    assert summary["resumed_from"] == 2
    steps = [
        json.loads(line)["step"]
        for line in (tmp_path / "killed/run/metrics.jsonl").read_text().splitlines()
    ]
    assert steps == [1, 2, 3, 4]
    straight, resumed = (
        _final_weights(tmp_path / "straight/model", lora),
        _final_weights(tmp_path / "killed/model", lora),
    )
    assert straight
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=1e-6)


def test_rerun_resumes_only_checkpoints_of_the_same_config(
    cache_dir: Path, tiny_model: Path, tmp_path: Path
) -> None:
    run(DSPO, cache_dir, tiny_model, tmp_path)
    assert (tmp_path / "run/checkpoints/step-000002/state.json").exists()
    # More steps leave the first ones unchanged: the run continues from its last checkpoint
    # (step 2: the final step is saved as the model, not as a checkpoint).
    assert run({**DSPO, "steps": 6}, cache_dir, tiny_model, tmp_path)["resumed_from"] == 2
    # Another lam is another run: its old checkpoints move aside, not resumed nor deleted.
    edited = {**DSPO, "params": {"lam": 0.1, "kappa": 100.0}}
    assert run(edited, cache_dir, tiny_model, tmp_path)["resumed_from"] == 0
    states = sorted((tmp_path / "run/checkpoints").glob("step-*/state.json"))
    assert [s.parent.name for s in states] == ["step-000002"]  # step 4 of 6 moved aside
    fingerprints = {json.loads(s.read_text())["fingerprint"] for s in states}
    assert len(fingerprints) == 1
    (stale,) = (tmp_path / "run").glob("checkpoints.stale-*")
    assert sorted(p.name for p in stale.iterdir()) == ["step-000002", "step-000004"]
    old = json.loads((stale / "step-000004/state.json").read_text())["fingerprint"]
    assert old not in fingerprints


def test_lora_output_loads_and_reference_is_the_base(
    cache_dir: Path, tiny_model: Path, tmp_path: Path
) -> None:
    lora = {"rank": 4, "alpha": 4, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}
    run({"objective": "dspo", "lora": lora, "lr": 1e-2}, cache_dir, tiny_model, tmp_path)
    assert (tmp_path / "model/pytorch_lora_weights.safetensors").exists()
    assert not (tmp_path / "model/model_index.json").exists()

    pipe = StableDiffusionPipeline.from_pretrained(
        tiny_model, safety_checker=None, requires_safety_checker=False
    )
    x, t, text = torch.randn(1, 4, 8, 8), torch.tensor([500]), torch.randn(1, 12, 32)
    base_out = pipe.unet(x, t, text).sample
    base_image = an_image(pipe)
    pipe.load_lora_weights(str(tmp_path / "model"))
    assert not torch.allclose(pipe.unet(x, t, text).sample, base_out)
    assert not np.allclose(an_image(pipe), base_image)
    assert json.loads((tmp_path / "model/dspo_config.json").read_text())["config"]["lora"]

    # Inside the trainer the reference is the same UNet with its adapters disabled.
    from peft import LoraConfig

    unet = UNet2DConditionModel.from_pretrained(tiny_model, subfolder="unet")
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=lora["target_modules"]))
    for p in unet.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p)
    family = load_family(tiny_model)
    model = PreferenceModel(unet, family, needs_reference=True, lora=True)
    assert model.reference is None
    cond = {"embeddings": text}
    torch.testing.assert_close(model.ref(x, t, cond), base_out)
    assert not torch.allclose(model.policy(x, t, cond), base_out)


def test_frozen_reference_can_be_held_in_half_precision(tiny_model: Path) -> None:
    unet = UNet2DConditionModel.from_pretrained(tiny_model, subfolder="unet")
    family = load_family(tiny_model)
    model = PreferenceModel(unet, family, True, False, reference_dtype=torch.bfloat16)
    assert {p.dtype for p in model.reference.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.denoiser.parameters()} == {torch.float32}
    assert not any(p.requires_grad for p in model.reference.parameters())


def test_two_processes_train_like_one(
    dspo_run: Path, cache_dir: Path, tiny_model: Path, tmp_path: Path
) -> None:
    """accelerate with 2 CPU processes (gloo): same effective batch, pairs, noise, learning
    rates and weights, with a warm-up longer than one step and a decaying schedule."""
    cfg = {**BASE_CONFIG, **DSPO, **SCHEDULE}
    launcher = Path(sys.executable).parent / "accelerate"
    command = [
        str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "dspo.cli.commands", "train", "--params", json.dumps(cfg), "--cache", str(cache_dir),
        "--base", str(tiny_model), "--out", str(tmp_path / "model"),
        "--run-dir", str(tmp_path / "run"),
    ]  # fmt: skip
    # Without CUDA, accelerate joins the processes into one gloo group only when told the CPU.
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads((tmp_path / "model/dspo_config.json").read_text())
    one = json.loads((dspo_run / "model/dspo_config.json").read_text())
    assert (two["processes"], two["accumulation"]) == (2, 1)
    assert (one["processes"], one["accumulation"]) == (1, 2)
    assert two["pairs_per_step"] == one["pairs_per_step"] == 4
    records = [
        [json.loads(line) for line in (root / "run/metrics.jsonl").read_text().splitlines()]
        for root in (dspo_run, tmp_path)
    ]
    losses = [[r["loss"] for r in run_records] for run_records in records]
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
    # The rate of each step follows the schedule once per optimiser step, on 2 processes too.
    expected = [
        cfg["lr"] * learning_rate_factor(s, SCHEDULE["warmup_steps"], SCHEDULE["lr_schedule"])
        for s in range(cfg["steps"])
    ]
    assert expected[0] < expected[2] > expected[3]  # warms up, then decays
    for run_records in records:
        np.testing.assert_allclose([r["lr"] for r in run_records], expected, rtol=1e-12)
    # Adam's normalised steps amplify float rounding of the gradient all-reduce: 1e-4 is a
    # fortieth of the 4 steps x lr 1e-3 the weights can move.
    assert_same_weights(dspo_run / "model", tmp_path / "model", atol=1e-4)


def test_metrics_go_to_csv_and_tensorboard(
    cache_dir: Path, tiny_model: Path, tmp_path: Path
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run({**DSPO, "steps": 3, "report_to": "tensorboard"}, cache_dir, tiny_model, tmp_path)
    lines = (tmp_path / "run/metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    with (tmp_path / "run/metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert list(rows[0]) == list(records[0])
    for row, record in zip(rows, records, strict=True):
        assert float(row["loss"]) == pytest.approx(record["loss"])
    # One project per workflow run (here the default), under it one run per method.
    events = list((tmp_path / "run/dspo").glob("events.out.tfevents.*"))
    assert events, "no tensorboard event file"
    logged = EventAccumulator(str(events[0].parent)).Reload()
    assert [e.step for e in logged.Scalars("loss")] == [1, 2, 3]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU fallback of mixed precision")
def test_gradient_checkpointing_and_cpu_mixed_precision(
    dspo_run: Path,
    cache_dir: Path,
    tiny_model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Checkpointed blocks recompute the same numbers; bf16 on CPU trains in float32, saying so."""
    calls = {"n": 0}
    real_checkpoint = torch.utils.checkpoint.checkpoint

    def counting_checkpoint(*args, **kwargs):
        calls["n"] += 1
        return real_checkpoint(*args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counting_checkpoint)
    cfg = {**DSPO, **SCHEDULE, "gradient_checkpointing": True, "mixed_precision": "bf16"}
    with pytest.warns(UserWarning, match="'bf16' needs a CUDA GPU"):
        summary = run(cfg, cache_dir, tiny_model, tmp_path)
    assert summary["mixed_precision"] == "no"
    assert calls["n"] > 0, "gradient checkpointing was not used"
    assert_same_weights(dspo_run / "model", tmp_path / "model", atol=1e-6)
    with pytest.raises(ValueError, match="'fp8'"):
        resolve_mixed_precision("fp8")


def test_prompt_dropout_swaps_in_the_empty_prompt(cache_dir: Path) -> None:
    cache = load_cache(cache_dir)
    rows = torch.arange(24)
    family = SDFamily(DDPMScheduler(num_train_timesteps=1000).config)

    def text_of(dropout: float) -> torch.Tensor:
        gen = torch.Generator().manual_seed(0)
        batch = make_batch(cache, rows, dropout, gen, family)
        assert torch.equal(batch["latents_w"], cache.latents_w[rows].float())
        return batch["text_w"], batch["text_l"]

    empty = cache.empty_prompt["embeddings"].float()
    dropped = [(t == empty).flatten(1).all(1) for t in text_of(0.5)]
    assert torch.equal(dropped[0], dropped[1]), "both images of a pair lose their prompt"
    assert 0 < int(dropped[0].sum()) < 24
    assert all((t == empty).all() for t in text_of(1.0))
    kept_w, _ = text_of(0.0)
    assert torch.equal(kept_w, cache.prompt_tensors["embeddings"][cache.text_w].float())


def test_unet_attention_is_pytorch_sdpa(cache_dir: Path, tiny_model: Path) -> None:
    """diffusers' default processor is AttnProcessor2_0 (F.scaled_dot_product_attention)."""
    cfg = {**BASE_CONFIG, **DSPO}
    model = build_model(
        TrainSettings.from_config(cfg),
        get_objective("dspo"),
        str(tiny_model),
        load_cache(cache_dir),
        "no",
    )
    processors = model.denoiser.attn_processors
    assert processors and all(isinstance(p, AttnProcessor2_0) for p in processors.values())


def synthetic_cache(root: Path, pairs: int, shard_size: int = 1000) -> Path:
    """A cache of random 64x64 latents (32 KiB an image) laid out as gather_cache writes it."""
    from safetensors.torch import save_file

    from dspo.core.content import file_sha256

    root.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    shards = []
    for first in range(0, pairs, shard_size):
        n = min(shard_size, pairs - first)
        name = f"latents-{len(shards):05d}.safetensors"
        tensors = {
            f"latents_{side}": torch.randn(n, 4, 64, 64, generator=gen).half() for side in "wl"
        }
        for side in "wl":
            tensors[f"text_{side}"] = torch.arange(first, first + n) % 6
            tensors[f"original_size_{side}"] = torch.full((n, 2), 512)
            tensors[f"crop_{side}"] = torch.zeros(n, 2, dtype=torch.int64)
        tensors["pair_id"] = torch.arange(first, first + n)
        save_file(tensors, str(root / name))
        shards.append({"file": name, "pairs": n, "sha256": file_sha256(root / name)})
    text = {"embeddings": torch.randn(6, 12, 32, generator=gen), "empty": torch.zeros(1, 12, 32)}
    save_file(text, str(root / "text.safetensors"))
    manifest = {
        "model": "synthetic",
        "family": "sd",
        "resolution": 512,
        "latent_shape": [4, 64, 64],
        "pairs": pairs,
        "shards": shards,
        "text_sha256": file_sha256(root / "text.safetensors"),
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


PEAK_RSS = """
import json, resource, sys
from pathlib import Path
from dspo.training.train import train
cfg, cache, base, root = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4])
train(cfg, cache_dir=Path(cache), base_model=base, out_dir=root / "model", run_dir=root / "run")
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_trainer_memory_does_not_grow_with_the_cache(tiny_model: Path, tmp_path: Path) -> None:
    """Ten times the rows (38 -> 384 MiB of latents), under 1.2 times the peak resident memory.

    Rows are read per batch from memory-mapped shards; a cache concatenated into the process
    would add its whole size (twice, at peak while loading).
    """
    cfg = {**BASE_CONFIG, **DSPO, "steps": 2, "checkpoint_every": 0}
    peaks = []
    for pairs in (600, 6000):
        cache = synthetic_cache(tmp_path / f"cache-{pairs}", pairs)
        args = [json.dumps(cfg), str(cache), str(tiny_model), str(tmp_path / f"run-{pairs}")]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        done = subprocess.run(
            [sys.executable, "-c", PEAK_RSS, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        peaks.append(int(done.stdout.split()[-1]))  # KiB
        shutil.rmtree(cache)
    print(f"peak RSS with 600 and 6000 pairs: {peaks[0] / 1024:.0f} / {peaks[1] / 1024:.0f} MiB")
    assert peaks[1] < 1.2 * peaks[0]


def test_finished_run_drops_its_checkpoints_and_writes_a_model_card(
    cache_dir: Path, tiny_model: Path, tmp_path: Path
) -> None:
    cfg = {
        **DSPO,
        "keep_checkpoints": False,
        "lora": {"rank": 2, "alpha": 2.0, "target_modules": ["to_q", "to_v"]},
    }
    run(cfg, cache_dir, tiny_model, tmp_path)
    assert not (tmp_path / "run/checkpoints").exists()
    card = (tmp_path / "model/README.md").read_text()
    assert f'base_model: "{tiny_model}"' in card and "LoRA adapters (rank 2)" in card
    record = json.loads((tmp_path / "model/dspo_content.json").read_text())["files"]
    assert "README.md" in record and "pytorch_lora_weights.safetensors" in record


def test_lora_under_mixed_precision_holds_the_frozen_base_in_half(
    cache_dir: Path, tiny_model: Path
) -> None:
    """On a GPU under bf16 the frozen base of a LoRA run (also its reference) is held in bf16,
    and the adapters the optimiser updates stay float32; full fine-tuning stays float32."""
    cfg = {**BASE_CONFIG, **DSPO, "lora": LORA}
    cache = load_cache(cache_dir)
    model = build_model(
        TrainSettings.from_config(cfg), get_objective("dspo"), str(tiny_model), cache, "bf16"
    )
    params = list(model.denoiser.parameters())
    assert {p.dtype for p in params if not p.requires_grad} == {torch.bfloat16}
    assert {p.dtype for p in params if p.requires_grad} == {torch.float32}
    full = build_model(
        TrainSettings.from_config({**BASE_CONFIG, **DSPO}),
        get_objective("dspo"),
        str(tiny_model),
        cache,
        "bf16",
    )
    assert {p.dtype for p in full.denoiser.parameters()} == {torch.float32}


def test_a_resumed_run_continues_the_same_wandb_run(
    cache_dir: Path, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The W&B run id is kept with the checkpoint and opened again on resume (a fake tracker
    start records it: wandb is not installed here)."""
    opened = []
    monkeypatch.setattr("dspo.training.settings.tracker_problem", lambda report_to: None)
    monkeypatch.setattr(
        run_files_module, "start_trackers", lambda *args: opened.append((args[2], args[3], args[4]))
    )
    cfg = {**DSPO, "report_to": "wandb"}
    run(cfg, cache_dir, tiny_model, tmp_path)
    state = json.loads((tmp_path / "run/checkpoints/step-000002/state.json").read_text())
    assert state["tracker_run_id"] == opened[0][2]
    assert run({**cfg, "steps": 6}, cache_dir, tiny_model, tmp_path)["resumed_from"] == 2
    assert opened[1] == (opened[0][0], 2, opened[0][2])  # same method, from step 2, same run


def test_kept_steps_are_loadable_models_that_survive_a_resume(
    cache_dir: Path, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """training.evaluate_steps: the models of steps 1 and 3 are kept whole (a loadable
    pipeline with its record and card), survive a kill and the resume, and stay at the end."""
    cfg = {**DSPO, "evaluate_steps": [1, 3], "keep_checkpoints": False}
    run(cfg, cache_dir, tiny_model, tmp_path / "straight")
    steps = tmp_path / "straight/run/steps"
    assert sorted(p.name for p in steps.iterdir()) == ["step-000001", "step-000003"]

    interrupted(cfg, cache_dir, tiny_model, tmp_path / "killed", monkeypatch, step=3, micro_step=2)
    kept = tmp_path / "killed/run/steps"
    weights = kept / "step-000001/unet/diffusion_pytorch_model.safetensors"
    written = weights.stat().st_ino
    assert [p.name for p in kept.iterdir()] == ["step-000001"]

    assert run(cfg, cache_dir, tiny_model, tmp_path / "killed")["resumed_from"] == 2
    # Step 1 (before the checkpoint resumed) is the file written before the kill.
    assert weights.stat().st_ino == written
    assert sorted(p.name for p in kept.iterdir()) == ["step-000001", "step-000003"]
    for step in ("step-000001", "step-000003"):
        assert_same_weights(steps / step, kept / step, atol=1e-6)
    # The last step is the model itself, not a kept step; the checkpoints are gone.
    assert not (tmp_path / "killed/run/checkpoints").exists()
    record = json.loads((kept / "step-000003/dspo_config.json").read_text())
    assert record["step"] == 3 and record["steps"] == 4 and record["config"]["objective"] == "dspo"
    assert "# dspo@3" in (kept / "step-000003/README.md").read_text()
    # Whether TF32 was in effect is recorded with the model (no CUDA here: it was not).
    final = json.loads((tmp_path / "killed/model/dspo_config.json").read_text())
    assert final["tf32"] is False and record["tf32"] is False
    pipe = StableDiffusionPipeline.from_pretrained(kept / "step-000003", safety_checker=None)
    an_image(pipe)
