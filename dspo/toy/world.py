"""Building the toy world: its config, the pairs file, the prompt sets and the editing set.

The same config gives identical files; each product draws from its own random stream.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from dspo.toy.pairs import pairs_with_info
from dspo.toy.render import render
from dspo.toy.scenes import (
    BACKGROUNDS,
    COLOURS,
    HELDOUT_TEMPLATES,
    TRAIN_TEMPLATES,
    Scene,
    caption,
    split_scenes,
)

# Rows per parquet row group of the toy pairs (Pick-a-Pic's hub files hold a few hundred).
TOY_ROW_GROUP = 100


@dataclass(frozen=True)
class ToyWorldConfig:
    """Everything that determines the toy world; the same config gives identical files."""

    seed: int = 0
    image_size: int = 16
    defect_prob: float = 0.15
    n_pairs: int = 6000
    max_pairs_per_prompt: int = 8
    bt_temperature: float = 0.05
    tie_margin: float = 0.01
    prompts_per_set: int = 48
    holdout_fraction: float = 0.1
    n_unseen_combinations: int = 3

    def __post_init__(self) -> None:
        if self.image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {self.image_size}")
        if not 0.0 <= self.defect_prob <= 1.0:
            raise ValueError(f"defect_prob must be in [0, 1], got {self.defect_prob}")
        if self.bt_temperature <= 0:
            raise ValueError(f"bt_temperature must be > 0, got {self.bt_temperature}")
        if self.n_pairs < 1 or self.max_pairs_per_prompt < 1 or self.prompts_per_set < 1:
            raise ValueError("n_pairs, max_pairs_per_prompt and prompts_per_set must be >= 1")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ToyWorldConfig:
        """Build from a mapping (a preset's ``toy`` section); unknown keys are an error."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(
                f"unknown toy-world config key(s) {unknown}; known keys: {', '.join(known)}"
            )
        return cls(**d)


def _prompt_set(
    scenes: Sequence[Scene], templates: Sequence[int], n: int, rng: np.random.Generator
) -> list[str]:
    if n > len(scenes):
        raise ValueError(f"prompts_per_set={n} exceeds the {len(scenes)} scenes available")
    chosen = rng.choice(len(scenes), n, replace=False)
    return [caption(scenes[i], int(rng.choice(templates))) for i in chosen]


def editing_set(
    scenes: Sequence[Scene], n: int, image_size: int, rng: np.random.Generator
) -> pd.DataFrame:
    """The toy stand-in for the InstructPix2Pix editing set: a source render and a caption.

    Each row renders one scene cleanly and asks for the same scene with its colour or its
    background changed (to a value that differs from the object's colour), as an edit
    instruction would. Columns: source_prompt, prompt (the edited caption), image (PNG).
    """
    if n > len(scenes):
        raise ValueError(f"prompts_per_set={n} exceeds the {len(scenes)} scenes available")
    rows = []
    for i in rng.choice(len(scenes), n, replace=False):
        source = scenes[int(i)]
        image, _ = render(source, rng, image_size, defect_prob=0.0)
        if rng.random() < 0.5:
            colours = [c for c in COLOURS if c != source.colour]
            target = Scene(**{**vars(source), "colour": str(rng.choice(colours))})
        else:
            backgrounds = [b for b in BACKGROUNDS if b != source.background]
            target = Scene(**{**vars(source), "background": str(rng.choice(backgrounds))})
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "PNG")
        template = int(rng.choice(TRAIN_TEMPLATES))
        rows.append(
            {
                "source_prompt": caption(source, template),
                "prompt": caption(target, template),
                "image": buffer.getvalue(),
            }
        )
    return pd.DataFrame(rows)


def build_world(cfg: ToyWorldConfig, out_dir: Path) -> dict[str, Any]:
    """Write the pairs parquet and the evaluation prompt sets; return summary statistics.

    Files: ``out_dir/pairs/train-00000-of-00001.parquet`` (Pick-a-Pic v2 columns, in row
    groups of ``TOY_ROW_GROUP`` rows: the units that the scattered normalisation splits),
    ``out_dir/prompts.parquet`` (prompt_set, prompt_id, prompt) with the prompt sets
    "heldout_captions", "unseen_combinations" and "new_templates", and
    ``out_dir/editing.parquet`` (see `editing_set`) from held-out captions.
    """
    out_dir = Path(out_dir)
    split = split_scenes(cfg.seed, cfg.holdout_fraction, cfg.n_unseen_combinations)
    # Independent streams per product, so changing n_pairs leaves the prompt sets unchanged.
    pairs, info = pairs_with_info(
        split["train"],
        np.random.default_rng([cfg.seed, 2]),
        cfg.n_pairs,
        cfg.image_size,
        cfg.defect_prob,
        cfg.bt_temperature,
        cfg.tie_margin,
        cfg.max_pairs_per_prompt,
    )
    rng = np.random.default_rng([cfg.seed, 1])
    sets = {
        "heldout_captions": (split["heldout_captions"], TRAIN_TEMPLATES),
        "unseen_combinations": (split["unseen_combinations"], TRAIN_TEMPLATES),
        "new_templates": (split["heldout_captions"], HELDOUT_TEMPLATES),
    }
    rows = []
    for name, (scenes, templates) in sets.items():
        prompts = _prompt_set(scenes, templates, cfg.prompts_per_set, rng)
        rows += [(name, i, p) for i, p in enumerate(prompts)]
    prompts_df = pd.DataFrame(rows, columns=["prompt_set", "prompt_id", "prompt"])
    prompts_df["prompt_id"] = prompts_df["prompt_id"].astype(np.int64)

    editing = editing_set(
        split["heldout_captions"],
        cfg.prompts_per_set,
        cfg.image_size,
        np.random.default_rng([cfg.seed, 3]),
    )

    (out_dir / "pairs").mkdir(parents=True, exist_ok=True)
    pairs.to_parquet(
        out_dir / "pairs" / "train-00000-of-00001.parquet",
        index=False,
        row_group_size=TOY_ROW_GROUP,
    )
    prompts_df.to_parquet(out_dir / "prompts.parquet", index=False)
    editing.to_parquet(out_dir / "editing.parquet", index=False)

    r0, r1 = info["r0"], info["r1"]
    decided = pairs["label_0"].to_numpy() != 0.5
    agree = (pairs["label_0"].to_numpy() == 1.0) == (r0 > r1)
    has_defect = np.array([len(d) > 0 for d in info["defects"]])
    totals = np.concatenate([r0, r1])
    return {
        "n_pairs": int(len(pairs)),
        "n_ties": int((~decided).sum()),
        "n_unique_captions": int(pairs["caption"].nunique()),
        "label_agreement": float(agree[decided].mean()) if decided.any() else float("nan"),
        "defect_rate": float(has_defect.mean()),
        "mean_total_clean": float(totals[~has_defect].mean()) if (~has_defect).any() else None,
        "mean_total_defective": float(totals[has_defect].mean()) if has_defect.any() else None,
        "n_prompts": {name: cfg.prompts_per_set for name in [*sets, "editing"]},
    }
