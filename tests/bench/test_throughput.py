"""The training benchmark: both modes measured, FLOPs counted, the loops as specified."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from dspo.bench.flops import counted, dense_bf16_peak
from dspo.bench.modes import build_mode, make_step, visit_order
from dspo.bench.spec import SD15_ARCHITECTURE, BenchSpec, ResidentPeak, load_architecture
from dspo.bench.throughput import prepare
from dspo.cli.commands import main
from dspo.standins import architectures
from tests.conftest import TINY_ARCHITECTURE


def test_both_modes_report_figures_and_flops(tmp_path: Path, capsys) -> None:
    # LoRA, accumulation and checkpointing together, with upstream's data-loader workers.
    arch = tmp_path / "arch.yaml"
    arch.write_text(yaml.safe_dump({"base_model": {"architecture": TINY_ARCHITECTURE}}))
    out = tmp_path / "bench.json"
    argv = ["bench", "train", "--arch", str(arch), "--latent", "4", "--pairs", "4"]
    argv += ["--steps", "2", "--warmup", "1", "--lora", "4", "--accumulation", "2"]
    # One torch thread a worker: with torch's default of a thread a core, the workers spun
    # beside the gate's other pytest worker (26.8 s of CPU against 20.0 s beside a busy loop).
    argv += ["--threads", "1"]
    main([*argv, "--checkpointing", "--workers", "2", "--json", str(out)])
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert set(result["modes"]) == {"ours", "upstream"} and result["spec"]["threads"] == 1
    for mode, figures in result["modes"].items():
        assert mode in printed
        for key in ("seconds", "s_per_step", "pairs_per_s", "peak_mib", "last_loss"):
            assert math.isfinite(figures[key]), (mode, key)
        for key in ("seconds", "pairs_per_s", "trainable_params_m", "flops_per_pair"):
            assert figures[key] > 0, (mode, key)
        # At this size the steps may fit in pages the imports already made resident.
        assert figures["peak_mib"] >= 0, mode
        assert figures["pairs_per_s"] == pytest.approx(2 * 4 / figures["seconds"])
        assert figures["tflops_per_s"] == pytest.approx(
            figures["flops_per_pair"] * figures["pairs_per_s"] / 1e12
        )
    ours, upstream = result["modes"]["ours"], result["modes"]["upstream"]
    assert upstream["loader_workers"] == 2
    ratio = result["ratio"]
    assert ratio["pairs_per_s"] == pytest.approx(ours["pairs_per_s"] / upstream["pairs_per_s"])
    assert upstream["peak_mib"] > 0
    assert ratio["peak_mib"] == pytest.approx(ours["peak_mib"] / upstream["peak_mib"])
    # Upstream does all of ours' work and encodes the images and captions on top.
    assert ours["data_flops_per_pair"] == 0 < upstream["data_flops_per_pair"]
    assert upstream["flops_per_pair"] >= ours["flops_per_pair"] + upstream["data_flops_per_pair"]
    assert ratio["flops_upstream_over_ours"] == pytest.approx(
        upstream["flops_per_pair"] / ours["flops_per_pair"]
    )
    # Both modes train the same LoRA parameters; only the data path differs.
    assert ours["trainable_params_m"] == upstream["trainable_params_m"]
    assert result["resolution"] == 8  # latent 4 through a 2-block VAE
    assert f"x{ratio['pairs_per_s']:.2f}" in printed
    assert f"x{ratio['flops_upstream_over_ours']:.2f}" in printed
    assert "gradient checkpointing on" in printed and "in 2 micro-step(s)" in printed


SPEC = BenchSpec(
    architecture=TINY_ARCHITECTURE, latent=4, pairs=4, steps=1, warmup=0, workers=0, lora=0
)


@pytest.fixture(scope="module")
def bench_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model, its pair table and its cache, as `dspo bench train` prepares them."""
    root = tmp_path_factory.mktemp("bench")
    prepare(SPEC, root)
    return root


def _step_flops(root: Path, mode: str, **changes) -> int:
    spec = dataclasses.replace(SPEC, **changes)
    built = build_mode(spec, root, mode, needs_reference=True)
    step = make_step(spec, built)
    return counted(lambda: step(0))[1]


