"""Building the toy world: its config, the pairs file, the prompt sets and the editing set.

The same config gives identical files; each product draws from its own random stream.
"""

from __future__ import annotations

import io
import itertools
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
    SHAPES,
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
    binding_prompts: int = 24

    def __post_init__(self) -> None:
        if self.image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {self.image_size}")
        if not 0.0 <= self.defect_prob <= 1.0:
            raise ValueError(f"defect_prob must be in [0, 1], got {self.defect_prob}")
        if self.bt_temperature <= 0:
            raise ValueError(f"bt_temperature must be > 0, got {self.bt_temperature}")
        if self.n_pairs < 1 or self.max_pairs_per_prompt < 1 or self.prompts_per_set < 1:
            raise ValueError("n_pairs, max_pairs_per_prompt and prompts_per_set must be >= 1")
        if not 1 <= self.binding_prompts <= len(COLOURS) * len(SHAPES) * len(BACKGROUNDS):
            raise ValueError(
                f"binding_prompts must be in 1..{len(COLOURS) * len(SHAPES) * len(BACKGROUNDS)}"
                f", got {self.binding_prompts}"
            )

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


def _chosen(
    scenes: Sequence[Scene], templates: Sequence[int], n: int, rng: np.random.Generator
) -> list[tuple[int, int]]:
    """``n`` distinct scenes (their indices), each with a template drawn from ``templates``."""
    if n > len(scenes):
        raise ValueError(f"prompts_per_set={n} exceeds the {len(scenes)} scenes available")
    chosen = rng.choice(len(scenes), n, replace=False)
    return [(int(i), int(rng.choice(templates))) for i in chosen]


def validation_prompts(
    heldout: Sequence[Scene], used: set[int], n: int, rng: np.random.Generator
) -> list[str]:
    """Up to ``n`` prompts of held-out scenes that no test prompt shows (``used``: their
    indices in ``heldout``), in training templates: a validation set that shares no scene
    with the test sets, and no caption with the training pairs."""
    free = [scene for i, scene in enumerate(heldout) if i not in used]
    return [caption(free[i], t) for i, t in _chosen(free, TRAIN_TEMPLATES, min(n, len(free)), rng)]


def binding_set(n: int, rng: np.random.Generator) -> list[str]:
    """The toy attribute-binding set: ``"a(n) {colour} {shape} on a {background} background"``.

    Two noun phrases, each with its own colour (object colours and background colours share no
    word), as T2I-CompBench's colour prompts bind a colour to each of two objects. No caption
    template writes a scene without its position, so no training or test caption is one of
    these.
    """
    combos = list(itertools.product(COLOURS, SHAPES, BACKGROUNDS))
    chosen = rng.choice(len(combos), n, replace=False)
    texts = [f"{c} {s} on a {b} background" for c, s, b in (combos[int(i)] for i in chosen)]
    return [f"{'an' if t[0] in 'aeiou' else 'a'} {t}" for t in texts]


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
    "heldout_captions", "unseen_combinations" and "new_templates" (the test sets),
    "validation" (:func:`validation_prompts`; for choosing a training step) and
    "attribute_binding" (:func:`binding_set`), and
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
    rows, used = [], set()
    for name, (scenes, templates) in sets.items():
        chosen = _chosen(scenes, templates, cfg.prompts_per_set, rng)
        rows += [(name, i, caption(scenes[s], t)) for i, (s, t) in enumerate(chosen)]
        if scenes is split["heldout_captions"]:
            used.update(s for s, _ in chosen)
    # Its own stream: the test sets stay as they were before it existed.
    validation = validation_prompts(
        split["heldout_captions"], used, cfg.prompts_per_set, np.random.default_rng([cfg.seed, 4])
    )
    rows += [("validation", i, p) for i, p in enumerate(validation)]
    binding = binding_set(cfg.binding_prompts, np.random.default_rng([cfg.seed, 5]))
    rows += [("attribute_binding", i, p) for i, p in enumerate(binding)]
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
        "n_prompts": {
            **{name: cfg.prompts_per_set for name in [*sets, "editing"]},
            "attribute_binding": cfg.binding_prompts,
        },
    }
