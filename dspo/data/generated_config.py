"""The settings of a generated pair source (``pairs.source.kind: generated``), read at plan time.

A generated source makes its pairs in the workflow (AI feedback): ``images_per_prompt`` images
of each prompt of ``prompts`` sampled from ``model`` (``base``, or a released model's method
entry), scored by the labelling reward ``label`` (one evaluation reward, ``{reward: NAME}``, or
a weighted sum, ``{weights: {NAME: w, ...}}``), and paired by ``rule``: ``best_worst`` (each
prompt's best image against its worst) or ``margin`` (every pair of a prompt's images). A pair
whose reward gap is at most ``margin`` is a tie (labels 0.5), which normalising then drops or
keeps as ``pairs.drop_ties`` says. The heavy part is :mod:`dspo.data.generated`; this module
imports nothing heavy, so the workflow and the config check read it at plan time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

GENERATED = "generated"
RULES = ("best_worst", "margin")
# The values a generated source takes for the keys it leaves out.
DEFAULTS: dict[str, Any] = {
    "model": "base",
    "images_per_prompt": 4,
    "rule": "best_worst",
    "margin": 0.0,
    "guidance": None,
    "seed": 0,
    "shards": 1,
}


def is_generated(source: Mapping[str, Any]) -> bool:
    return source.get("kind") == GENERATED


def generated_settings(source: Mapping[str, Any], evaluation: Mapping[str, Any]) -> dict[str, Any]:
    """The source with every default filled in; ``guidance`` defaults to the first evaluation
    scale, and the label resolved to ``weights`` (a single reward has weight 1)."""
    spec = {**DEFAULTS, **{k: v for k, v in source.items() if v is not None}}
    if spec["guidance"] is None:
        spec["guidance"] = float(evaluation["guidance"][0])
    spec["weights"] = label_weights(spec["label"])
    return spec


def label_weights(label: Mapping[str, Any]) -> dict[str, float]:
    """The labelling reward as {evaluation reward name: weight}."""
    if label.get("reward") is not None:
        return {str(label["reward"]): 1.0}
    return {str(name): float(w) for name, w in (label.get("weights") or {}).items()}


def label_name(weights: Mapping[str, float]) -> str:
    """How tables name a labelling reward: ``alignment``, or ``0.5 pickscore + 0.5 hpsv2``."""
    if len(weights) == 1 and next(iter(weights.values())) == 1.0:
        return next(iter(weights))
    return " + ".join(f"{w:g} {name}" for name, w in weights.items())


def generated_problems(
    source: Mapping[str, Any], rewards: Mapping[str, Any], samplable: set[str]
) -> list[str]:
    """Config errors of a generated pair source, each naming its key: a label naming no
    configured evaluation reward (or both or neither of ``reward`` and ``weights``), a rule
    or margin out of range, and a ``model`` that is neither ``base`` nor in ``samplable``
    (the released models: a trained model learns from these very pairs)."""
    where = "pairs.source"
    problems = []
    label = source.get("label") or {}
    if (label.get("reward") is None) == (not label.get("weights")):
        problems.append(f"{where}.label: give exactly one of `reward` and `weights`")
    for name in label_weights(label):
        if name not in rewards:
            problems.append(
                f"{where}.label: {name!r} is not a configured reward (evaluation.rewards: "
                f"{sorted(rewards)})"
            )
    model = source.get("model") or DEFAULTS["model"]
    if model != "base" and model not in samplable:
        problems.append(
            f"{where}.model: {model!r} must be base or a released model (methods.<name>.model);"
            " a trained model would learn from its own pairs"
        )
    if (source.get("rule") or DEFAULTS["rule"]) not in RULES:
        problems.append(f"{where}.rule: must be one of {list(RULES)}")
    if float(source.get("margin") or 0.0) < 0:
        problems.append(f"{where}.margin: must be at least 0")
    rule = source.get("rule") or DEFAULTS["rule"]
    if int(source.get("images_per_prompt") or DEFAULTS["images_per_prompt"]) < 2:
        problems.append(f"{where}.images_per_prompt: a pair needs at least 2 images ({rule})")
    return problems