@pytest.mark.parametrize("mode", ["ours", "upstream"])
def test_counted_flops_scale_with_pairs_and_count_recompute(bench_root: Path, mode: str) -> None:
    two, four = (_step_flops(bench_root, mode, pairs=n) for n in (2, 4))
    assert two > 0
    # Every counted operation (convolutions, projections, attention) is per image.
    assert four / two == pytest.approx(2, rel=0.01)
    # Checkpointing recomputes the policy's forward in the backward pass.
    assert _step_flops(bench_root, mode, pairs=2, checkpointing=True) > two


def test_upstream_counts_more_flops_than_ours(bench_root: Path) -> None:
    for lora in (0, 4):
        ours = _step_flops(bench_root, "ours", lora=lora)
        assert _step_flops(bench_root, "upstream", lora=lora) > ours, lora


def test_count_only_on_meta_equals_the_real_step(bench_root: Path) -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from dspo.bench.count import count_on_meta

    changes = {"lora": 4, "checkpointing": True, "accumulation": 2}
    meta = count_on_meta(dataclasses.replace(SPEC, **changes))
    assert meta["modes"]["upstream"]["data_flops_per_pair"] > 0
    for mode in ("ours", "upstream"):
        # The math kernel, as on the meta device: attention as matrix products.
        with sdpa_kernel(SDPBackend.MATH):
            real = _step_flops(bench_root, mode, **changes)
        assert meta["modes"][mode]["flops_per_pair"] == real / SPEC.pairs, mode


def test_count_only_prints_and_writes_the_counts(tmp_path: Path, capsys) -> None:
    arch = tmp_path / "arch.yaml"
    arch.write_text(yaml.safe_dump(TINY_ARCHITECTURE))
    out = tmp_path / "count.json"
    argv = ["bench", "train", "--arch", str(arch), "--latent", "4", "--pairs", "2", "--lora", "4"]
    main([*argv, "--count-only", "--json", str(out)])
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    ours, upstream = (result["modes"][m]["flops_per_pair"] for m in ("ours", "upstream"))
    assert 0 < ours < upstream
    assert f"x{upstream / ours:.3f}" in printed and "nothing timed" in printed


def _new_unets(build) -> tuple[object, list[torch.nn.Module]]:
    """What ``build()`` returns, and the UNets it created that are still alive afterwards."""
    import gc

    from diffusers import UNet2DConditionModel

    def alive() -> list[torch.nn.Module]:
        gc.collect()
        return [o for o in gc.get_objects() if isinstance(o, UNet2DConditionModel)]

    before = {id(o) for o in alive()}
    built = build()
    return built, [o for o in alive() if id(o) not in before]


def test_upstream_lora_reference_is_the_policy_with_adapters_disabled(bench_root: Path) -> None:
    spec = dataclasses.replace(SPEC, lora=4)
    mode, unets = _new_unets(lambda: build_mode(spec, bench_root, "upstream", True))
    # One UNet in memory, the policy's, whose adapters are switched off for the reference.
    assert mode.model.reference is None and unets == [mode.model.denoiser]
    base = sum(p.numel() for p in mode.model.denoiser.parameters() if not p.requires_grad)
    assert sum(p.numel() for p in mode.model.parameters()) < 1.5 * base  # base + adapters, once
    del mode, unets
    # The old way, kept behind a flag: a second full UNet.
    copy = dataclasses.replace(spec, upstream_reference="copy")
    mode, unets = _new_unets(lambda: build_mode(copy, bench_root, "upstream", True))
    assert len(unets) == 2 and mode.model.reference in unets and mode.model.denoiser in unets


@pytest.mark.parametrize("mode", ["ours", "upstream"])
def test_checkpointing_gives_the_same_loss_and_gradients(bench_root: Path, mode: str) -> None:
    from dspo.objectives import get_objective, objective_kwargs
    from dspo.training.preference import preference_loss

    results = []
    for checkpointing in (False, True):
        spec = dataclasses.replace(SPEC, lora=4, checkpointing=checkpointing)
        torch.manual_seed(0)  # the same LoRA initialisation
        built = build_mode(spec, bench_root, mode, needs_reference=True)
        built.model.train()
        assert built.model.denoiser.is_gradient_checkpointing == checkpointing
        batch = built.next_batch(0, 0)
        loss, _ = preference_loss(
            built.model, batch, get_objective("dspo"), objective_kwargs("dspo")
        )
        loss.backward()
        grads = {n: p.grad for n, p in built.model.named_parameters() if p.requires_grad}
        results.append((loss.detach(), grads))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert grads_a and grads_a.keys() == grads_b.keys()
    torch.testing.assert_close(loss_b, loss_a, rtol=0, atol=1e-5)
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, rtol=0, atol=1e-5, msg=name)


