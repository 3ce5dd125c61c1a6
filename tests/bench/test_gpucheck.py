"""The GPU check: a clear stop without CUDA, its FLOP count, and its stages on CPU (tiny)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from dspo.bench import gpucheck
from dspo.standins import SD15, write_standins


def test_without_cuda_it_stops_at_once_saying_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="needs a CUDA GPU.*--device cpu --tiny"):
        gpucheck.main(["--device", "cuda"])


def test_step_flops_follow_the_work_done(tmp_path: Path) -> None:
    write_standins(tmp_path, ["sd15"], tiny=True)
    base = tmp_path / SD15
    full = gpucheck.step_flops(base, 8, 2, lora=False, reference=True)
    assert gpucheck.step_flops(base, 8, 4, lora=False, reference=True) == pytest.approx(2 * full)
    assert gpucheck.step_flops(base, 8, 2, lora=False, reference=False) < full
    # LoRA skips the weight gradients of the frozen UNet.
    assert gpucheck.step_flops(base, 8, 2, lora=True, reference=True) < full


def test_tiny_dry_run_runs_every_stage_on_cpu(tmp_path: Path) -> None:
    args = argparse.Namespace(
        device="cpu", tiny=True, standins="unused", resolution=512, steps=1, workdir=tmp_path
    )
    report = gpucheck.run(args)
    assert report["resolution"] == 64 and report["precision"] == "no"
    names = [row["method"] for row in report["train"]]
    assert names == [
        "dspo",
        "diffusion_dpo",
        "dspo_lora",
        "diffusion_dpo_lora",
        "dspo_fast",
        "dspo_lora_fast",
    ]
    for row in report["train"]:
        assert row["steps"] == 1 and row["pairs_per_s"] > 0 and row["tflops_per_s"] > 0
        assert (tmp_path / "models" / row["method"]).is_dir()
    scored = report["generate_score"]
    assert scored["images"] == 4
    assert sorted(scored["mean_scores"]) == sorted(gpucheck.REWARDS)
    assert report["bench"]["modes"] and report["bench"]["spec"]["threads"] == 1
