"""The generated pair source (dspo.data.generated): pairing rules, labels, resumable parts."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dspo.data.generated import chunk_folder, chunk_key, form_pairs, label_part, make_images_part
from dspo.data.generated_config import generated_problems, generated_settings, label_weights
from dspo.data.pairs import prompt_id_of
from dspo.data.sources import REQUIRED_COLUMNS
from dspo.generation import sample
from dspo.rewards import load_reward

CAPTIONS = [
    "a small red circle at the center on a white background",
    "a large blue square at the left on a black background",
    "a small yellow triangle at the top on a gray background",
]
ALIGNMENT = {"kind": "toy_oracle", "part": "alignment"}
AESTHETIC = {"kind": "toy_oracle", "part": "aesthetic"}


def test_best_worst_pairs_each_prompts_best_against_its_worst() -> None:
    assert form_pairs([0.2, 0.9, 0.1, 0.5], "best_worst", 0.0) == [(1, 2, 1.0)]
    assert form_pairs([0.9, 0.2, 0.1], "best_worst", 0.0) == [(0, 2, 1.0)]


def test_margin_pairs_every_image_pair_ties_within_the_margin() -> None:
    pairs = form_pairs([0.50, 0.52, 0.90], "margin", 0.05)
    assert pairs == [(0, 1, 0.5), (0, 2, 0.0), (1, 2, 0.0)]
    # A gap equal to the margin is a tie; just above it is decided.
    assert form_pairs([1.0, 0.75], "margin", 0.25) == [(0, 1, 0.5)]
    assert form_pairs([1.0, 0.74], "margin", 0.25) == [(0, 1, 1.0)]
    assert form_pairs([0.1, 0.3], "best_worst", 0.5) == [(0, 1, 0.5)]


def _keyed_images(folder: Path, k: int, seed: int = 0) -> Path:
    """K random 16x16 images per caption, written and listed as `dspo generate` does."""
    rng = np.random.default_rng(seed)
    rows = []
    for caption in CAPTIONS:
        for s in range(k):
            path = f"g3/p{prompt_id_of(caption)}-s{s}.png"
            sample.save_image(rng.random((16, 16, 3)), folder / path, key=f"k{s}{caption}")
            rows.append(
                {
                    "prompt_set": "generated",
                    "prompt_id": prompt_id_of(caption),
                    "prompt": caption,
                    "seed": s,
                    "guidance": 3.0,
                    "path": path,
                    "key": f"k{s}{caption}",
                }
            )
    manifest = folder / "manifest.parquet"
    pd.DataFrame(rows).to_parquet(manifest, index=False)
    return manifest


def _rescore(pairs: pd.DataFrame, weights: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """The labelling reward of each pair's two images, scored again from the written bytes."""
    specs = {"alignment": ALIGNMENT, "aesthetic": AESTHETIC}
    totals = []
    for column in ("jpg_0", "jpg_1"):
        images = [Image.open(io.BytesIO(b)) for b in pairs[column]]
        total = sum(
            w * load_reward(specs[name]).score(images, pairs["caption"].tolist())
            for name, w in weights.items()
        )
        totals.append(np.asarray(total, np.float64))
    return totals[0], totals[1]


@pytest.mark.parametrize(
    ("rule", "margin", "weights"),
    [
        ("margin", 0.0, {"alignment": 1.0}),
        ("margin", 0.05, {"alignment": 0.5, "aesthetic": 0.5}),
        ("best_worst", 0.0, {"alignment": 1.0}),
    ],
)
def test_labels_follow_the_labelling_reward_on_every_pair(
    tmp_path: Path, rule: str, margin: float, weights: dict[str, float]
) -> None:
    manifest = _keyed_images(tmp_path / "images", k=4)
    out = tmp_path / "labels" / "part0.parquet"
    settings = {"weights": weights, "rule": rule, "margin": margin}
    rewards = {"alignment": ALIGNMENT, "aesthetic": AESTHETIC}
    counts = label_part(manifest, rewards, settings, out, prompts_per_chunk=2)
    pairs = pd.read_parquet(out)
    # Pick-a-Pic's columns (yuvalkirstain/pickapic_v2), so the pair source reads the file.
    assert set(REQUIRED_COLUMNS) <= set(pairs.columns)
    assert len(pairs) == counts["pairs"] == len(CAPTIONS) * (6 if rule == "margin" else 1)
    score_0, score_1 = _rescore(pairs, weights)
    np.testing.assert_allclose(pairs["score_0"], score_0, rtol=1e-6)
    gap = score_0 - score_1
    expected = np.where(np.abs(gap) <= margin, 0.5, (gap > 0).astype(float))
    np.testing.assert_array_equal(pairs["label_0"].to_numpy(), expected)
    np.testing.assert_array_equal(pairs["label_1"].to_numpy(), 1.0 - expected)
    if margin:
        assert 0 < counts["ties"] == int((np.abs(gap) <= margin).sum())


