"""Inception Score and FID: the formulas against torch-fidelity's own computation (the oracle),
the FID Inception-v3 loaded from a random-initialised weights file saved in the real layout
(the state dict of torch-fidelity's ``FeatureExtractorInceptionV3``, under the file name
torch-fidelity's release uses), and the toy world's classifier."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from dspo.evaluation.inception import (
    INCEPTION_FILE,
    feature_statistics,
    frechet_distance,
    inception_score,
    inception_weights_path,
)
from dspo.evaluation.quality import image_set_quality, load_classifier
from dspo.standins.inception import write_inception
from dspo.toy.render import render_batch
from dspo.toy.scenes import all_scenes


def test_inception_score_of_known_distributions() -> None:
    # Every image sure of its own class, classes even: exp(log C) = C; one class for all: 1.
    sure = np.log(np.full((40, 4), 1e-30) + np.eye(4)[np.arange(40) % 4])
    assert inception_score(sure, splits=10, seed=None)[0] == pytest.approx(4.0)
    assert inception_score(sure[:, ::-1][[0] * 40], splits=10)[0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="needs >= 10 images, got 9"):
        inception_score(sure[:9])


def test_inception_score_is_torch_fidelitys() -> None:
    metric_isc = pytest.importorskip("torch_fidelity.metric_isc")
    logits = np.random.default_rng(0).normal(0, 3, (103, 1008))
    expected = metric_isc.isc_features_to_metric(torch.from_numpy(logits), splits=10)
    mean, sd = inception_score(logits)
    assert mean == pytest.approx(expected["inception_score_mean"], rel=1e-10)
    assert sd == pytest.approx(expected["inception_score_std"], rel=1e-8)


def test_fid_is_torch_fidelitys() -> None:
    metric_fid = pytest.importorskip("torch_fidelity.metric_fid")
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, (60, 12)), rng.normal(0.3, 1.4, (50, 12)) @ rng.normal(0, 1, (12, 12))
    expected = metric_fid.fid_statistics_to_metric(
        metric_fid.fid_features_to_statistics(torch.from_numpy(a)),
        metric_fid.fid_features_to_statistics(torch.from_numpy(b)),
        verbose=False,
    )["frechet_inception_distance"]
    ours = frechet_distance(feature_statistics(a), feature_statistics(b))
    assert ours == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(feature_statistics(a), feature_statistics(a)) == pytest.approx(
        0.0, abs=1e-8
    )


def _manifest(paths: list[Path], guidance: float = 7.5) -> tuple[pd.DataFrame, Path]:
    """A set as `dspo generate` writes it: manifest paths relative to the set's folder."""
    rows = {"path": [p.name for p in paths], "guidance": guidance}
    return pd.DataFrame(rows), paths[0].parent


def _images(folder: Path, n: int, seed: int, size: int = 40) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        paths.append(folder / f"{i:03d}.png")
        Image.fromarray(image).save(paths[-1])
    return paths


def test_inception_from_the_fetched_file_matches_torch_fidelity(tmp_path, monkeypatch) -> None:
    fidelity = pytest.importorskip("torch_fidelity")
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_isc import isc_features_to_metric

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    weights = inception_weights_path()
    assert weights == tmp_path / "hub" / "checkpoints" / INCEPTION_FILE
    write_inception(weights, seed=0)
    generated = _images(tmp_path / "generated", 10, seed=2)
    _images(tmp_path / "reference", 10, seed=3, size=48)
    spec = {"classifier": "inception", "reference": str(tmp_path / "reference"), "batch_size": 5}
    rows = image_set_quality({"pickv2": _manifest(generated)}, spec, "base").set_index("metric")
    assert rows.loc["inception_score", "classifier"] == f"inception-v3 {INCEPTION_FILE}"

    # The library's own extraction and metrics on the same images and weights.
    net = FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048", "logits_unbiased"], str(weights)
    )

    def extract(paths):
        x = torch.from_numpy(np.stack([np.asarray(Image.open(p)) for p in paths]))
        with torch.no_grad():
            return net(x.permute(0, 3, 1, 2))

    pool, logits = extract(generated)
    expected = isc_features_to_metric(logits.double(), splits=10)
    assert rows.loc["inception_score", "value"] == pytest.approx(
        expected["inception_score_mean"], rel=1e-4
    )
    ref_pool, _ = extract(sorted((tmp_path / "reference").glob("*.png")))
    fid = fid_statistics_to_metric(
        fid_features_to_statistics(ref_pool.double()),
        fid_features_to_statistics(pool.double()),
        verbose=False,
    )["frechet_inception_distance"]
    assert rows.loc["fid", "value"] == pytest.approx(fid, rel=1e-4)
    assert fidelity.__version__ >= "0.4"


def test_missing_inception_weights_name_the_fetch(tmp_path) -> None:
    pytest.importorskip("torch_fidelity")
    with pytest.raises(FileNotFoundError, match="snakemake fetch"):
        load_classifier({"classifier": "inception", "weights": str(tmp_path / "none.pth")})


def test_toy_inception_score_rewards_crisp_varied_objects(tmp_path) -> None:
    scenes = [s for s in all_scenes() if s.colour and s.shape][::7][:60]
    crisp, _ = render_batch(scenes, np.random.default_rng(0), 16, 0.0)
    damaged, _ = render_batch(scenes, np.random.default_rng(0), 16, 1.0)
    sets = {}
    for name, pixels in {"crisp": crisp, "damaged": damaged, "one": crisp[[0] * 60]}.items():
        folder = tmp_path / name
        folder.mkdir()
        sets[name] = [folder / f"{i}.png" for i in range(len(pixels))]
        for image, path in zip(pixels, sets[name], strict=True):
            Image.fromarray(image).save(path)
    manifests = {name: _manifest(paths, 2.0) for name, paths in sets.items()}
    rows = image_set_quality(manifests, {"classifier": "toy"}, "base").set_index("prompt_set")
    score = rows["value"]
    assert score["crisp"] > score["damaged"] > score["one"]
    assert score["one"] == pytest.approx(1.0, abs=1e-6)
    assert (rows["metric"] == "inception_score").all() and rows["n_images"].eq(60).all()
    assert rows["guidance"].eq(2.0).all()
    with pytest.raises(ValueError, match="base has few at guidance 2: 3"):
        image_set_quality({"few": _manifest(sets["crisp"][:3], 2.0)}, {"classifier": "toy"}, "base")


def test_a_missing_reference_folder_fails_the_config_check_naming_it(tmp_path) -> None:
    from dspo.config.check import config_problems
    from dspo.config.step import workflow_config

    config = workflow_config([])
    config["evaluation"]["quality"]["reference"] = "coco/val2014"
    assert any(
        p.startswith("evaluation.quality.reference: folder 'coco/val2014' does not exist")
        for p in config_problems(config, tmp_path)
    )
    (tmp_path / "coco" / "val2014").mkdir(parents=True)
    assert not any("quality" in p for p in config_problems(config, tmp_path))
