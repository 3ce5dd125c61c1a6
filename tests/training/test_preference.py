"""One micro-batch assembly for the trainer and the reference job (dspo.training.preference)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from dspo.core.seeding import seeded_generator
from dspo.data.cache import build_cache, load_cache
from dspo.families import load_family
from dspo.training.preference import MICRO_BATCH_STREAM, make_batch, micro_batch, step_rows
from dspo.training.settings import TrainSettings
from tests.training.test_train import BASE_CONFIG


@pytest.fixture(scope="module")
def cache_dir(tiny_model: Path, tiny_pairs: pd.DataFrame, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cache")
    build_cache(tiny_pairs, str(tiny_model), path, resolution=16, dtype="float32")
    return path


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
