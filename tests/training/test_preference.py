"""One micro-batch assembly for the trainer and the reference job (dspo.training.preference)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from dspo.core.seeding import seeded_generator
from dspo.data.cache import build_cache
from dspo.data.cache_load import load_cache
from dspo.families import load_family
from dspo.objectives import get_objective
from dspo.training.preference import (
    MICRO_BATCH_STREAM,
    make_batch,
    micro_batch,
    noised_inputs,
    step_rows,
)
from dspo.training.settings import TrainSettings
from tests.families.three_tensors import ThreeTensorFamily, register
from tests.training.test_train import BASE_CONFIG


def test_a_micro_batch_is_drawn_from_its_place_in_the_step(
    cache_dir: Path, tiny_model: Path
) -> None:
    settings = TrainSettings.from_config(
        {**BASE_CONFIG, "objective": "dspo", "pairs_per_step": 6, "seed": 3}
    )
    cache, family = load_cache(cache_dir), load_family(str(tiny_model))
    rows = step_rows(len(cache), settings.pairs_per_step, settings.seed, 5)
    batch = micro_batch(cache, rows, 5, 2, settings, family, True)
    # The stream every run so far drew its micro-batches from: (seed, 2, step, start).
    assert MICRO_BATCH_STREAM == 2
    gen = seeded_generator(3, 2, 5, 2)
    expected = make_batch(cache, rows[2:4], settings.prompt_dropout, gen, family, True)
    assert batch.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(batch[key], value), key
    # Another place in the same step draws other noise.
    other = micro_batch(cache, rows, 5, 0, settings, family, True)
    assert not torch.equal(other["noise"], batch["noise"])


def test_a_familys_own_prompt_tensors_reach_the_batch_with_prompt_dropout(
    tiny_model: Path, tiny_pairs: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    register(monkeypatch)  # the family's own module and registry line, nothing else
    build_cache(tiny_pairs, str(tiny_model), tmp_path, resolution=16, dtype="float32")
    stored = load_file(str(tmp_path / "text.safetensors"))
    assert sorted(stored) == ["embeddings", "empty", "empty_pooled", "empty_t5", "pooled", "t5"]

    cache, family = load_cache(tmp_path), load_family(str(tiny_model))
    assert cache.family == "three" and isinstance(family, ThreeTensorFamily)
    config = {**BASE_CONFIG, "objective": "dspo", "pairs_per_step": 24, "local_pairs": 24}
    settings = TrainSettings.from_config({**config, "prompt_dropout": 0.5})
    batch = micro_batch(cache, torch.arange(24), 0, 0, settings, family, True)
    # Each side's rows of every tensor as stored, the empty prompt's where the prompt dropped:
    # the same rows in every tensor and on both sides.
    dropped = (batch["text_w"] == stored["empty"]).flatten(1).all(1)
    assert 0 < int(dropped.sum()) < 24
    names = (("embeddings", "text", "empty"), ("pooled", "pooled", "empty_pooled"))
    for name, prefix, empty in (*names, ("t5", "t5", "empty_t5")):
        for side in "wl":
            expected = stored[name][getattr(cache, f"text_{side}")]
            expected[dropped] = stored[empty]
            assert torch.equal(batch[f"{prefix}_{side}"], expected), (name, side)

    inputs = noised_inputs(batch, get_objective("dspo"), family)
    assert set(inputs.cond) == {"embeddings", "pooled", "t5"}
    assert torch.equal(inputs.cond["t5"], torch.cat([batch["t5_w"], batch["t5_w"]]))
    # The family's forward runs on what the batch gives it.
    cond = {name: value[:2] for name, value in inputs.cond.items()}
    with torch.no_grad():
        out = family.predict(
            family.load_denoiser(str(tiny_model)), inputs.x[:2], inputs.t[:2], cond
        )
    assert out.shape == inputs.x[:2].shape
