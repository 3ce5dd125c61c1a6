"""Checks of the workflow's config that the JSON schema cannot express, run at DAG build.

The schema checks keys and types. What it cannot see would otherwise fail only when a job
starts, after hours of data and cache steps, or not at all: an objective's hyper-parameter
typo, a local source path that does not exist, a paper table naming a method no preset
defines, a released model (``methods.<name>.model``) that is neither a folder nor a hub
id, validation images taking prompts from a prompt set that is not configured, a source key
its loader does not read (``streaming`` on a parquet source or a prompt set) or a local pair
source whose files do not hold pairs in a layout the loader knows.
`check_config` finds these before any job runs, and every message starts with the config key
at fault (``methods.dspo.params.lamb: ...``).

Base models: ``base_model.build: toy`` makes ``base_model.path`` a workflow output (the
workflow writes, and on a forced rerun deletes, that folder). It is therefore accepted only
for a path under ``results/``; any other model needs ``build: null`` and is loaded as it is,
so a user's own model folder is never an output. A path that does not exist locally is a hub
id only when it has the hub's ``owner/name`` form and ``owner`` is not a local folder;
anything else (an absolute path, ``./x``, ``a/b/c``, ``models/typo`` beside a ``models/``
folder) is a local path and must exist. Write ``./owner/name`` to force a local reading.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dspo.config.names import entries, is_hub_id, local_path_exists
from dspo.objectives import OBJECTIVES, coerce_hyper, hyper_defaults

# Folder whose contents the workflow owns: only there may it build (and delete) a model.
OUTPUT_ROOT = "results"
# base_model.build: toy pre-trains the tiny model at base_model.path; null loads the path.
BASE_MODEL_BUILDS = ("toy", None)
# Keys each source kind needs, per place a source appears, and the local-path kinds.
SOURCE_KINDS_BY_PLACE = {
    "pairs.source": {"toy": set(), "parquet": {"path"}, "webdataset": {"path"}, "hub": {"id"}},
    "prompt set": {"toy": {"split"}, "file": {"path"}, "hub": {"id"}, "hpsv2": set()},
    "evaluation.editing.source": {"toy": set(), "file": {"path"}, "hub": {"id"}},
}
_LOCAL_KINDS = {"parquet", "webdataset", "file"}
# Keys of the shared source schema that only the pair loader reads (prompt tables are read
# whole, from local files or the split's hub files).
_PAIR_ONLY_KEYS = ("streaming", "members")


class ConfigError(ValueError):
    """The config is unusable; the message lists every problem, each naming its key."""


def _check_base_model(base: Mapping[str, Any], root: Path) -> list[str]:
    path = str(base["path"])
    build = base.get("build")
    if build not in BASE_MODEL_BUILDS:
        return [f"base_model.build: {build!r} is not one of {BASE_MODEL_BUILDS}"]
    if build == "toy":
        parts = Path(path).parts
        if Path(path).is_absolute() or not parts or parts[0] != OUTPUT_ROOT or ".." in parts:
            return [
                f"base_model.build: 'toy' builds (and on a rerun overwrites) base_model.path "
                f"{path!r}, which is not under {OUTPUT_ROOT}/; to load a model of your own set "
                f"base_model.build: null, to build the toy model give a path under {OUTPUT_ROOT}/"
            ]
        return [
            f"base_model.{key}: needed to build the toy model (base_model.build: toy)"
            for key in ("architecture", "pretrain")
            if not base.get(key)
        ]
    if (root / path).exists() or is_hub_id(path, root):
        return []
    return [
        f"base_model.path: local model {path!r} does not exist (relative to {root}); a hub id "
        "has the form owner/name"
    ]


def check_objectives(methods: Mapping[str, Any]) -> list[str]:
    problems = []
    for name, entry in entries(methods).items():
        objective = entry.get("objective")
        if objective is None:  # a released model, or neither (experiments.released_problems)
            continue
        if objective not in OBJECTIVES:
            problems.append(f"methods.{name}.objective: unknown objective {objective!r}")
            continue
        defaults = hyper_defaults(OBJECTIVES[objective].fn)
        accepted = ", ".join(sorted(defaults)) or "(none)"
        for key, value in entries(entry.get("params") or {}).items():
            where = f"methods.{name}.params.{key}"
            if key not in defaults:
                problems.append(
                    f"{where}: objective {objective!r} has no hyper-parameter {key!r}; "
                    f"accepted: {accepted}"
                )
                continue
            try:
                coerce_hyper(objective, key, value, defaults[key])
            except ValueError as err:
                problems.append(f"{where}: {err}")
    return problems


def _check_source(where: str, kinds: Mapping[str, set[str]], source: Any, root: Path) -> list[str]:
    kind = source["kind"]
    if kind not in kinds:
        return [f"{where}.kind: {kind!r} is not a source here; use one of {sorted(kinds)}"]
    missing = sorted(kinds[kind] - {key for key, value in source.items() if value is not None})
    if missing:
        return [f"{where}.{key}: a {kind} source needs it" for key in missing]
    if kind == "hpsv2" and (source.get("path") is None) == (source.get("id") is None):
        return [f"{where}: an hpsv2 source needs exactly one of `path` (a folder) and `id` (hub)"]
    local = kind in _LOCAL_KINDS or (kind == "hpsv2" and source.get("path") is not None)
    if local and not local_path_exists(str(source["path"]), root):
        return [f"{where}.path: {source['path']!r} does not exist (relative to {root})"]
    return []


def _check_pair_source(source: Mapping[str, Any], root: Path) -> list[str]:
    """The pair source's keys as the loader checks them, then a local source's layout."""
    from dspo.data.sources import key_problems, layout_problems

    problems = _check_source("pairs.source", SOURCE_KINDS_BY_PLACE["pairs.source"], source, root)
    if problems or source["kind"] == "toy":
        return problems
    problems = [f"pairs.source.{problem}" for problem in key_problems(source)]
    if source.get("streaming") and importlib.util.find_spec("datasets") is None:
        problems.append(
            "pairs.source.streaming: streaming needs the 'datasets' package (pip install "
            "dspo[hub]); without streaming only huggingface_hub is needed"
        )
    return problems or [f"pairs.source: {problem}" for problem in layout_problems(source, root)]


def _check_table_source(where: str, place: str, source: Mapping[str, Any], root: Path) -> list[str]:
    """A prompt set's or the editing set's source: its kind's keys, and none a pair source's."""
    problems = [
        f"{where}.{key}: only a pair source reads it"
        for key in _PAIR_ONLY_KEYS
        if source.get(key) is not None
    ]
    return problems + _check_source(where, SOURCE_KINDS_BY_PLACE[place], source, root)


def _check_generated(config: Mapping[str, Any], root: Path) -> list[str]:
    """A generated pair source: its own keys, then its prompts' source as a prompt set's."""
    from dspo.config.experiments import released_models
    from dspo.data.generated_config import generated_problems

    source = config["pairs"]["source"]
    rewards = entries(config["evaluation"]["rewards"])
    problems = generated_problems(source, rewards, set(released_models(config)))
    prompts = source["prompts"]
    if prompts.get("kind") == "toy" and prompts.get("split") is None:
        return problems  # the toy world's training captions
    where = "pairs.source.prompts"
    return problems + _check_table_source(where, "prompt set", prompts, root)


def _check_sources(config: Mapping[str, Any], root: Path) -> list[str]:
    evaluation = config["evaluation"]
    if config["pairs"]["source"].get("kind") == "generated":
        problems = _check_generated(config, root)
    else:
        problems = _check_pair_source(config["pairs"]["source"], root)
    for name, spec in entries(evaluation["prompt_sets"]).items():
        where = f"evaluation.prompt_sets.{name}.source"
        problems += _check_table_source(where, "prompt set", spec["source"], root)
    if evaluation.get("editing"):
        where = "evaluation.editing.source"
        problems += _check_table_source(where, where, evaluation["editing"]["source"], root)
    binding = entries((evaluation.get("attribute_binding") or {}).get("prompt_sets"))
    for name, spec in binding.items():
        where = f"evaluation.attribute_binding.prompt_sets.{name}"
        if name in entries(evaluation["prompt_sets"]) or name == "editing":
            problems.append(f"{where}: the name is taken by another prompt set; choose another")
        problems += _check_table_source(f"{where}.source", "prompt set", spec["source"], root)
    return problems


def _check_rewards(rewards: Mapping[str, Any], root: Path) -> list[str]:
    """Reward files outside a hub repo must exist; models are hub ids or existing folders."""
    problems = []
    for name, spec in entries(rewards).items():
        for key in ("checkpoint", "med_config"):
            if key in spec and spec.get("repo") is None and not (root / spec[key]).exists():
                problems.append(
                    f"evaluation.rewards.{name}.{key}: {spec[key]!r} does not exist (relative "
                    f"to {root}); name a local file, or a file of the hub repo given as `repo`"
                )
        for key in ("model", "processor", "clip_model", "tokenizer"):
            value = str(spec.get(key, ""))
            if value and not (root / value).exists() and not is_hub_id(value, root, legacy=True):
                problems.append(
                    f"evaluation.rewards.{name}.{key}: local folder {value!r} does not exist "
                    f"(relative to {root}); a hub id has the form owner/name"
                )
    return problems


def _check_quality(quality: Mapping[str, Any] | None, root: Path) -> list[str]:
    """The FID reference set is a folder that exists."""
    reference = (quality or {}).get("reference")
    if reference and not (root / reference).is_dir():
        return [
            f"evaluation.quality.reference: folder {reference!r} does not exist (relative to "
            f"{root}); name a folder of reference images, or null for no FID"
        ]
    return []


def _training_blocks(config: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The shared training settings and each method's own, by config key."""
    places = {"training": config["training"]}
    for name, entry in entries(config["methods"]).items():
        places[f"methods.{name}.training"] = entry.get("training") or {}
    return places


