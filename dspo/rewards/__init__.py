"""Reward models behind one interface: ``score(images, prompts) -> scores``.

Each reward model is built by a loader from its config entry (``{"kind": ..., ...}``);
the toy world's oracle parts, the paper's reward models (PickScore, HPSv2, LAION
aesthetics, CLIP score, ImageReward) and T2I-CompBench's B-VQA all plug in here, so scoring
code never changes.
docs/rewards.md explains how each paper model is loaded.
"""

from __future__ import annotations

import gc
import importlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from dspo.core.image_keys import strict_decoding


class RewardModel(Protocol):
    """Scores a batch of images against their prompts; higher is better.

    ``version`` names the model and checkpoint exactly (e.g. ``hpsv2 v2.1 ...``); it is
    written beside every score so that results from different checkpoints never mix.
    """

    version: str

    def score(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> np.ndarray: ...


def _toy(spec: Mapping[str, Any], device: str) -> RewardModel:
    from dspo.toy.oracle import ToyOracleReward

    return ToyOracleReward(part=spec.get("part", "total"))


def _lazy(target: str) -> Callable[[Mapping[str, Any], str], RewardModel]:
    """The loader that calls ``module:name`` (a reward class, or a function building one, that
    takes the config entry and the device), importing the module on first use."""
    module, name = target.split(":")

    def load(spec: Mapping[str, Any], device: str) -> RewardModel:
        return getattr(importlib.import_module(module), name)(spec, device)

    return load


def _toy_bvqa(spec: Mapping[str, Any], device: str) -> RewardModel:
    from dspo.rewards.bvqa import BVQA
    from dspo.toy.oracle import ToyPresence

    return BVQA(ToyPresence(), "bvqa toy_oracle alignment rule phrases")


# Loaders import their model lazily: the toy world never loads transformers' vision models.
LOADERS: dict[str, Callable[[Mapping[str, Any], str], RewardModel]] = {
    "toy_oracle": _toy,
    "pickscore": _lazy("dspo.rewards.pickscore:PickScore"),
    "hpsv2": _lazy("dspo.rewards.hpsv2:HPSv2"),
    "laion_aesthetics": _lazy("dspo.rewards.aesthetic:LaionAesthetics"),
    "clip_score": _lazy("dspo.rewards.clip_score:ClipScore"),
    "image_reward": _lazy("dspo.rewards.image_reward:ImageReward"),
    "bvqa": _lazy("dspo.rewards.blip_vqa:blip_bvqa"),
    "toy_bvqa": _toy_bvqa,
}


# The kinds that score without torch (the toy world's): a score job of these alone never
# imports it, which is most of such a job's CPU.
WITHOUT_TORCH = frozenset({"toy_oracle", "toy_bvqa"})


def needs_torch(rewards: Mapping[str, Mapping[str, Any]]) -> bool:
    """Whether scoring with these config entries (name -> entry) loads torch."""
    return any(spec.get("kind") not in WITHOUT_TORCH for spec in rewards.values())


def load_reward(spec: Mapping[str, Any], device: str = "cpu") -> RewardModel:
    """Build the reward model a config entry describes."""
    kind = spec.get("kind")
    if kind not in LOADERS:
        raise ValueError(f"unknown reward kind {kind!r}; expected one of {sorted(LOADERS)}")
    return LOADERS[kind](spec, device)


def open_image(path: Path) -> Image.Image:
    """The image at ``path``, pixels read; an unreadable file is a ``ValueError`` naming it."""
    try:
        with strict_decoding():
            image = Image.open(path)
            image.load()  # reads the pixels and closes the file
    except (OSError, SyntaxError) as error:  # PIL's errors for missing or damaged files
        raise ValueError(f"cannot read image {path}: {type(error).__name__}: {error}") from error
    return image


def score_manifest(
    manifest: pd.DataFrame,
    image_dir: Path,
    rewards: Mapping[str, Mapping[str, Any]],
    *,
    model_name: str,
    batch_size: int = 256,
    device: str = "cpu",
) -> pd.DataFrame:
    """Score every image of a generation manifest with every reward model (long format).

    Each row carries ``reward`` (the config name) and ``reward_version`` (the model's
    ``version``: which checkpoint, e.g. HPSv2 v2.0 or v2.1, produced the score).
    """
    return score_manifests(
        [(manifest, image_dir)], rewards, model_name=model_name, batch_size=batch_size,
        device=device,
    )[0]  # fmt: skip


def score_manifests(
    manifests: Sequence[tuple[pd.DataFrame, Path]],
    rewards: Mapping[str, Mapping[str, Any]],
    *,
    model_name: str,
    batch_size: int = 256,
    device: str = "cpu",
) -> list[pd.DataFrame]:
    """:func:`score_manifest` for each (manifest, image folder), each reward model loaded once."""
    frames: list[list[pd.DataFrame]] = [[] for _ in manifests]
    for name, spec in rewards.items():
        reward = load_reward(spec, device)
        for (manifest, image_dir), done in zip(manifests, frames, strict=True):
            values = []
            for start in tqdm(
                range(0, len(manifest), batch_size), desc=f"score {name}", mininterval=5
            ):
                chunk = manifest.iloc[start : start + batch_size]
                # Each scorer converts the image as its original does (some resize before
                # dropping alpha), so images are passed in their own mode.
                images = [open_image(image_dir / p) for p in chunk["path"]]
                values.append(
                    np.asarray(reward.score(images, chunk["prompt"].tolist()), np.float64)
                )
            frame = manifest.drop(columns=["path"]).copy()
            frame.insert(0, "model", model_name)
            frame["reward"] = name
            frame["reward_version"] = reward.version
            frame["score"] = np.concatenate(values) if values else np.empty(0)
            done.append(frame)
        # Let this model go before the next one loads: two ViT-H-14 at once double the peak.
        del reward
        gc.collect()
    return [pd.concat(f, ignore_index=True) for f in frames]
