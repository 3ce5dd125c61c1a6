"""The training benchmark: both modes measured, figures well-formed, ratios consistent."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from dspo.bench import SD15_ARCHITECTURE, BenchSpec, ResidentPeak, load_architecture
from dspo.cli import main
from tests.conftest import TINY_ARCHITECTURE


def test_both_modes_report_positive_finite_figures(tmp_path: Path, capsys) -> None:
    # LoRA, so that ours uses the disabled-adapter reference and upstream a second UNet.
    arch = tmp_path / "arch.yaml"
    arch.write_text(yaml.safe_dump({"base_model": {"architecture": TINY_ARCHITECTURE}}))
    out = tmp_path / "bench.json"
    argv = ["bench", "train", "--arch", str(arch), "--latent", "4", "--pairs", "2"]
    main([*argv, "--steps", "2", "--warmup", "1", "--lora", "4", "--json", str(out)])
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert set(result["modes"]) == {"ours", "upstream"}
    for mode, figures in result["modes"].items():
        assert mode in printed
        for key in ("seconds", "s_per_step", "pairs_per_s", "peak_mib", "last_loss"):
            assert math.isfinite(figures[key]), (mode, key)
        for key in ("seconds", "pairs_per_s", "trainable_params_m"):
            assert figures[key] > 0, (mode, key)
        # At this size the steps may fit in pages the imports already made resident.
        assert figures["peak_mib"] >= 0, mode
        assert figures["pairs_per_s"] == pytest.approx(2 * 2 / figures["seconds"])
    ours, upstream = result["modes"]["ours"], result["modes"]["upstream"]
    ratio = result["ratio"]
    assert ratio["pairs_per_s"] == pytest.approx(ours["pairs_per_s"] / upstream["pairs_per_s"])
    # Upstream holds a second UNet and the VAE, which ours does not.
    assert upstream["peak_mib"] > 0
    assert ratio["peak_mib"] == pytest.approx(ours["peak_mib"] / upstream["peak_mib"])
    # Both modes train the same LoRA parameters; only the data path and reference differ.
    assert ours["trainable_params_m"] == upstream["trainable_params_m"]
    assert result["resolution"] == 8  # latent 4 through a 2-block VAE
    assert f"x{ratio['pairs_per_s']:.2f}" in printed


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
    with pytest.raises(ValueError, match="family 'sdxl'"):
        BenchSpec(architecture={**TINY_ARCHITECTURE, "family": "sdxl"})
    with pytest.raises(SystemExit):
        main(["bench", "train", "--method", "nope"])