def _check_trackers(config: Mapping[str, Any]) -> list[str]:
    """Each named tracker (shared or a method's own) must be installed."""
    from dspo.training.tracking import tracker_problem

    problems = []
    for where, block in _training_blocks(config).items():
        problem = tracker_problem(block.get("report_to"))
        if problem:
            problems.append(f"{where}.report_to: {problem}")
    return problems


def _check_validation(config: Mapping[str, Any]) -> list[str]:
    """Each validation block (shared or a method's own) must have a prompt, and the prompt
    set it takes prompts from must be configured."""
    from dspo.training.validation import validation_problems

    prompt_sets = entries(config["evaluation"]["prompt_sets"])
    problems = []
    for where, block in _training_blocks(config).items():
        if block.get("validation"):
            problems += validation_problems(block["validation"], prompt_sets, f"{where}.validation")
    return problems


def _check_tables(config: Mapping[str, Any]) -> list[str]:
    """Table rows and columns must name configured methods and prompt sets; entries a preset
    dropped (set to null) may disappear from tables, unknown names may not."""
    from dspo.config.experiments import round_rows

    evaluation = config["evaluation"]
    methods = set(config["methods"]) | set(round_rows(config))
    prompt_sets = set(evaluation["prompt_sets"]) | {"editing"}
    problems = []
    for table, spec in entries(evaluation.get("tables")).items():
        for key, known in (
            ("methods", methods),
            ("prompt_sets", prompt_sets),
            ("paper_rows", methods),
        ):
            unknown = [name for name in spec.get(key) or [] if name not in known]
            if unknown:
                problems.append(
                    f"evaluation.tables.{table}.{key}: unknown {key.replace('_', ' ')} "
                    f"{', '.join(map(repr, unknown))}; configured: {', '.join(sorted(known))}"
                )
    return problems


