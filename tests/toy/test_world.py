"""The toy world: split, captions, renders, oracle, pairs and the files build_world writes."""

from __future__ import annotations

import io
import itertools
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dspo.toy.oracle import oracle_components, oracle_scores
from dspo.toy.pairs import decode_jpeg, make_pairs, preview_pairs, sample_unlabelled
from dspo.toy.render import DEFECTS, render, render_batch
from dspo.toy.scenes import (
    _VOCAB,
    ATTRIBUTES,
    BACKGROUNDS,
    COLOURS,
    HELDOUT_TEMPLATES,
    TRAIN_TEMPLATES,
    Scene,
    all_scenes,
    caption,
    parse_caption,
    split_scenes,
)
from dspo.toy.world import ToyWorldConfig, build_world

PAIRS_FILE = Path("pairs") / "train-00000-of-00001.parquet"


@pytest.fixture(scope="module")
def split() -> dict[str, list[Scene]]:
    return split_scenes(0)


@pytest.fixture(scope="module")
def batch(split: dict[str, list[Scene]]) -> tuple[np.ndarray, list, list[str]]:
    """3000 renders of train scenes with many defects, and their captions."""
    rng = np.random.default_rng(11)
    scenes = [split["train"][i] for i in rng.integers(0, len(split["train"]), 3000)]
    images, defects = render_batch(scenes, rng, 16, defect_prob=0.3)
    captions = [caption(s, i % 2) for i, s in enumerate(scenes)]
    return images, defects, captions


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("world")
    cfg = ToyWorldConfig(n_pairs=600, prompts_per_set=20)
    return out, build_world(cfg, out)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(pd.Series(a).rank(), pd.Series(b).rank())[0, 1])


# ----------------------------------------------------------------------------- split, captions


def test_split_is_disjoint_complete_and_deterministic(split):
    assert split_scenes(0) == split
    assert split_scenes(1) != split
    sets = {k: set(v) for k, v in split.items()}
    assert sum(len(v) for v in sets.values()) == len(set().union(*sets.values())) == 900
    unseen = {(s.colour, s.shape) for s in sets["unseen_combinations"]}
    assert len(unseen) == 3 and len(sets["unseen_combinations"]) == 3 * 50
    assert not any((s.colour, s.shape) in unseen for s in sets["train"] | sets["heldout_captions"])
    assert len(sets["heldout_captions"]) == 75
    # Every attribute value still occurs in training, only the combinations are new.
    for attr in ATTRIBUTES:
        assert {getattr(s, attr) for s in sets["train"]} == set(_VOCAB[attr])


def test_parse_caption_round_trips_every_template_and_degraded_scene():
    templates = TRAIN_TEMPLATES + HELDOUT_TEMPLATES
    for scene, t in itertools.product(all_scenes(), templates):
        assert parse_caption(caption(scene, t)) == scene
    scene = Scene("orange", "triangle", "top", "small", "navy")
    for t, dropped in itertools.product(templates, ATTRIBUTES):
        partial = replace(scene, **{dropped: None})
        text = caption(partial, t)
        assert parse_caption(text) == partial, text
        assert "  " not in text and not text.endswith(",")
    assert parse_caption("nothing to see here") == Scene()
    # Held-out templates use other wording than the training ones.
    train_words = {w for t in TRAIN_TEMPLATES for w in caption(scene, t).split()}
    assert "backdrop" not in train_words
    assert all("backdrop" in caption(scene, t) for t in HELDOUT_TEMPLATES)


def test_backgrounds_never_equal_object_colours():
    assert not set(BACKGROUNDS.values()) & set(COLOURS.values())
    assert not set(BACKGROUNDS) & set(COLOURS)


# ----------------------------------------------------------------------------- rendering


