"""Every ``enum`` of config/schema.yaml equals the values the code accepts for that key.

The schema lists the names of objectives, reward models, optimisers, dtypes, ... so that a
config typo fails at DAG build; the code dispatches on the same names through its own tables.
Each enum here is compared with the table the code dispatches or validates with, so adding a
name on one side only fails a test. A new enum in the schema must get a case below.

(Objective hyper-parameters, ``methods.<name>.params.<key>``, are checked at DAG build by
``dspo.config.check``; tests/faults/test_workflow_config.py covers an unknown and a
wrong-typed one.)
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SCHEMA = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())


def enums(node: Any, pointer: str = "") -> Iterator[tuple[str, list[Any]]]:
    """(JSON pointer of the enum's schema node, its values) for every enum in the schema."""
    if isinstance(node, dict):
        if "enum" in node:
            yield pointer, node["enum"]
        for key, child in node.items():
            yield from enums(child, f"{pointer}/{str(key).replace('~', '~0').replace('/', '~1')}")
    elif isinstance(node, list):
        for i, child in enumerate(node):
            yield from enums(child, f"{pointer}/{i}")


def resolve(pointer: str) -> Any:
    """The schema node at a JSON pointer."""
    node = SCHEMA
    for part in pointer.lstrip("/").split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


# Registries: each returns the values the code accepts (imported lazily: some pull in torch).


def code_table(module: str, name: str) -> Callable[[], Iterable[Any]]:
    """A registry that is one module-level table of the code: ``module.name``, read on call."""

    def registry() -> Iterable[Any]:
        return getattr(importlib.import_module(module), name)

    registry.__name__ = f"{module}.{name}"
    return registry


def source_kinds() -> Iterable[str]:
    from dspo.config.check import SOURCE_KINDS_BY_PLACE as SOURCE_KINDS

    # The schema's one source definition serves pairs, prompt sets and the editing set.
    return {kind for kinds in SOURCE_KINDS.values() for kind in kinds}


def objectives() -> Iterable[str | None]:
    from dspo.objectives import OBJECTIVES

    # null: no objective, for a method entry naming a released model (dspo/config/experiments.py).
    return [None, *OBJECTIVES]


def snakefile_datasets() -> list[str]:
    """The `dataset` wildcard constraint of the Snakefile: the pair tables a cache is built of."""
    # Later rounds' sets ({ROUND_DATASETS}) are made by the workflow, not configured.
    pattern = r'^\s*dataset=f?"([^"{]+)(?:\{ROUND_DATASETS\})?",?\s*$'
    found = re.findall(pattern, (REPO / "Snakefile").read_text(), re.M)
    assert len(found) == 1, f"Snakefile: expected one `dataset=` wildcard constraint, got {found}"
    return found[0].split("|")


def sampling_schedulers() -> Iterable[str]:
    """The names some model family's ``sampling_scheduler`` takes: sampling and editing set the
    pipeline's scheduler through its family (SD, SDXL:
    ``dspo.families.sd.SAMPLING_SCHEDULERS``; SD3, FLUX: their flow-matching Euler
    sampler). Each family is asked about every name the schema, dspo.families.sd or a
    family's ``default_sampler`` knows, on a stand-in pipeline."""
    from dspo.families import REGISTRY, family_class
    from dspo.families.sd import SAMPLING_SCHEDULERS

    classes = [family_class(name) for name in REGISTRY]
    candidates = {*resolve(f"{EVALUATION}/scheduler")["enum"], *SAMPLING_SCHEDULERS}
    candidates |= {cls.default_sampler for cls in classes}
    accepted = set()
    for cls in classes:
        family = cls({})
        for name in sorted(candidates):
            pipe = SimpleNamespace(scheduler=SimpleNamespace(config={}))
            try:
                family.sampling_scheduler(pipe, name)
            except ValueError:
                continue
            accepted.add(name)
    return accepted


def binding_kinds() -> Iterable[str]:
    from dspo.rewards import LOADERS

    # The B-VQA reward kinds: the answerer differs, the scoring is one (dspo.rewards.bvqa).
    return [kind for kind in LOADERS if kind.endswith("bvqa")]


def toy_oracle_parts() -> Iterable[str]:
    """``PARTS`` of the module whose reward the ``toy_oracle`` loader builds."""
    from dspo.rewards import load_reward

    reward = load_reward({"kind": "toy_oracle"})
    return sys.modules[type(reward).__module__].PARTS


def paper_tables() -> Iterable[str]:
    from dspo.evaluation.tables import published_results

    return published_results()["table"].unique()


# The torch dtypes of base_model, cache, rewards and the attribute-binding scorer.
dtypes = code_table("dspo.core.dtypes", "DTYPES")

TRAINING = "/$defs/training/properties"
METHOD = "/properties/methods/additionalProperties/properties"
EVALUATION = "/properties/evaluation/properties"
REWARD = f"{EVALUATION}/rewards/additionalProperties/properties"
BINDING = f"{EVALUATION}/attribute_binding/properties/scorer/properties"
DEGRADER = "/properties/ddspo/properties/degrader/properties"
# config key (the test id): (JSON pointer of the enum's node, the code's registry)
CASES: dict[str, tuple[str, Callable[[], Iterable[Any]]]] = {
    "source.kind": ("/$defs/source/properties/kind", source_kinds),
    "training.lr_schedule": (
        f"{TRAINING}/lr_schedule",
        code_table("dspo.training.optimisation", "LR_SCHEDULES"),
    ),
    "training.optimizer": (
        f"{TRAINING}/optimizer",
        code_table("dspo.training.optimisation", "OPTIMIZERS"),
    ),
    "training.mixed_precision": (
        f"{TRAINING}/mixed_precision",
        code_table("dspo.training.optimisation", "MIXED_PRECISIONS"),
    ),
    "training.report_to": (
        f"{TRAINING}/report_to",
        code_table("dspo.training.tracking", "REPORT_TO"),
    ),
    "training.reference_storage": (
        f"{TRAINING}/reference_storage",
        code_table("dspo.training.settings", "REFERENCE_STORAGE"),
    ),
    "training.compile.mode": (
        f"{TRAINING}/compile/properties/mode",
        code_table("dspo.training.settings", "COMPILE_MODES"),
    ),
    "training.family_settings.timesteps.weighting": (
        f"{TRAINING}/family_settings/properties/timesteps/properties/weighting",
        code_table("dspo.families.flow", "WEIGHTINGS"),
    ),
    "base_model.build": (
        "/properties/base_model/properties/build",
        code_table("dspo.config.check", "BASE_MODEL_BUILDS"),
    ),
    "base_model.dtype": ("/properties/base_model/properties/dtype", dtypes),
    "cache.dtype": ("/properties/cache/properties/dtype", dtypes),
    "cache.crop": (
        "/properties/cache/properties/crop",
        code_table("dspo.data.cache_images", "CROPS"),
    ),
    "methods.*.objective": (f"{METHOD}/objective", objectives),
    "methods.*.data": (f"{METHOD}/data", snakefile_datasets),
    "methods.*.round_reference": (
        f"{METHOD}/round_reference",
        code_table("dspo.config.experiments", "ROUND_REFERENCES"),
    ),
    "pairs.source.rule": (
        "/$defs/generated_source/properties/rule",
        code_table("dspo.data.generated_config", "RULES"),
    ),
    "ddspo.degrader.kind": (
        "/properties/ddspo/properties/degrader/properties/kind",
        code_table("dspo.data.ddspo", "DEGRADERS"),
    ),
    "ddspo.degrader.dtype": (f"{DEGRADER}/dtype", dtypes),
    "ddspo.degrader.fallback": (
        f"{DEGRADER}/fallback",
        code_table("dspo.data.degraded_prompts", "FALLBACKS"),
    ),
    "evaluation.scheduler": (f"{EVALUATION}/scheduler", sampling_schedulers),
    "evaluation.rewards.*.kind": (f"{REWARD}/kind", code_table("dspo.rewards", "LOADERS")),
    "evaluation.rewards.*.part": (f"{REWARD}/part", toy_oracle_parts),
    "evaluation.rewards.*.version": (
        f"{REWARD}/version",
        code_table("dspo.rewards.hub_defaults", "HPSV2_CHECKPOINTS"),
    ),
    "evaluation.rewards.*.dtype": (f"{REWARD}/dtype", dtypes),
    "evaluation.attribute_binding.scorer.kind": (f"{BINDING}/kind", binding_kinds),
    "evaluation.attribute_binding.scorer.dtype": (f"{BINDING}/dtype", dtypes),
    "evaluation.quality.classifier": (
        f"{EVALUATION}/quality/properties/classifier",
        code_table("dspo.evaluation.quality", "CLASSIFIERS"),
    ),
    "evaluation.tables.*.paper": (
        f"{EVALUATION}/tables/additionalProperties/properties/paper",
        paper_tables,
    ),
}


def _listed(values: Iterable[Any]) -> str:
    return ", ".join(sorted(map(repr, values))) or "(none)"


@pytest.mark.parametrize("key", CASES, ids=list(CASES))
def test_schema_enum_equals_code_registry(key: str) -> None:
    pointer, registry = CASES[key]
    in_schema = resolve(pointer)["enum"]
    in_code = list(registry())
    assert len(set(in_schema)) == len(in_schema), f"{key}: the schema lists a value twice"
    only_schema, only_code = set(in_schema) - set(in_code), set(in_code) - set(in_schema)
    assert not (only_schema or only_code), (
        f"config/schema.yaml {pointer} and the code disagree: only in the schema: "
        f"{_listed(only_schema)}; only in the code ({registry.__name__}): {_listed(only_code)}"
    )


def test_every_schema_enum_has_a_case() -> None:
    """A new enum in the schema needs its registry tied here (or one of ours moved)."""
    in_schema = {pointer for pointer, _ in enums(SCHEMA)}
    tied = {pointer for pointer, _ in CASES.values()}
    assert in_schema == tied, (
        f"enums without a case: {_listed(in_schema - tied)}; "
        f"cases whose enum is gone: {_listed(tied - in_schema)}"
    )


def test_source_kinds_per_place_are_the_loaders() -> None:
    """What config_check accepts in each place is what that place's loader reads."""
    from dspo.config.check import SOURCE_KINDS_BY_PLACE as BY_PLACE
    from dspo.data.prompts import PROMPT_SOURCE_KINDS, SOURCE_KINDS
    from dspo.data.sources import SOURCE_KEYS

    # `dspo pairs-part` reads a toy source as the toy world's parquet output.
    assert set(BY_PLACE["pairs.source"]) == {"toy", *SOURCE_KEYS}
    assert set(BY_PLACE["prompt set"]) == set(PROMPT_SOURCE_KINDS)
    assert set(BY_PLACE["evaluation.editing.source"]) == set(SOURCE_KINDS)


def test_every_dataset_is_a_rule_output() -> None:
    """Each pair table a method may train on (methods.*.data) is written by a rule."""
    rules = (REPO / "rules" / "data.smk").read_text()
    missing = [d for d in snakefile_datasets() if f'"results/data/{d}.parquet",' not in rules]
    assert not missing, f"no rule writes results/data/<name>.parquet for {missing}"


def test_report_to_trackers_are_accelerate_trackers() -> None:
    from accelerate.utils import LoggerType

    from dspo.training.tracking import REPORT_TO

    known = {t.value for t in LoggerType}
    assert {name for name in REPORT_TO if name is not None} <= known


def test_family_settings_are_the_settings_the_families_take() -> None:
    # Every keyword a family's constructor takes (docs/families.md, "Settings") is a key of
    # training.family_settings, and the schema has no key that no family takes.
    from dspo.families import REGISTRY, family_class

    taken = set().union(*(family_class(name).setting_names() for name in REGISTRY))
    schema = resolve(f"{TRAINING}/family_settings/properties")
    assert set(schema) == taken
