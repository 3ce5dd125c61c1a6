"""Shared fixtures: a tiny SD-shaped pipeline saved to disk, and small pair tables."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dspo.data.pairs import prompt_id_of
from dspo.models import build_pipeline

TINY_ARCHITECTURE = {
    "max_length": 12,
    "text_encoder": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
    },
    "vae": {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
        "block_out_channels": [16, 32],
        "latent_channels": 4,
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "sample_size": 16,
    },
    "unet": {
        "sample_size": 8,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": [16, 32],
        "layers_per_block": 1,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
        "attention_head_dim": 8,
        "norm_num_groups": 8,
    },
    "scheduler": {"num_train_timesteps": 1000, "clip_sample": False, "steps_offset": 1},
}
WORDS = ["a", "red", "blue", "green", "circle", "square", "on", "white", "black", "background"]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init SD-shaped pipeline saved with save_pretrained, as a hub checkpoint is."""
    path = tmp_path_factory.mktemp("models") / "tiny"
    build_pipeline(TINY_ARCHITECTURE, WORDS, seed=0).save_pretrained(path)
    return path


def jpeg(colour: tuple[int, int, int], size: int = 16) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def tiny_pairs() -> pd.DataFrame:
    """A canonical pair table: 24 pairs over 6 captions, plain-colour images."""
    rng = np.random.default_rng(0)
    captions = [f"a {c} {s}" for c in ("red", "blue", "green") for s in ("circle", "square")]
    rows = []
    for i in range(24):
        caption = captions[i % len(captions)]
        rows.append(
            {
                "pair_id": i,
                "prompt_id": prompt_id_of(caption),
                "caption": caption,
                "jpg_w": jpeg(tuple(int(v) for v in rng.integers(0, 256, 3))),
                "jpg_l": jpeg(tuple(int(v) for v in rng.integers(0, 256, 3))),
                "label_w": 1.0,
                "source_row": i,
            }
        )
    return pd.DataFrame(rows)
