"""The reward interface and the toy oracle's parts as reward models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dspo.rewards import load_reward, score_manifest
from dspo.toy.render import render
from dspo.toy.scenes import parse_caption

CAPTION = "a large red circle at the center on a white background"


def images() -> list[Image.Image]:
    scene = parse_caption(CAPTION)
    rng = np.random.default_rng(0)
    clean, _ = render(scene, rng, 16, defect_prob=0.0)
    noise = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    return [Image.fromarray(clean), Image.fromarray(noise)]


@pytest.mark.parametrize("part", ["total", "alignment", "aesthetic"])
def test_toy_parts_prefer_the_clean_render(part: str) -> None:
    reward = load_reward({"kind": "toy_oracle", "part": part})
    clean, noise = reward.score(images(), [CAPTION, CAPTION])
    assert clean > noise
    # Batch-size invariance and determinism.
    assert reward.score(images()[:1], [CAPTION])[0] == pytest.approx(clean, rel=1e-12)


def test_unknown_reward_is_named() -> None:
    with pytest.raises(ValueError, match="'pickscor'"):
        load_reward({"kind": "pickscor"})
    with pytest.raises(ValueError, match="'beauty'"):
        load_reward({"kind": "toy_oracle", "part": "beauty"})


def test_score_manifest_is_long_format(tmp_path: Path) -> None:
    for i, image in enumerate(images()):
        image.save(tmp_path / f"{i}.png")
    manifest = pd.DataFrame(
        {
            "prompt_set": "s",
            "prompt_id": [0, 1],
            "prompt": [CAPTION, CAPTION],
            "seed": 0,
            "guidance": 2.0,
            "path": ["0.png", "1.png"],
        }
    )
    rewards = {
        "oracle": {"kind": "toy_oracle"},
        "alignment": {"kind": "toy_oracle", "part": "alignment"},
    }
    scores = score_manifest(manifest, tmp_path, rewards, model_name="base", batch_size=1)
    assert len(scores) == 4 and set(scores["reward"]) == {"oracle", "alignment"}
    assert list(scores.columns[:1]) == ["model"] and "path" not in scores
    assert (
        scores.loc[scores.reward == "oracle", "score"].iloc[0]
        > scores.loc[scores.reward == "oracle", "score"].iloc[1]
    )