def test_upstream_loader_visits_the_trainer_rows_in_order() -> None:
    from dspo.training.preference import step_rows

    spec = dataclasses.replace(SPEC, pairs=4, accumulation=2)
    batches = visit_order(spec, 12, 3)
    assert len(batches) == 3 * 2
    for step in range(3):
        first, second = batches[2 * step], batches[2 * step + 1]
        assert {s for s, _ in first + second} == {step}
        assert [r for _, r in first + second] == step_rows(12, 4, spec.seed, step).tolist()


def test_cpu_attention_counts_like_its_matmuls() -> None:
    q, k, v = (torch.randn(2, 3, 16, 8, requires_grad=True) for _ in range(3))

    def scores() -> torch.Tensor:
        return q @ k.transpose(-1, -2) / 8**0.5

    def fused(backward: bool) -> None:
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        if backward:
            out.sum().backward()

    def explicit(backward: bool) -> None:
        out = torch.softmax(scores(), dim=-1) @ v
        if backward:
            out.sum().backward()

    with torch.no_grad():
        assert counted(lambda: fused(False))[1] == counted(lambda: explicit(False))[1] > 0
    # The fused backward recomputes the attention scores from the saved log-sum-exp.
    with torch.no_grad():
        recompute = counted(scores)[1]
    assert counted(lambda: fused(True))[1] == counted(lambda: explicit(True))[1] + recompute


def test_dense_bf16_peaks_by_device_name() -> None:
    assert dense_bf16_peak("NVIDIA H100 PCIe") < dense_bf16_peak("NVIDIA H100 80GB HBM3")
    assert dense_bf16_peak("NVIDIA H200") == dense_bf16_peak("NVIDIA H100 80GB HBM3")
    assert (
        dense_bf16_peak("NVIDIA L4")
        < dense_bf16_peak("NVIDIA L40")
        < dense_bf16_peak("NVIDIA L40S")
    )
    assert dense_bf16_peak("NVIDIA A100-SXM4-80GB") is not None
    assert dense_bf16_peak("Tesla V100-SXM2-16GB") is None


def test_resident_peak_counts_memory_touched_after_start_only() -> None:
    import numpy as np

    before = np.ones(64 * 2**20, dtype=np.uint8)  # resident before the start: not counted
    del before
    meter = ResidentPeak()
    meter.start()
    assert meter.peak_mib() < 16
    during = np.ones(96 * 2**20, dtype=np.uint8)
    del during
    assert 90 <= meter.peak_mib() < 120


def test_architecture_sources(tmp_path: Path) -> None:
    assert load_architecture("sd15") == ("sd15", SD15_ARCHITECTURE)
    # One SD1.5: the benchmark's is the stand-in folder's (dspo.standins.architectures).
    assert SD15_ARCHITECTURE["unet"] is architectures.SD15_UNET
    assert SD15_ARCHITECTURE["text_encoder"] is architectures.CLIP_L_TEXT
    assert SD15_ARCHITECTURE["vae"] is architectures.SD_VAE
    flat = tmp_path / "flat.yaml"
    flat.write_text(yaml.safe_dump(TINY_ARCHITECTURE))
    assert load_architecture(str(flat)) == ("flat", TINY_ARCHITECTURE)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(yaml.safe_dump({"base_model": {"path": "x"}}))
    with pytest.raises(ValueError, match="wrong.yaml.*missing: max_length"):
        load_architecture(str(wrong))
    with pytest.raises(FileNotFoundError, match="absent.yaml"):
        load_architecture(str(tmp_path / "absent.yaml"))


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="--dtype fp16 needs --device cuda"):
        BenchSpec(architecture=TINY_ARCHITECTURE, dtype="fp16")
    with pytest.raises(ValueError, match="--pairs must be at least 1"):
        BenchSpec(architecture=TINY_ARCHITECTURE, pairs=0)
    with pytest.raises(ValueError, match="--pairs 3 is not a multiple of --accumulation 2"):
        BenchSpec(architecture=TINY_ARCHITECTURE, pairs=3, accumulation=2)
    with pytest.raises(ValueError, match="--upstream-reference 'twin'"):
        BenchSpec(architecture=TINY_ARCHITECTURE, upstream_reference="twin")
    with pytest.raises(ValueError, match="family 'sdxl'"):
        BenchSpec(architecture={**TINY_ARCHITECTURE, "family": "sdxl"})
    with pytest.raises(SystemExit):
        main(["bench", "train", "--method", "nope"])
