"""scripts/compare_runs.py: two runs' results compared as the move check needs."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from dspo.generation.sample import save_image

REPO = Path(__file__).resolve().parents[2]
SPEC = importlib.util.spec_from_file_location("compare_runs", REPO / "scripts" / "compare_runs.py")
compare_runs = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(compare_runs)


def _run(root: Path, key: str, pixel: float = 0.5) -> Path:
    results = root / "results"
    (results / "models" / "m").mkdir(parents=True)
    (results / "models" / "m" / "unet.safetensors").write_bytes(b"weights")
    (results / "tables").mkdir()
    (results / "tables" / "win_rates.csv").write_text("method,win_rate\ndspo,0.5\n")
    (results / "benchmarks").mkdir()
    (results / "benchmarks" / "job.tsv").write_text(f"s\n{len(key)}\n")  # differs: skipped
    image = np.full((4, 4, 3), pixel)
    save_image(image, results / "images" / "p0.png", key=key)
    pd.DataFrame({"prompt": ["a"], "key": [key]}).to_parquet(results / "scores.parquet")
    return results


def test_runs_that_differ_only_in_keys_and_timings_are_the_same(tmp_path: Path) -> None:
    old, new = _run(tmp_path / "old", "k1"), _run(tmp_path / "new", "another key")
    assert (old / "images/p0.png").read_bytes() != (new / "images/p0.png").read_bytes()
    assert compare_runs.main(old, new) == 0


def test_a_changed_pixel_weight_or_missing_file_is_a_difference(tmp_path: Path, capsys) -> None:
    old = _run(tmp_path / "old", "k")
    new = _run(tmp_path / "new", "k", pixel=0.25)
    assert compare_runs.main(old, new) == 1
    assert "images/p0.png" in capsys.readouterr().out
    shutil.rmtree(new)
    new = _run(tmp_path / "new", "k")
    (new / "models/m/unet.safetensors").write_bytes(b"other")
    (new / "tables/win_rates.csv").unlink()
    assert compare_runs.main(old, new) == 1
    out = capsys.readouterr().out
    assert "models/m/unet.safetensors" in out and "1 missing" in out
