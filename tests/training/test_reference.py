"""The reference computed before training: same weights as the online reference, no
reference forward in training, a clear error when it belongs to another run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import dspo.training.preference as preference
from dspo.training.reference import PrecomputedReference, compute_part, gather, reference_parts
from dspo.training.settings import TrainSettings
from tests.training.test_train import BASE_CONFIG, assert_same_weights, run, unet_weights

# A full fine-tuning run (the online reference is a copy) with prompt dropout, so every kind
# of batch randomness must be replayed exactly; 3 micro-batches per step.
CFG = {**BASE_CONFIG, "steps": 3, "pairs_per_step": 6, "local_pairs": 2, "checkpoint_every": 0}


def precompute(cfg: dict, cache: Path, base: Path, root: Path, parts: int, factor: int) -> Path:
    dirs = []
    for part in range(parts):
        out = root / "parts" / str(part)
        compute_part(cfg, cache, str(base), out, part=part, parts=parts, batch_factor=factor)
        dirs.append(out)
    folder = root / "reference"
    gather(dirs, folder)
    return folder


def trained(cfg: dict, cache: Path, base: Path, root: Path, reference: Path | None) -> Path:
    run(cfg, cache, base, root, reference_dir=reference)
    return root / "model"


@pytest.mark.parametrize(
    "method",
    [
        {"objective": "dspo", "params": {"lam": 0.5, "kappa": 100.0}},
        {"objective": "diffusion_dpo", "params": {"beta": 50.0}},
        {"objective": "dspo_e", "params": {"lam": 0.5}},
    ],
    ids=lambda m: m["objective"],
)
def test_precomputed_reference_trains_bit_identical_weights(
    method: dict, cache_dir: Path, tiny_model: Path, tmp_path: Path, monkeypatch
) -> None:
    cfg = {**CFG, **method}
    online = trained(cfg, cache_dir, tiny_model, tmp_path / "online", None)
    # Two parts, one micro-batch per forward: exactly the trainer's own forwards.
    folder = precompute(cfg, cache_dir, tiny_model, tmp_path / "pre", parts=2, factor=1)
    manifest = json.loads((folder / "reference.json").read_text())
    visits = CFG["steps"] * CFG["pairs_per_step"]
    columns = 1 if method["objective"] == "dspo_e" else 2
    from dspo.data.cache_load import load_cache

    latent = 4 * torch.Size(load_cache(cache_dir).manifest["latent_shape"]).numel()  # float32
    uses_prediction = method["objective"] != "diffusion_dpo"
    assert manifest["bytes_per_visit"] == pytest.approx(
        4 * columns + latent * uses_prediction + 2 * 128 / visits, rel=0.05
    )

    def no_reference(*args, **kwargs):
        raise AssertionError("the reference ran during training")

    monkeypatch.setattr(preference.PreferenceModel, "ref", no_reference)
    pre = trained(cfg, cache_dir, tiny_model, tmp_path / "precomputed", folder)
    first, second = unet_weights(online), unet_weights(pre)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_larger_reference_batches_stay_within_rounding(
    cache_dir: Path, tiny_model: Path, tmp_path: Path
) -> None:
    cfg = {**CFG, "objective": "dspo", "params": {"lam": 0.5, "kappa": 100.0}}
    online = trained(cfg, cache_dir, tiny_model, tmp_path / "online", None)
    folder = precompute(cfg, cache_dir, tiny_model, tmp_path / "pre", parts=1, factor=3)
    pre = trained(cfg, cache_dir, tiny_model, tmp_path / "precomputed", folder)
    # Three steps of AdamW at lr 1e-3 move a weight by at most ~3e-3; float32 rounding of the
    # reference (relative 1e-7) cannot move the weights by more than a small part of that.
    assert_same_weights(online, pre, atol=1e-5)


def test_a_reference_of_another_run_is_refused(
    cache_dir: Path, tiny_model: Path, tmp_path: Path
) -> None:
    cfg = {**CFG, "objective": "diffusion_dpo", "params": {"beta": 50.0}}
    folder = precompute(cfg, cache_dir, tiny_model, tmp_path / "pre", parts=1, factor=1)
    from dspo.data.cache_load import load_cache
    from dspo.objectives import get_objective

    manifest = load_cache(cache_dir).manifest
    settings = TrainSettings.from_config({**cfg, "seed": 1})
    other = reference_parts(settings, get_objective("diffusion_dpo"), str(tiny_model), manifest)
    with pytest.raises(ValueError, match="training config changed; rerun the reference job"):
        PrecomputedReference(folder, other, cfg["pairs_per_step"])
    with pytest.raises(ValueError, match="cannot use a precomputed reference"):
        compute_part({**cfg, "objective": "ddspo"}, cache_dir, str(tiny_model), tmp_path / "x")
