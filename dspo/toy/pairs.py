"""Toy preference pairs: JPEG bytes, Bradley-Terry labels from the oracle, previews.

Pairs are two renders of one caption, labelled by Bradley-Terry sampling from the oracle and
written in the Pick-a-Pic v2 parquet schema. Unlabelled renders of train scenes are the base
model's pre-training stream.
"""

from __future__ import annotations

import functools
import io
import textwrap
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from PIL import Image

from dspo.toy.oracle import oracle_scores
from dspo.toy.render import render_batch
from dspo.toy.scenes import TRAIN_TEMPLATES, Scene, caption, split_scenes

if TYPE_CHECKING:
    from dspo.toy.world import ToyWorldConfig

JPEG_QUALITY = 95
_MODEL_NAME = "toy-renderer"
_N_USERS = 500


def encode_jpeg(image: np.ndarray) -> bytes:
    """JPEG bytes of an (H, W, 3) uint8 image; 4:4:4 so colour survives at 16x16."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    return buf.getvalue()


def decode_jpeg(data: bytes) -> np.ndarray:
    """(H, W, 3) uint8 RGB array from image bytes."""
    with Image.open(io.BytesIO(data)) as im:
        return np.array(im if im.mode == "RGB" else im.convert("RGB"))


def _uuids(rng: np.random.Generator, n: int) -> list[str]:
    raw = rng.bytes(16 * n)
    return [str(uuid.UUID(bytes=raw[16 * i : 16 * i + 16], version=4)) for i in range(n)]


def pairs_with_info(
    train_scenes: Sequence[Scene],
    rng: np.random.Generator,
    n_pairs: int,
    image_size: int,
    defect_prob: float,
    bt_temperature: float,
    tie_margin: float,
    max_pairs_per_prompt: int,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``make_pairs`` plus what the stats need: oracle totals and defects of both images."""
    n = n_pairs
    # Prompts repeat like Pick-a-Pic duplicates: draw captions, then 1..max pairs for each.
    per_prompt = rng.integers(1, max_pairs_per_prompt + 1, n)
    scene_idx = rng.integers(0, len(train_scenes), n)
    template = rng.choice(TRAIN_TEMPLATES, n)
    prompt_of_pair = np.repeat(np.arange(n), per_prompt)[:n]
    scenes = [train_scenes[scene_idx[p]] for p in prompt_of_pair]
    captions = [caption(s, int(template[p])) for s, p in zip(scenes, prompt_of_pair, strict=True)]

    images, defects = render_batch(scenes + scenes, rng, image_size, defect_prob)
    jpgs = [encode_jpeg(im) for im in images]
    # Label what annotators would see: the decoded JPEG, not the raw render.
    decoded = np.stack([decode_jpeg(b) for b in jpgs])
    total = oracle_scores(decoded, captions + captions)["total"]
    r0, r1 = total[:n], total[n:]

    p0 = 1.0 / (1.0 + np.exp(-(r0 - r1) / bt_temperature))
    win0 = rng.random(n) < p0
    tie = np.abs(r0 - r1) < tie_margin
    label_0 = np.where(tie, 0.5, win0.astype(float))
    uids = _uuids(rng, 2 * n)
    uid0, uid1 = uids[:n], uids[n:]
    user_id = rng.integers(0, _N_USERS, n)
    order = rng.permutation(n)  # duplicates of a prompt are scattered, as in the real data

    df = pd.DataFrame(
        {
            "are_different": np.ones(n, dtype=bool),
            "best_image_uid": [
                "" if t else (a if w else b)
                for t, w, a, b in zip(tie, win0, uid0, uid1, strict=True)
            ],
            "caption": captions,
            "has_label": np.ones(n, dtype=bool),
            "image_0_uid": uid0,
            "image_0_url": [f"toy://{u}" for u in uid0],
            "image_1_uid": uid1,
            "image_1_url": [f"toy://{u}" for u in uid1],
            "jpg_0": jpgs[:n],
            "jpg_1": jpgs[n:],
            "label_0": label_0,
            "label_1": 1.0 - label_0,
            "model_0": [_MODEL_NAME] * n,
            "model_1": [_MODEL_NAME] * n,
            "user_id": user_id.astype(np.int64),
        }
    ).iloc[order]
    df = df.reset_index(drop=True)
    df.insert(df.columns.get_loc("user_id"), "ranking_id", np.arange(n, dtype=np.int64))
    df["num_example_per_prompt"] = (
        df.groupby("caption")["caption"].transform("size").astype(np.int64)
    )
    info = {
        "r0": r0[order],
        "r1": r1[order],
        "defects": [defects[i] for i in order] + [defects[n + i] for i in order],
    }
    return df, info