def test_labelling_refuses_an_image_that_is_not_the_manifests(tmp_path: Path) -> None:
    manifest = _keyed_images(tmp_path / "images", k=2)
    first = pd.read_parquet(manifest)["path"][0]
    sample.save_image(np.zeros((16, 16, 3)), tmp_path / "images" / first, key="another")
    with pytest.raises(ValueError, match="key"):
        label_part(manifest, {"alignment": ALIGNMENT}, {"weights": {"alignment": 1.0},
                   "rule": "margin", "margin": 0.0}, tmp_path / "out.parquet")  # fmt: skip
    assert not (tmp_path / "out.parquet").exists()


def test_labelling_killed_after_a_chunk_resumes_with_the_chunks_it_lacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dspo.rewards

    manifest = _keyed_images(tmp_path / "images", k=3)
    settings = {"weights": {"alignment": 1.0}, "rule": "margin", "margin": 0.0}
    rewards = {"alignment": ALIGNMENT}
    whole = tmp_path / "whole.parquet"
    label_part(manifest, rewards, settings, whole, prompts_per_chunk=1)

    scored: list[int] = []
    real = dspo.rewards.score_manifest

    def killed_after_one(chunk: pd.DataFrame, *args: object, **kwargs: object) -> pd.DataFrame:
        if scored:
            raise KeyboardInterrupt  # the job is cut during its second chunk
        scored.append(len(chunk))
        return real(chunk, *args, **kwargs)

    out = tmp_path / "labels" / "part0.parquet"
    monkeypatch.setattr(dspo.rewards, "score_manifest", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        label_part(manifest, rewards, settings, out, prompts_per_chunk=1)
    assert not out.exists() and len(list(chunk_folder(out).glob("chunk*.parquet"))) == 1

    calls: list[int] = []

    def counted(chunk: pd.DataFrame, *args: object, **kwargs: object) -> pd.DataFrame:
        calls.append(len(chunk))
        return real(chunk, *args, **kwargs)

    monkeypatch.setattr(dspo.rewards, "score_manifest", counted)
    counts = label_part(manifest, rewards, settings, out, prompts_per_chunk=1)
    # The first prompt's chunk is read back; the other two are scored.
    assert counts["chunks_resumed"] == 1 and calls == [3, 3]
    pd.testing.assert_frame_equal(pd.read_parquet(out), pd.read_parquet(whole))
    assert not chunk_folder(out).exists()


def test_a_changed_labelling_reward_does_not_reuse_a_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = _keyed_images(tmp_path / "images", k=2)
    out = tmp_path / "labels" / "part0.parquet"
    aligned = {"weights": {"alignment": 1.0}, "rule": "margin", "margin": 0.0}
    # A chunk left by a killed run that labelled with the alignment part ...
    chunk = pd.read_parquet(manifest)
    stale = (
        chunk_folder(out)
        / f"chunk00000-{chunk_key(chunk, {'alignment': ALIGNMENT}, aligned)}.parquet"
    )
    label_part(manifest, {"alignment": ALIGNMENT}, aligned, tmp_path / "a.parquet")
    stale.parent.mkdir(parents=True)
    stale.write_bytes((tmp_path / "a.parquet").read_bytes())
    # ... is not read by a run that labels with the aesthetics part.
    pretty = {"weights": {"aesthetic": 1.0}, "rule": "margin", "margin": 0.0}
    counts = label_part(manifest, {"aesthetic": AESTHETIC}, pretty, out)
    assert counts["chunks_resumed"] == 0
    label_part(manifest, {"aesthetic": AESTHETIC}, pretty, tmp_path / "b.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(out), pd.read_parquet(tmp_path / "b.parquet"))


def _settings(shards: int = 1) -> dict:
    source = {"kind": "generated", "prompts": {"kind": "toy"}, "label": {"reward": "alignment"},
              "images_per_prompt": 3, "seed": 5, "shards": shards}  # fmt: skip
    resolved = generated_settings(source, {"guidance": [2.0]})
    sampling = {"steps": 2, "scheduler": "ddim", "resolution": 16, "batch_size": 4}
    return {**resolved, **sampling, "dtype": "float32"}


def _prompts() -> pd.DataFrame:
    ids = [prompt_id_of(c) for c in CAPTIONS]
    return pd.DataFrame({"prompt_set": "generated", "prompt_id": ids, "prompt": CAPTIONS})


def test_a_killed_part_resumes_making_only_the_images_it_lacks(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = tmp_path / "part0" / "manifest.parquet"
    saved: list[str] = []
    real_save = sample.save_image

    def save_then_die(image, path, key=""):
        if len(saved) == 5:
            raise KeyboardInterrupt  # the job is killed after five images
        saved.append(Path(path).name)
        real_save(image, path, key)

    monkeypatch.setattr(sample, "save_image", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        make_images_part(
            _prompts(), str(tiny_model), str(tiny_model), _settings(), manifest, part=0
        )
    assert not manifest.exists()
    first = {name: (manifest.parent / "g2" / name).read_bytes() for name in saved}
    saved.clear()
    monkeypatch.setattr(sample, "save_image", real_save)
    made: list[str] = []
    monkeypatch.setattr(
        sample,
        "save_image",
        lambda image, path, key="": (
            made.append(Path(path).name),
            real_save(image, path, key),
        ),  # fmt: skip
    )
    report = make_images_part(
        _prompts(), str(tiny_model), str(tiny_model), _settings(), manifest, part=0
    )
    assert report["images"] == 9
    assert sorted(made) == sorted(
        set(pd.read_parquet(manifest)["path"].map(lambda p: p[3:])) - set(first)
    )
    # The images kept from before the kill are those a whole run makes, untouched.
    for name, data in first.items():
        assert (manifest.parent / "g2" / name).read_bytes() == data
    frame = pd.read_parquet(manifest)
    assert sorted(frame["seed"].unique()) == [5, 6, 7]


def test_parts_sample_what_one_part_samples(tiny_model: Path, tmp_path: Path) -> None:
    """Images use evaluation's noise per (prompt, seed): the shard count changes no pixel."""
    whole = make_images_part(_prompts(), str(tiny_model), str(tiny_model), _settings(),
                             tmp_path / "one" / "manifest.parquet", part=0)  # fmt: skip
    assert whole["images"] == 9
    paths = []
    for part in range(2):
        out = tmp_path / f"two{part}" / "manifest.parquet"
        make_images_part(_prompts(), str(tiny_model), str(tiny_model), _settings(2), out, part=part)
        paths += [out.parent / p for p in pd.read_parquet(out)["path"]]
    assert len(paths) == 9
    for path in paths:
        one = tmp_path / "one" / path.relative_to(path.parents[1])
        a = np.asarray(Image.open(one))
        b = np.asarray(Image.open(path))
        np.testing.assert_array_equal(a, b)


def test_plan_time_checks_name_their_keys() -> None:
    rewards = {"oracle": {}, "alignment": {}}
    good = {"kind": "generated", "prompts": {"kind": "toy"}, "label": {"reward": "alignment"}}
    assert generated_problems(good, rewards, set()) == []
    bad = {**good, "label": {"reward": "pickscore"}, "model": "dspo", "images_per_prompt": 1}
    problems = "\n".join(generated_problems(bad, rewards, set()))
    assert "pairs.source.label: 'pickscore' is not a configured reward" in problems
    assert "pairs.source.model: 'dspo' must be base or a released model" in problems
    assert "pairs.source.images_per_prompt" in problems
    both = {**good, "label": {"reward": "oracle", "weights": {"oracle": 1.0}}}
    assert "exactly one of" in generated_problems(both, rewards, set())[0]
    assert generated_problems({**good, "model": "released"}, rewards, {"released"}) == []
    assert label_weights({"weights": {"oracle": 0.5, "alignment": 2}}) == {
        "oracle": 0.5,
        "alignment": 2.0,
    }
