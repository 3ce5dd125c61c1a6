"""The toy world's scenes: the caption grammar's vocabulary, captions and the scene split.

A scene is what a caption states (colour, shape, position, size, background); captions are
written from scenes with a few templates and parsed back by their vocabulary words.
"""

from __future__ import annotations

import functools
import itertools
import re
from dataclasses import dataclass

import numpy as np

# ----------------------------------------------------------------------------- vocabulary

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 25, 35),
    "green": (30, 170, 50),
    "blue": (30, 70, 230),
    "yellow": (235, 225, 40),
    "purple": (150, 40, 190),
    "orange": (250, 120, 20),
}
# Backgrounds share no word and no colour with objects, so a caption names each unambiguously.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "black": (10, 10, 10),
    "gray": (128, 128, 128),
    "navy": (15, 25, 90),
    "beige": (230, 210, 170),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# Object centre as (x, y) fractions of the frame, y pointing down.
POSITIONS: dict[str, tuple[float, float]] = {
    "center": (0.5, 0.5),
    "left": (0.3, 0.5),
    "right": (0.7, 0.5),
    "top": (0.5, 0.3),
    "bottom": (0.5, 0.7),
}
# Radius of the equivalent circle as a fraction of the frame side.
SIZES: dict[str, float] = {"small": 0.13, "large": 0.21}
ATTRIBUTES: tuple[str, ...] = ("colour", "shape", "position", "size", "background")
_VOCAB: dict[str, tuple[str, ...]] = {
    "colour": tuple(COLOURS),
    "shape": SHAPES,
    "position": tuple(POSITIONS),
    "size": tuple(SIZES),
    "background": tuple(BACKGROUNDS),
}
_WORD_TO_ATTR: dict[str, str] = {w: a for a, words in _VOCAB.items() for w in words}

# ----------------------------------------------------------------------------- captions

# Each template is a list of chunks; a chunk naming an unstated attribute is dropped, except the
# shape noun, which falls back to "object" (not a vocabulary word, so parsing gives None again).
_TEMPLATES: tuple[tuple[str, ...], ...] = (
    ("a", "{size}", "{colour}", "{shape}", "at the {position}", "on a {background} background"),
    ("{size}", "{colour}", "{shape},", "{position},", "{background} background"),
    (
        "a picture of one",
        "{colour}",
        "{shape}",
        "({size})",
        "placed at the {position},",
        "{background} backdrop",
    ),
    ("{background} backdrop with one", "{colour}", "{shape},", "{size},", "toward the {position}"),
)
TRAIN_TEMPLATES: tuple[int, ...] = (0, 1)
HELDOUT_TEMPLATES: tuple[int, ...] = (2, 3)
_FIELD_RE = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class Scene:
    """What a caption states; None means the caption does not say."""

    colour: str | None = None
    shape: str | None = None
    position: str | None = None
    size: str | None = None
    background: str | None = None


def caption(scene: Scene, template: int) -> str:
    """Write ``scene`` with caption template ``template`` (0-1 training, 2-3 held out)."""
    chunks = []
    for chunk in _TEMPLATES[template]:
        attr = _FIELD_RE.search(chunk)
        if attr is None:
            chunks.append(chunk)
            continue
        value = getattr(scene, attr.group(1))
        if value is None and attr.group(1) == "shape":
            value = "object"
        if value is not None:
            chunks.append(_FIELD_RE.sub(value, chunk))
    return " ".join(chunks).strip(" ,")


@functools.lru_cache(maxsize=65536)
def parse_caption(text: str) -> Scene:
    """Find the attribute words in any caption; the first word of each attribute wins."""
    found: dict[str, str] = {}
    for word in re.findall(r"[a-z]+", text.lower()):
        attr = _WORD_TO_ATTR.get(word)
        if attr is not None and attr not in found:
            found[attr] = word
    return Scene(**found)


def all_scenes() -> list[Scene]:
    """Every complete scene (6 colours x 3 shapes x 5 positions x 2 sizes x 5 backgrounds)."""
    return [Scene(*combo) for combo in itertools.product(*(_VOCAB[a] for a in ATTRIBUTES))]


def split_scenes(
    seed: int, holdout_fraction: float = 0.1, n_unseen_combinations: int = 3
) -> dict[str, list[Scene]]:
    """Split all scenes into "train", "heldout_captions" and "unseen_combinations".

    Whole colour-shape combinations are held out first (compositional generalisation); a
    fraction of the remaining scenes is then held out as unseen captions.
    """
    rng = np.random.default_rng([seed, 0])
    combos = list(itertools.product(COLOURS, SHAPES))
    unseen = {combos[i] for i in rng.choice(len(combos), n_unseen_combinations, replace=False)}
    scenes = all_scenes()
    seen = [s for s in scenes if (s.colour, s.shape) not in unseen]
    n_heldout = int(round(holdout_fraction * len(seen)))
    heldout_idx = set(rng.choice(len(seen), n_heldout, replace=False).tolist())
    return {
        "train": [s for i, s in enumerate(seen) if i not in heldout_idx],
        "heldout_captions": [s for i, s in enumerate(seen) if i in heldout_idx],
        "unseen_combinations": [s for s in scenes if (s.colour, s.shape) in unseen],
    }
