"""The config slice of one step, as a command receives it: merged, filled and validated.

A step's settings come from up to three places, later ones winning key by key:

1. ``--config FILE.yaml``: a YAML mapping, the step's slice of the workflow config;
2. ``--params JSON``: the same as an inline JSON mapping (what the workflow's rules pass);
3. the step's own flags (``dspo train --steps 10``), for the keys that have one.

Training fills the keys none of them sets from the ``training`` defaults of
``config/config.yaml``, so a user's file may hold only ``objective`` and what differs. The
merged slice is checked against ``config/schema.yaml`` (the same rules the workflow's config
obeys) before any work starts: a missing key, a key the step does not know and a value of the
wrong type are errors that name the key and where it came from.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "config" / "schema.yaml"
DEFAULTS = REPO / "config" / "config.yaml"


class StepConfigError(ValueError):
    """The step's settings are unusable; the message names the key and its source."""


@dataclass(frozen=True)
class Source:
    """One place settings come from: its name in messages and its mapping."""

    name: str
    values: Mapping[str, Any] = field(default_factory=dict)


@cache
def _schema() -> dict[str, Any]:
    return yaml.safe_load(SCHEMA.read_text())


@cache
def _defaults() -> dict[str, Any]:
    return yaml.safe_load(DEFAULTS.read_text())


def _node(path: str) -> dict[str, Any]:
    """The schema node at a '/'-separated path, with a top-level ``$ref`` resolved."""
    node: Any = _schema()
    for part in path.split("/"):
        node = node[part]
    ref = node.get("$ref")
    if ref:
        return _node(ref.removeprefix("#/"))
    return node


def _train_schema() -> dict[str, Any]:
    """A method's resolved training config: the training keys and the method's own keys."""
    method = _node("properties/methods/additionalProperties")["properties"]
    training = _node("$defs/training")
    extra = {
        "name": {"type": "string", "description": "name of the method (outputs, logs)"},
        "objective": method["objective"],
        "data": method["data"],
        "params": method["params"],
        "lora": method["lora"],
    }
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {**training["properties"], **extra},
        # The training block's required keys; optional ones (channels_last, compile) may be
        # absent, as they are from every config written before they existed.
        "required": [*_schema()["properties"]["training"]["required"], "objective"],
    }


_SAMPLING_KEYS = ("seeds", "guidance", "steps", "scheduler", "resolution", "batch_size")


def _sampling_schema() -> dict[str, Any]:
    """Sampling settings, plus the editing strength (needed only when the job edits too)."""
    evaluation = _node("properties/evaluation")["properties"]
    properties = {key: evaluation[key] for key in _SAMPLING_KEYS}
    properties["dtype"] = _node("properties/base_model")["properties"]["dtype"]
    properties["strength"] = _node("properties/evaluation/properties/editing")["properties"][
        "strength"
    ]
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
        "required": list(_SAMPLING_KEYS),
    }


def _score_schema() -> dict[str, Any]:
    rewards = _node("properties/evaluation/properties/rewards")
    reward = {**rewards["additionalProperties"], "type": "object"}
    return {**rewards, "additionalProperties": reward}


def _tables_schema() -> dict[str, Any]:
    evaluation = _node("properties/evaluation")["properties"]
    names = {"type": "array", "items": {"type": "string"}, "minItems": 1}
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "methods": {**names, "description": "methods, in the order of table rows"},
            "rewards": {**names, "description": "reward models (the scores' columns)"},
            "prompt_sets": {**names, "description": "image sets, in table order"},
            "labels": evaluation["labels"],
            "bootstrap": evaluation["bootstrap"],
            "paper_tables": evaluation["tables"],
            "groups": {
                "type": "object",
                "description": "each trained model's [group, replicate] (dspo.config.experiments)",
            },
            "sweeps": {"type": "object", "description": "each sweep's method, keys and points"},
            "step_selection": {
                "type": ["object", "null"],
                "description": "the validation set, reward and each trained model's candidate "
                "steps (step: row) that pick its step (dspo.evaluation.step_selection)",
                "required": ["prompt_set", "reward", "candidates"],
                "properties": {
                    **evaluation["step_selection"]["properties"],
                    "candidates": {"type": "object", "additionalProperties": {"type": "object"}},
                },
            },
        },
        "required": ["methods", "rewards", "prompt_sets", "bootstrap"],
    }