def make_pairs(
    train_scenes: Sequence[Scene],
    rng: np.random.Generator,
    n_pairs: int,
    image_size: int = 16,
    defect_prob: float = 0.15,
    bt_temperature: float = 0.05,
    tie_margin: float = 0.01,
    max_pairs_per_prompt: int = 8,
) -> pd.DataFrame:
    """Preference pairs in the Pick-a-Pic v2 schema, labelled by Bradley-Terry on the oracle.

    P(image 0 preferred) = sigmoid((R0 - R1) / bt_temperature) with R the oracle total of the
    decoded JPEG; pairs closer than ``tie_margin`` are ties (labels 0.5 / 0.5).
    """
    df, _ = pairs_with_info(
        train_scenes,
        rng,
        n_pairs,
        image_size,
        defect_prob,
        bt_temperature,
        tie_margin,
        max_pairs_per_prompt,
    )
    return df


@functools.lru_cache(maxsize=16)
def _train_scenes(seed: int, holdout_fraction: float, n_unseen: int) -> tuple[Scene, ...]:
    return tuple(split_scenes(seed, holdout_fraction, n_unseen)["train"])


def sample_unlabelled(
    cfg: ToyWorldConfig, rng: np.random.Generator, n: int
) -> tuple[np.ndarray, list[str]]:
    """Fresh renders (defects included) of train scenes with training templates.

    This is the pre-training stream of the base model: web data of mixed quality.
    """
    scenes = _train_scenes(cfg.seed, cfg.holdout_fraction, cfg.n_unseen_combinations)
    idx = rng.integers(0, len(scenes), n)
    templates = rng.choice(TRAIN_TEMPLATES, n)
    chosen = [scenes[i] for i in idx]
    images, _ = render_batch(chosen, rng, cfg.image_size, cfg.defect_prob)
    return images, [caption(s, int(t)) for s, t in zip(chosen, templates, strict=True)]


def preview_pairs(pairs_parquet: Path, out_png: Path, n: int = 8) -> None:
    """Save a PNG of the first ``n`` pairs with their oracle scores, label and caption."""
    from matplotlib.figure import Figure

    df = pd.read_parquet(pairs_parquet).head(n)
    images = np.stack([decode_jpeg(b) for b in [*df["jpg_0"], *df["jpg_1"]]])
    scores = oracle_scores(images, [*df["caption"], *df["caption"]])
    k = len(df)
    cols = 2
    rows = -(-k // cols)
    fig = Figure(figsize=(5.2 * cols, 3.7 * rows), layout="constrained")
    blocks = np.atleast_1d(fig.subfigures(rows, cols)).ravel()
    for j, block in enumerate(blocks):
        if j >= k:
            continue
        row = df.iloc[j]
        block.suptitle("\n".join(textwrap.wrap(row["caption"], 48)), fontsize=10)
        axes = block.subplots(1, 2)
        for side, ax in enumerate(axes):
            i = j + side * k
            label = row[f"label_{side}"]
            verdict = "tie" if label == 0.5 else ("preferred" if label == 1.0 else "rejected")
            ax.imshow(images[i], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            colour = {"preferred": "tab:green", "rejected": "tab:red", "tie": "tab:gray"}[verdict]
            for spine in ax.spines.values():
                spine.set_color(colour)
                spine.set_linewidth(4)
            ax.set_xlabel(
                f"{verdict}\nalign {scores['alignment'][i]:.2f}  aesth "
                f"{scores['aesthetic'][i]:.2f}\ntotal {scores['total'][i]:.2f}",
                fontsize=9,
            )
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    # The constrained layout leaves the last row's score lines below the figure's edge;
    # a tight bounding box keeps every label.
    fig.savefig(out_png, dpi=100, bbox_inches="tight", pad_inches=0.1)