@pytest.mark.parametrize("size", [16, 32])
def test_render_jitters_antialiases_and_applies_defects(size):
    scene = Scene("red", "circle", "left", "large", "white")
    rng = np.random.default_rng(0)
    a, da = render(scene, rng, size, defect_prob=0.0)
    b, _ = render(scene, rng, size, defect_prob=0.0)
    assert a.shape == (size, size, 3) and a.dtype == np.uint8
    assert da == () and not np.array_equal(a, b)
    # Anti-aliased edges: more than the two flat colours.
    assert len(np.unique(a.reshape(-1, 3), axis=0)) > 4
    # The object sits in the left half of the frame.
    dark = (255 - a.astype(int)).sum(axis=2)
    cols = dark.sum(axis=0)
    assert cols[: size // 2].sum() > 3 * cols[size // 2 :].sum()
    _, all_defects = render(scene, rng, size, defect_prob=1.0)
    assert all_defects == DEFECTS


def test_render_batch_defect_rate(batch):
    _, defects, _ = batch
    counts = {d: sum(d in ds for ds in defects) / len(defects) for d in DEFECTS}
    assert all(0.25 < c < 0.35 for c in counts.values()), counts


def test_render_fills_unstated_attributes():
    images, _ = render_batch([Scene(colour="blue")] * 4, np.random.default_rng(0), 16, 0)
    assert images.shape == (4, 16, 16, 3)
    scores = oracle_scores(images, ["blue"] * 4)
    assert scores["alignment"].min() > 0.9


# ----------------------------------------------------------------------------- oracle


@pytest.mark.parametrize("size", [16, 32])
def test_clean_renders_score_high(split, size):
    rng = np.random.default_rng(size)
    scenes = [split["train"][i] for i in rng.integers(0, len(split["train"]), 500)]
    images, _ = render_batch(scenes, rng, size, defect_prob=0.0)
    s = oracle_scores(images, [caption(sc, 0) for sc in scenes])
    assert set(s) == {"alignment", "aesthetic", "total"}
    assert all(v.shape == (500,) and v.min() >= 0 and v.max() <= 1 for v in s.values())
    np.testing.assert_allclose(s["total"], 0.5 * s["alignment"] + 0.5 * s["aesthetic"])
    assert s["total"].mean() > 0.93
    assert np.percentile(s["total"], 5) > 0.85


def test_each_defect_lowers_its_part(batch):
    images, defects, captions = batch
    s = oracle_scores(images, captions)
    clean = np.array([d == () for d in defects])
    # Aesthetic defects leave alignment checks of colour/shape/position mostly alone and
    # vice versa; each must lower its own part clearly.
    part = {
        "wrong_colour": "alignment",
        "wrong_shape": "alignment",
        "misplaced": "alignment",
        "blur": "aesthetic",
        "noise": "aesthetic",
        "low_contrast": "aesthetic",
    }
    for defect, key in part.items():
        only = np.array([d == (defect,) for d in defects])
        assert only.sum() > 50
        drop = s[key][clean].mean() - s[key][only].mean()
        assert drop > 0.15, (defect, key, drop)
        assert s["total"][only].mean() < s["total"][clean].mean() - 0.07, defect


def test_total_falls_with_number_of_defects(batch):
    images, defects, captions = batch
    total = oracle_scores(images, captions)["total"]
    n_defects = np.array([len(d) for d in defects])
    assert _spearman(total, n_defects) < -0.75


def test_noise_and_uniform_images_score_low(batch):
    _, _, captions = batch
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (200, 16, 16, 3)).astype(np.uint8)
    gray = np.full((200, 16, 16, 3), 128, np.uint8)
    for images in (noise, gray):
        assert oracle_scores(images, captions[:200])["total"].max() < 0.35


def test_oracle_is_graded():
    scene = Scene("green", "square", "center", "large", "black")
    text = caption(scene, 1)
    img, _ = render(scene, np.random.default_rng(3), 32, defect_prob=0.0)
    # Sliding the object away from the stated position costs more the further it goes.
    shifted = np.stack([np.roll(img, k, axis=1) for k in range(0, 12, 2)])
    align = oracle_scores(shifted, [text] * len(shifted))["alignment"]
    assert np.all(np.diff(align) < 0) and align[1] > align[-1] + 0.1
    # A colour a quarter of the way to another colour earns partial credit.
    bg = np.array(BACKGROUNDS["black"], float)
    mask = np.abs(img.astype(float) - bg).sum(axis=2, keepdims=True) > 60
    near = 0.75 * np.array(COLOURS["green"]) + 0.25 * np.array(COLOURS["blue"])
    far = np.array(COLOURS["red"], float)
    recoloured = [np.where(mask, c, img).astype(np.uint8) for c in (near, far)]
    parts = oracle_components(np.stack([img, *recoloured]), [text] * 3)["colour"]
    assert parts[0] > 0.9 and 0.15 < parts[1] < 0.75 and parts[2] < 0.05, parts


