"""The toy world's attribute-binding set and its B-VQA stand-in (reward kind toy_bvqa)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from dspo.rewards import load_reward
from dspo.rewards.bvqa import noun_phrases
from dspo.toy.oracle import oracle_scores
from dspo.toy.render import render
from dspo.toy.scenes import Scene, parse_caption
from dspo.toy.world import ToyWorldConfig, binding_set, build_world


def test_binding_set_is_disjoint_from_every_other_toy_caption(tmp_path: Path) -> None:
    build_world(ToyWorldConfig(n_pairs=200, prompts_per_set=20, binding_prompts=30), tmp_path)
    prompts = pd.read_parquet(tmp_path / "prompts.parquet")
    binding = prompts.loc[prompts["prompt_set"] == "attribute_binding", "prompt"].tolist()
    assert len(binding) == len(set(binding)) == 30
    others = set(prompts.loc[prompts["prompt_set"] != "attribute_binding", "prompt"])
    pairs = pd.read_parquet(tmp_path / "pairs" / "train-00000-of-00001.parquet")
    assert not set(binding) & (others | set(pairs["caption"]))
    for prompt in binding:
        obj, background = noun_phrases(prompt)
        scene = parse_caption(prompt)
        assert parse_caption(obj) == Scene(colour=scene.colour, shape=scene.shape)
        assert parse_caption(background) == Scene(background=scene.background)


def test_binding_set_is_its_own_stream() -> None:
    first = binding_set(24, np.random.default_rng([0, 4]))
    assert first == binding_set(24, np.random.default_rng([0, 4]))
    assert first != binding_set(24, np.random.default_rng([1, 4]))


def test_toy_bvqa_multiplies_the_oracle_alignment_of_each_phrase() -> None:
    scene = Scene(colour="red", shape="circle", position="center", size="large", background="white")
    pixels, _ = render(scene, np.random.default_rng(0), 32, defect_prob=0.0)
    image = Image.fromarray(pixels)
    reward = load_reward({"kind": "toy_bvqa"})
    prompts = [
        "a red circle on a white background",
        "a blue circle on a white background",
        "a red circle on a black background",
    ]
    scores = reward.score([image] * 3, prompts)
    expected = [
        np.prod(oracle_scores(pixels[None].repeat(2, 0), noun_phrases(p))["alignment"])
        for p in prompts
    ]
    np.testing.assert_allclose(scores, expected)
    # A wrong object colour halves the object's phrase; a wrong background zeroes its own.
    assert scores[0] > 0.9 and max(scores[1:]) < 0.6
    assert reward.version.startswith("bvqa toy_oracle")