def read_config_file(path: Path) -> dict[str, Any]:
    """A YAML file holding one mapping (an empty file is an empty mapping)."""
    try:
        values = yaml.safe_load(path.read_text())
    except OSError as err:
        raise StepConfigError(f"--config {path}: cannot read it: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise StepConfigError(f"--config {path}: not valid YAML: {err}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise StepConfigError(f"--config {path}: expected a mapping of keys, got {values!r}")
    return values


def _problem(error: Any, origin: Mapping[str, str], sources: str) -> str:
    """One schema error as 'KEY (from SOURCE): what is wrong'."""
    path = [str(p) for p in error.absolute_path]
    if error.validator == "required":
        key = error.message.split("'")[1]
        where = ".".join([*path, key])
        return f"{where}: missing (set it in {sources})"
    if error.validator == "additionalProperties":
        known = ", ".join(sorted(error.schema.get("properties", {})))
        unknown = [k for k in error.instance if k not in error.schema.get("properties", {})]
        lines = []
        for key in unknown:
            where = ".".join([*path, key])
            source = origin.get(path[0] if path else key, sources)
            lines.append(f"{where} (from {source}): unknown key; known keys: {known}")
        return "\n  ".join(lines)
    where = ".".join(path) or "(the mapping)"
    source = origin.get(path[0], sources) if path else sources
    hint = ""
    if error.validator == "type" and isinstance(error.instance, str) and _is_number(error.instance):
        # YAML 1.1 reads 1e-3 as text: a number needs a dot and a signed exponent.
        hint = "; YAML reads this as text, write a number as 1.0e-3"
    return f"{where} (from {source}): {error.message}{hint}"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _objective_problems(settings: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The objective's hyper-parameters (``params``) checked as the workflow checks them."""
    from dspo.config.check import check_objectives

    problems = [p.removeprefix("methods.method.") for p in check_objectives({"method": settings})]
    return [tuple(p.split(": ", 1)) for p in problems]


@dataclass(frozen=True)
class Step:
    """How one command's settings are checked: its schema and the defaults it starts from."""

    # Functions, so that the schema and defaults are read when a command runs, not on import.
    schema: Callable[[], dict[str, Any]]
    defaults: Callable[[], dict[str, Any]] = dict
    # Checks beyond the schema's, run on schema-valid settings: (dotted key, what is wrong).
    check: Callable[[Mapping[str, Any]], list[tuple[str, str]]] = lambda settings: []


STEPS: dict[str, Step] = {
    "train": Step(
        _train_schema, lambda: {**_defaults()["training"], "params": {}}, _objective_problems
    ),
    "generate": Step(_sampling_schema, lambda: {"dtype": "float32"}),
    "score": Step(_score_schema),
    "tables": Step(_tables_schema, lambda: {"labels": {}, "paper_tables": {}}),
}


def resolve(step: str, sources: list[Source]) -> dict[str, Any]:
    """The settings of ``step``: its defaults, then each source on top, checked by the schema."""
    import jsonschema

    spec = STEPS[step]
    merged: dict[str, Any] = dict(spec.defaults())
    origin = dict.fromkeys(merged, "the defaults")
    for source in sources:
        merged.update(source.values)
        origin.update(dict.fromkeys(source.values, source.name))
    named = " or ".join(s.name for s in sources) or "--config FILE or --params JSON"
    validator = jsonschema.Draft202012Validator(spec.schema())
    errors = sorted(validator.iter_errors(merged), key=lambda e: list(e.absolute_path))
    problems = [_problem(e, origin, named) for e in errors]
    if not problems:
        problems = [
            f"{key} (from {origin.get(key.split('.')[0], named)}): {message}"
            for key, message in spec.check(merged)
        ]
    if problems:
        raise StepConfigError(f"invalid {step} settings:\n  " + "\n  ".join(problems))
    return merged


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base``, mappings key by key, as Snakemake merges
    ``--configfile`` files."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def workflow_config(configfiles: Sequence[Path | str]) -> dict[str, Any]:
    """The workflow's config: ``config/config.yaml`` with each file deep-merged over it in
    order, as ``snakemake --configfile A B`` gives it."""
    config: dict[str, Any] = {}
    for path in [DEFAULTS, *configfiles]:
        config = deep_merge(config, yaml.safe_load(Path(path).read_text()) or {})
    return config