def test_oracle_handles_other_sizes_and_partial_captions():
    scene = Scene("yellow", "triangle", "bottom", "small", "navy")
    img32, _ = render(scene, np.random.default_rng(1), 32, defect_prob=0.0)
    img16, _ = render(scene, np.random.default_rng(1), 16, defect_prob=0.0)
    text = caption(scene, 0)
    assert oracle_scores(img32[None], [text])["total"][0] > 0.9
    assert oracle_scores(img16[None], [text])["total"][0] > 0.9
    # Degraded prompts: only stated words count; a caption stating nothing is always met.
    wrong = caption(Scene("red", "circle", "top", "large", "white"), 0)
    s = oracle_scores(np.stack([img16] * 3), ["yellow on navy", "nothing", wrong])
    assert s["alignment"][0] > 0.9 and s["alignment"][1] == 1.0 and s["alignment"][2] < 0.2
    with pytest.raises(ValueError):
        oracle_scores(img16, [text])


# ----------------------------------------------------------------------------- pairs, world


def test_make_pairs_schema_labels_and_ties(split):
    df = make_pairs(split["train"], np.random.default_rng(5), 400, max_pairs_per_prompt=4)
    expected = {
        "caption": str,
        "jpg_0": bytes,
        "jpg_1": bytes,
        "image_0_uid": str,
        "image_1_uid": str,
        "image_0_url": str,
        "image_1_url": str,
        "model_0": str,
        "model_1": str,
        "best_image_uid": str,
    }
    for col, typ in expected.items():
        assert all(isinstance(v, typ) for v in df[col]), col
    for col in ("label_0", "label_1"):
        assert df[col].dtype == np.float64
    for col in ("ranking_id", "user_id", "num_example_per_prompt"):
        assert df[col].dtype == np.int64
    assert df["are_different"].dtype == bool and df["are_different"].all()
    assert df["has_label"].dtype == bool and df["has_label"].all()
    assert len(df) == 400 and df["ranking_id"].is_unique
    assert set(df["label_0"]) <= {0.0, 0.5, 1.0}
    np.testing.assert_array_equal(df["label_0"] + df["label_1"], 1.0)

    tie = df["label_0"] == 0.5
    assert 0 < tie.sum() < len(df) // 2
    assert (df.loc[tie, "best_image_uid"] == "").all()
    win0 = df["label_0"] == 1.0
    assert (df.loc[win0, "best_image_uid"] == df.loc[win0, "image_0_uid"]).all()
    assert (df.loc[~win0 & ~tie, "best_image_uid"] == df.loc[~win0 & ~tie, "image_1_uid"]).all()
    assert all(uuid.UUID(u).version == 4 for u in df["image_0_uid"])
    assert (df["image_0_url"] == "toy://" + df["image_0_uid"]).all()
    counts = df.groupby("caption")["caption"].transform("size")
    assert (df["num_example_per_prompt"] == counts).all() and counts.max() > 1

    first = Image.open(io.BytesIO(df["jpg_0"].iloc[0]))
    assert first.format == "JPEG" and first.size == (16, 16) and first.mode == "RGB"
    train = set(split["train"])
    assert all(parse_caption(c) in train for c in df["caption"])


def test_labels_follow_the_oracle(split):
    df = make_pairs(split["train"], np.random.default_rng(6), 800)
    dec = [np.stack([decode_jpeg(b) for b in df[f"jpg_{i}"]]) for i in (0, 1)]
    r0, r1 = (oracle_scores(d, list(df["caption"]))["total"] for d in dec)
    decided = df["label_0"] != 0.5
    agreement = ((df["label_0"] == 1.0) == (r0 > r1))[decided].mean()
    assert agreement > 0.8, agreement
    # Ties are exactly the pairs whose oracle totals are within the margin.
    assert ((np.abs(r0 - r1) < 0.01) == ~decided).all()