def _check_degrader(degrader: Mapping[str, Any], root: Path) -> list[str]:
    model = str(degrader.get("model", ""))
    if degrader["kind"] != "llm" or (root / model).exists() or is_hub_id(model, root):
        return []
    return [
        f"ddspo.degrader.model: local model {model!r} does not exist (relative to {root}); a "
        "hub id has the form owner/name"
    ]


def _check_released(config: Mapping[str, Any], root: Path) -> list[str]:
    from dspo.config.experiments import released_problems

    return released_problems(config, root)


def _check_rounds(config: Mapping[str, Any]) -> list[str]:
    from dspo.config.experiments import round_problems

    return round_problems(config)


def _check_sweeps(config: Mapping[str, Any]) -> list[str]:
    from dspo.config.experiments import sweep_problems

    def accepted(objective: str) -> list[str]:
        known = OBJECTIVES.get(objective)
        return sorted(hyper_defaults(known.fn)) if known else []

    return sweep_problems(config, accepted)


def _check_steps(config: Mapping[str, Any]) -> list[str]:
    from dspo.config.experiments import step_problems

    return step_problems(config)


def validate_schema(config: dict[str, Any], schema: str | Path) -> None:
    """Snakemake's schema validation (which fills the schema's defaults into ``config``), its
    error raised as a `ConfigError` naming the key; some schema failures (a ``oneOf``) leave
    Snakemake as a bare jsonschema error with no key in its first line."""
    from jsonschema.exceptions import ValidationError
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    try:
        validate(config, str(schema))
    except (ValidationError, WorkflowError) as err:
        # Snakemake raises a WorkflowError while handling the jsonschema error.
        error = err if isinstance(err, ValidationError) else err.__context__
        if not isinstance(error, ValidationError):
            raise
        if error.context:
            error = branch_error(error)
        key = ".".join(str(part) for part in error.absolute_path) or "(top level)"
        raise ConfigError(f"{key}: {error.message}") from None


def branch_error(error: Any) -> Any:
    """The error of a failed ``oneOf``/``anyOf`` that names the key at fault: where exactly one
    branch accepts the entry's ``kind`` (the schema's unions are told apart by it), that
    branch's most relevant error; otherwise jsonschema's best match over every branch."""
    from jsonschema.exceptions import best_match

    branches: dict[Any, list[Any]] = {}
    for sub in error.context:
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)
    kinds = [
        errs
        for errs in branches.values()
        if not any(list(e.relative_path)[:1] == ["kind"] for e in errs)
    ]
    return best_match(kinds[0] if len(kinds) == 1 else error.context)


def config_problems(config: Mapping[str, Any], root: Path | str = ".") -> list[str]:
    """Every problem of a schema-valid config, each message starting with its key."""
    root = Path(root)
    return [
        *_check_base_model(config["base_model"], root),
        *check_objectives(config["methods"]),
        *_check_sources(config, root),
        *_check_rewards(config["evaluation"]["rewards"], root),
        *_check_quality(config["evaluation"].get("quality"), root),
        *_check_trackers(config),
        *_check_validation(config),
        *_check_tables(config),
        *_check_released(config, root),
        *_check_degrader(config["ddspo"]["degrader"], root),
        *_check_sweeps(config),
        *_check_rounds(config),
        *_check_steps(config),
    ]


def check_config(config: Mapping[str, Any], root: Path | str = ".") -> None:
    """Raise ConfigError listing every problem of ``config``; paths are relative to ``root``."""
    problems = config_problems(config, root)
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
