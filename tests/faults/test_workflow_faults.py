"""Faults a demanding user injects into the smoke workflow, run for real: edited sampling
settings, a damaged image, weights rewritten at the same path, a user's model folder next
to an inherited toy build, a mistyped model path, and local (non-toy) data sources.

Every test id names the fault; `pytest --collect-only -q tests/faults` counts them.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from tests.workflow_run import SMOKE, copy_run, planned_jobs, snakemake

IMAGES = [
    "results/images/base/pickv2/manifest.parquet",
    "results/images/base/editing/manifest.parquet",
]


def pixels(workdir: Path) -> dict[str, str]:
    """The MD5 of every PNG of the base model's images and edits, by path."""
    return {
        str(p.relative_to(workdir)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted((workdir / "results/images/base").rglob("*.png"))
    }


def config(workdir: Path, name: str, override: dict) -> str:
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(override))
    return str(path)


@pytest.fixture(scope="module")
def workdir(smoke_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the shared smoke run: the smoke preset's toy world, base model, and the base
    model's images and edits, which the tests below damage, remake and rewrite."""
    return copy_run(smoke_run, tmp_path_factory.mktemp("faults") / "run")


def test_damaged_image_is_remade(workdir: Path) -> None:
    before = pixels(workdir)
    damaged = workdir / next(iter(before))
    damaged.write_bytes(damaged.read_bytes()[:100])
    snakemake(
        "--cores", "2", *IMAGES, "--forcerun", *IMAGES, "--configfile", str(SMOKE), cwd=workdir
    )
    assert pixels(workdir) == before


def test_edited_sampling_steps_remake_every_image(workdir: Path) -> None:
    before = pixels(workdir)
    steps = config(workdir, "steps", {"evaluation": {"steps": 4}})
    snakemake("--cores", "2", *IMAGES, "--configfile", str(SMOKE), steps, cwd=workdir)
    after = pixels(workdir)
    assert after.keys() == before.keys()
    assert all(after[p] != before[p] for p in before)


def test_weights_rewritten_at_the_same_path_remake_the_images(workdir: Path) -> None:
    steps = config(workdir, "steps", {"evaluation": {"steps": 4}})
    before = pixels(workdir)
    weights = workdir / "results/models/base/unet/diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    gen = torch.Generator().manual_seed(0)
    save_file(
        {k: t + 0.05 * torch.randn(t.shape, generator=gen).to(t.dtype) for k, t in tensors.items()},
        weights,
    )
    # As after a fix to the code that made the model: the README's forced rerun.
    forced = ["--forcerun", *IMAGES]
    snakemake("--cores", "2", *IMAGES, *forced, "--configfile", str(SMOKE), steps, cwd=workdir)
    after = pixels(workdir)
    assert all(after[p] != before[p] for p in before)


def test_user_model_folder_is_never_an_output(tmp_path: Path) -> None:
    # base_model.build: toy is inherited from the default config; the preset names a folder.
    model = tmp_path / "my-model"
    model.mkdir()
    (model / "model_index.json").write_text("{}")
    own = config(tmp_path, "own", {"base_model": {"path": "my-model"}})
    result = snakemake(
        "--cores", "1", "all", "--forcerun", "base_model", "--configfile", str(SMOKE), own,
        cwd=tmp_path, check=False,
    )  # fmt: skip
    assert result.returncode != 0 and "base_model.build" in result.stdout
    assert [p.name for p in model.iterdir()] == ["model_index.json"]
    assert not (tmp_path / "results").exists()


def test_mistyped_local_model_is_named_before_any_job(tmp_path: Path) -> None:
    (tmp_path / "models/sd15").mkdir(parents=True)
    typo = config(tmp_path, "typo", {"base_model": {"path": "models/sd51", "build": None}})
    result = snakemake(
        "--cores", "1", "all", "--configfile", str(SMOKE), typo, cwd=tmp_path, check=False
    )
    assert result.returncode != 0 and "base_model.path: local model 'models/sd51'" in result.stdout
    assert not (tmp_path / "results").exists()


def test_local_sources_run_and_their_edits_rerun(smoke_run: Path, tmp_path: Path) -> None:
    # The toy world's files, built elsewhere (the shared smoke run), stand in for a user's
    # local data.
    toy = smoke_run / "results/data/toy"
    shutil.copytree(toy / "pairs", tmp_path / "local/pairs")
    shutil.copy(toy / "editing.parquet", tmp_path / "local/edits.parquet")
    (tmp_path / "local/prompts.txt").write_text("a red circle\na blue square\n")
    (tmp_path / "local/validation.txt").write_text("a yellow star\n")
    local = config(
        tmp_path,
        "local",
        {
            "pairs": {"source": {"kind": "parquet", "path": "local/pairs"}},
            "evaluation": {
                "prompt_sets": {
                    "pickv2": {"source": {"kind": "file", "path": "local/prompts.txt"}},
                    # Left out of the training pairs too: a toy set here builds the world.
                    "validation": {"source": {"kind": "file", "path": "local/validation.txt"}},
                },
                "editing": {"source": {"kind": "file", "path": "local/edits.parquet"}},
            },
        },
    )
    targets = [
        "results/data/pairs.parquet",
        "results/data/prompts/pickv2.parquet",
        "results/data/editing.parquet",
    ]
    snakemake("--cores", "2", *targets, "--configfile", str(SMOKE), local, cwd=tmp_path)
    assert not (tmp_path / "results/data/toy").exists()  # nothing toy was built
    pairs = pd.read_parquet(tmp_path / targets[0])
    log = (tmp_path / "results/logs/pairs/gather.log").read_text()
    # Every row of the smoke world's 200 was read from the local folder.
    assert len(pairs) > 0 and f'"kept": {len(pairs)}' in log and '"input": 200' in log
    prompts = pd.read_parquet(tmp_path / targets[1])["prompt"].tolist()
    assert prompts == ["a red circle", "a blue square"]
    # The local files are inputs: editing the prompt file reruns its step, and the pairs,
    # which leave out evaluation prompts (pairs.exclude_eval_prompts).
    (tmp_path / "local/prompts.txt").write_text("a green circle\n")
    result = snakemake("-n", *targets, "--configfile", str(SMOKE), local, cwd=tmp_path)
    assert planned_jobs(result.stdout) == {"prompt_set": 1, "pairs_part": 2, "pairs": 1}