def test_build_world_files_and_stats(world, split):
    out, stats = world
    assert stats["n_pairs"] == 600 and 0 < stats["n_ties"] < 300
    assert stats["label_agreement"] > 0.8
    assert 0.5 < stats["defect_rate"] < 0.75  # 1 - 0.85**6 = 0.62
    assert stats["mean_total_clean"] > stats["mean_total_defective"] + 0.15
    pairs = pd.read_parquet(out / PAIRS_FILE)
    assert stats["n_unique_captions"] == pairs["caption"].nunique()
    prompts = pd.read_parquet(out / "prompts.parquet")
    assert list(prompts.columns) == ["prompt_set", "prompt_id", "prompt"]
    assert prompts["prompt_id"].dtype == np.int64
    sizes = prompts.groupby("prompt_set").size().to_dict()
    assert sizes == {
        "heldout_captions": 20,
        "unseen_combinations": 20,
        "new_templates": 20,
        "attribute_binding": 24,
        "validation": 20,
    }
    assert not set(prompts["prompt"]) & set(pairs["caption"])
    for name, scenes in (
        ("heldout_captions", split["heldout_captions"]),
        ("unseen_combinations", split["unseen_combinations"]),
        ("new_templates", split["heldout_captions"]),
    ):
        texts = prompts.loc[prompts["prompt_set"] == name, "prompt"]
        assert all(parse_caption(t) in set(scenes) for t in texts), name
        assert all(("backdrop" in t) == (name == "new_templates") for t in texts), name


def test_the_validation_split_shows_no_scene_of_a_test_prompt(world, split):
    """The step choice's validation set: held-out scenes (no training caption) that no test
    prompt of the same scenes shows, in training templates."""
    prompts = pd.read_parquet(world[0] / "prompts.parquet")
    scenes = {s: {parse_caption(t) for t in p} for s, p in prompts.groupby("prompt_set")["prompt"]}
    assert scenes["validation"] <= set(split["heldout_captions"])
    assert len(scenes["validation"]) == 20
    for test_set in ("heldout_captions", "unseen_combinations", "new_templates"):
        assert not scenes["validation"] & scenes[test_set], test_set
    texts = prompts.loc[prompts["prompt_set"] == "validation", "prompt"]
    assert not any("backdrop" in t for t in texts)


def test_build_world_is_byte_deterministic(world, tmp_path):
    out, stats = world
    again = build_world(ToyWorldConfig(n_pairs=600, prompts_per_set=20), tmp_path)
    assert again == stats
    for rel in (PAIRS_FILE, Path("prompts.parquet")):
        assert (out / rel).read_bytes() == (tmp_path / rel).read_bytes()


def test_config_from_dict():
    cfg = ToyWorldConfig.from_dict({"seed": 3, "image_size": 32})
    assert cfg == ToyWorldConfig(seed=3, image_size=32)
    with pytest.raises(ValueError, match="n_pair"):
        ToyWorldConfig.from_dict({"n_pair": 10})
    with pytest.raises(ValueError, match="image_size"):
        ToyWorldConfig(image_size=8)


def test_sample_unlabelled(split):
    cfg = ToyWorldConfig(image_size=32)
    images, captions = sample_unlabelled(cfg, np.random.default_rng(0), 64)
    assert images.shape == (64, 32, 32, 3) and images.dtype == np.uint8
    assert len(captions) == 64
    train = set(split["train"])
    assert all(parse_caption(c) in train and "backdrop" not in c for c in captions)


def test_preview_pairs(world, tmp_path):
    out, _ = world
    png = tmp_path / "preview.png"
    preview_pairs(out / PAIRS_FILE, png, n=4)
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] >= 600 and im.size[1] >= 400
        pixels = np.asarray(im.convert("L"))
    # Nothing runs off the edges: the last row's score lines are inside the picture.
    for edge in (pixels[:2], pixels[-2:], pixels[:, :2], pixels[:, -2:]):
        assert edge.min() == 255
