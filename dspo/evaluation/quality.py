"""Image quality of each generated image set: Inception Score and, against a reference image
set, FID (``evaluation.quality``), from one classifier loaded once per model.

Classifiers (``classifier``):

- ``inception``: the standard FID Inception-v3 (TensorFlow's ``inception-2015-12-05`` graph
  ported to PyTorch) through torch-fidelity's ``FeatureExtractorInceptionV3``: images as uint8,
  resized inside to 299 x 299 as TensorFlow 1.x did; the Inception Score reads its
  ``logits_unbiased`` (1008 classes, torch-fidelity's IS layer) and FID its ``2048`` pool
  features. The weights are ``weights`` or else torch-fidelity's release file, which
  ``dspo fetch`` downloads into PyTorch's hub checkpoint folder
  (:func:`dspo.evaluation.inception.inception_weights_path`).
- ``toy``: the toy world's object classifier (:func:`dspo.toy.oracle.object_class_log_probs`,
  19 classes) gives both the logits and the features. A randomly initialised Inception-v3
  would measure nothing; this classifier is confident exactly on crisp, well-drawn objects.

Output rows (one per image set, guidance scale and metric): ``model, prompt_set, guidance,
metric`` (``inception_score`` or ``fid``), ``value``, ``sd`` (the Inception Score's deviation
over its splits; empty for FID), ``n_images``, ``classifier`` (what computed it, weights file
included).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
from PIL import Image

from dspo.evaluation.inception import (
    SPLITS,
    feature_statistics,
    frechet_distance,
    inception_score,
    inception_weights_path,
)
from dspo.rewards import open_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
COLUMNS = ["model", "prompt_set", "guidance", "metric", "value", "sd", "n_images", "classifier"]


class Classifier(Protocol):
    """Maps images to (logits (N, C), features (N, D)); ``version`` names it exactly."""

    version: str

    def __call__(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, np.ndarray]: ...


class ToyClassifier:
    """The toy world's object classifier; its log-probabilities are logits and features."""

    version = "toy object classifier"

    def __call__(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        from dspo.toy.oracle import object_class_log_probs

        pixels = np.stack([np.asarray(image.convert("RGB"), dtype=np.uint8) for image in images])
        log_probs = object_class_log_probs(pixels)
        return log_probs, log_probs


class InceptionClassifier:
    """torch-fidelity's FID Inception-v3 with the weights file ``weights``."""

    def __init__(self, weights: Path, device: str = "cpu") -> None:
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except ImportError:
            raise ImportError(
                "the Inception Score needs torch-fidelity: pip install -e '.[workflow]'"
            ) from None
        if not weights.is_file():
            raise FileNotFoundError(
                f"no Inception-v3 weights at {weights}: run the download step (snakemake "
                "fetch) or set evaluation.quality.weights"
            )
        net = FeatureExtractorInceptionV3(
            "inception-v3-compat",
            ["2048", "logits_unbiased"],
            feature_extractor_weights_path=str(weights),
        )
        self.net = net.to(device)
        self.device = device
        self.version = f"inception-v3 {weights.name}"

    def __call__(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        import torch

        logits, features = [], []
        # The network resizes each batch to 299 x 299; images of one batch share a size.
        for batch in _same_size_runs(images):
            pixels = np.stack([np.asarray(image.convert("RGB"), dtype=np.uint8) for image in batch])
            x = torch.from_numpy(pixels).permute(0, 3, 1, 2).to(self.device)
            with torch.no_grad():
                pool, logit = self.net(x)
            features.append(pool.double().cpu().numpy())
            logits.append(logit.double().cpu().numpy())
        return np.concatenate(logits), np.concatenate(features)


def _same_size_runs(images: Sequence[Image.Image]) -> list[list[Image.Image]]:
    runs: list[list[Image.Image]] = []
    for image in images:
        if runs and runs[-1][0].size == image.size:
            runs[-1].append(image)
        else:
            runs.append([image])
    return runs


def _inception(spec: Mapping[str, Any], device: str) -> Classifier:
    weights = spec.get("weights")
    return InceptionClassifier(Path(weights) if weights else inception_weights_path(), device)


# The classifiers by their ``evaluation.quality.classifier`` name.
CLASSIFIERS: dict[str, Callable[[Mapping[str, Any], str], Classifier]] = {
    "inception": _inception,
    "toy": lambda spec, device: ToyClassifier(),
}


# The classifiers that run without torch (the toy world's).
WITHOUT_TORCH = frozenset({"toy"})


def needs_torch(spec: Mapping[str, Any]) -> bool:
    """Whether the classifier ``spec`` (``evaluation.quality``) names loads torch."""
    return spec["classifier"] not in WITHOUT_TORCH


def load_classifier(spec: Mapping[str, Any], device: str = "cpu") -> Classifier:
    """The classifier ``spec`` (``evaluation.quality``) names."""
    kind = spec["classifier"]
    if kind not in CLASSIFIERS:
        raise ValueError(
            f"evaluation.quality.classifier: unknown {kind!r}; expected one of {list(CLASSIFIERS)}"
        )
    return CLASSIFIERS[kind](spec, device)


def classify(
    classifier: Classifier, paths: Sequence[Path], batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """The classifier's (logits, features) of the images at ``paths``, in batches."""
    logits, features = [], []
    for start in range(0, len(paths), batch_size):
        images = [open_image(p) for p in paths[start : start + batch_size]]
        batch_logits, batch_features = classifier(images)
        logits.append(batch_logits)
        features.append(batch_features)
    if not logits:
        return np.empty((0, 0)), np.empty((0, 0))
    return np.concatenate(logits), np.concatenate(features)


def reference_images(folder: Path) -> list[Path]:
    """The image files in ``folder`` and below, sorted; none is an error naming it."""
    found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise ValueError(
            f"evaluation.quality.reference: no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}"
        )
    return found


def _groups(image_sets: Mapping[str, tuple[pd.DataFrame, Path]]) -> list[tuple[str, float, list]]:
    """(image set, guidance, image paths) of each guidance scale of each set."""
    groups = []
    for name, (manifest, folder) in image_sets.items():
        for guidance, rows in manifest.groupby("guidance", sort=True):
            groups.append((name, float(guidance), [folder / p for p in rows["path"]]))
    return groups


def image_set_quality(
    image_sets: Mapping[str, tuple[pd.DataFrame, Path]],
    spec: Mapping[str, Any],
    model_name: str,
    device: str = "cpu",
) -> pd.DataFrame:
    """The quality rows (module docstring) of each image set, given as (manifest, folder of
    its images), one per guidance scale; the classifier and the reference set's statistics
    are computed once. A group smaller than ``splits`` is an error naming it, before any
    image is read."""
    splits = int(spec.get("splits", SPLITS))
    groups = _groups(image_sets)
    small = [f"{s} at guidance {g:g}: {len(p)}" for s, g, p in groups if len(p) < splits]
    if small:
        raise ValueError(
            f"the Inception Score over {splits} splits needs >= {splits} images per set and "
            f"guidance (evaluation.quality.splits); {model_name} has {'; '.join(small)}"
        )
    batch_size = int(spec.get("batch_size", 64))
    classifier = load_classifier(spec, device)
    reference = None
    if spec.get("reference"):
        _, features = classify(classifier, reference_images(Path(spec["reference"])), batch_size)
        reference = feature_statistics(features)
    rows = []
    for name, guidance, paths in groups:
        logits, features = classify(classifier, paths, batch_size)
        mean, sd = inception_score(logits, splits)
        base = {"model": model_name, "prompt_set": name, "guidance": guidance}
        base["n_images"] = len(paths)
        rows.append({**base, "metric": "inception_score", "value": mean, "sd": sd})
        if reference is not None:
            fid = frechet_distance(feature_statistics(features), reference)
            rows.append({**base, "metric": "fid", "value": fid, "sd": np.nan})
    frame = pd.DataFrame(rows, columns=COLUMNS[:-1]).assign(classifier=classifier.version)
    return frame[COLUMNS]
