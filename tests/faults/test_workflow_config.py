"""Config faults are errors at DAG build that name the key: fixed cases and hypothesis
mutations of the default config's values and keys.

Each mutation goes through what the Snakefile runs before any job (schema validation, then
`dspo.config.check.check_config`). A mutation may leave a valid config; any failure must be
one of those two errors, never another exception, and must name a config key.
"""

from __future__ import annotations

import copy
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from snakemake.exceptions import WorkflowError
from snakemake.io import expand

from dspo.config.check import ConfigError, check_config, config_problems, validate_schema
from tests.workflow_run import snakemake

REPO = Path(__file__).resolve().parents[2]
SCHEMA = str(REPO / "config" / "schema.yaml")
COMMON = REPO / "rules" / "common.smk"
DEFAULT = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
# Tally of the property test's outcomes, printed when it ends (pytest -s shows it).
OUTCOMES: Counter = Counter()


def merged(**override: Any) -> dict:
    """The default config with ``override`` deep-merged over it, as --configfile does."""

    def merge(a: Any, b: Any) -> Any:
        if isinstance(a, dict) and isinstance(b, dict):
            return {**a, **{k: merge(a.get(k), v) for k, v in b.items()}}
        return b

    return merge(copy.deepcopy(DEFAULT), override)


@pytest.fixture(scope="module")
def schema_json(tmp_path_factory: pytest.TempPathFactory) -> str:
    """config/schema.yaml written as JSON, which Snakemake reads first: the same schema for
    the property test's 400 examples, without YAML's parser in Python, which took 0.25 s of
    each example's 0.26 s under cProfile (the Snakefile reads it once a run)."""
    path = tmp_path_factory.mktemp("schema") / "schema.json"
    path.write_text(json.dumps(yaml.safe_load(Path(SCHEMA).read_text())))
    return str(path)


def checked(config: dict, root: Path, schema: str = SCHEMA) -> None:
    """What the Snakefile does before building the DAG, then the rules' config slices."""
    validate_schema(config, schema)
    check_config(config, root)
    # rules/common.smk is plain Python: run it and build every slice the rules pass.
    helpers = {"config": config, "expand": expand}
    exec(compile(COMMON.read_text(), str(COMMON), "exec"), helpers)
    helpers["generation_config"]()
    helpers["reward_config"]()
    helpers["tables_config"]()
    for method in helpers["METHODS"]:
        helpers["method_config"](method)


FIXED_FAULTS = {
    "objective parameter typo": (
        {"methods": {"dspo": {"params": {"lamb": 0.1}}}},
        "methods.dspo.params.lamb",
    ),
    "objective parameter of the wrong type": (
        {"methods": {"dspo": {"params": {"lam": "small"}}}},
        "methods.dspo.params.lam",
    ),
    "parameter of another objective": (
        {"methods": {"sft": {"params": {"beta": 5000}}}},
        "methods.sft.params.beta",
    ),
    "missing parquet pairs": (
        {"pairs": {"source": {"kind": "parquet", "path": "nowhere/pairs"}}},
        "pairs.source.path",
    ),
    "webdataset without a path": (
        {"pairs": {"source": {"kind": "webdataset"}}},
        "pairs.source.path",
    ),
    "prompt file pairs": (
        {"pairs": {"source": {"kind": "file", "path": "x"}}},
        "pairs.source.kind",
    ),
    "missing prompt file": (
        {"evaluation": {"prompt_sets": {"parti": {"source": {"kind": "file", "path": "p.txt"}}}}},
        "evaluation.prompt_sets.parti.source.path",
    ),
    "hub prompts without an id": (
        {"evaluation": {"prompt_sets": {"parti": {"source": {"kind": "hub"}}}}},
        "evaluation.prompt_sets.parti.source.id",
    ),
    "missing editing file": (
        {"evaluation": {"editing": {"source": {"kind": "file", "path": "edits.parquet"}}}},
        "evaluation.editing.source.path",
    ),
    "table of unknown methods": (
        {"evaluation": {"tables": {"table5": {"methods": ["dspo_ee", "dsp"]}}}},
        "evaluation.tables.table5.methods",
    ),
    "table of an unknown prompt set": (
        {"evaluation": {"tables": {"table6": {"prompt_sets": ["pickv3"]}}}},
        "evaluation.tables.table6.prompt_sets",
    ),
    "validation prompts of an unknown prompt set": (
        {"training": {"validation": {"from_prompt_set": {"name": "pickv3", "count": 2}}}},
        "training.validation.from_prompt_set.name",
    ),
    "no validation prompt": (
        {"training": {"validation": {"prompts": []}}},
        "training.validation: no validation prompt",
    ),
    "toy build over a user's folder": (
        {"base_model": {"path": "/data/my-sd15"}},
        "base_model.build",
    ),
    "toy build escaping results/": (
        {"base_model": {"path": "results/../models/base"}},
        "base_model.build",
    ),
    "missing local model": (
        {"base_model": {"path": "models/sd15/v1", "build": None}},
        "base_model.path",
    ),
    "missing reward checkpoint": (
        {
            "evaluation": {
                "rewards": {"oracle": {"kind": "laion_aesthetics", "checkpoint": "a.pth"}}
            }
        },
        "evaluation.rewards.oracle.checkpoint",
    ),
    "device with a command": ({"resources": {"device": "cpu; touch x"}}, "resources.device: "),
}


@pytest.mark.parametrize("fault", FIXED_FAULTS, ids=list(FIXED_FAULTS))
def test_fixed_fault_is_an_error_naming_the_key(fault: str, tmp_path: Path) -> None:
    override, key = FIXED_FAULTS[fault]
    with pytest.raises((ConfigError, WorkflowError)) as err:
        checked(merged(**override), tmp_path)
    assert key in str(err.value)


def test_allowed_configs_pass(tmp_path: Path) -> None:
    # A hub id, a local model with build null, and tables whose methods a preset dropped.
    (tmp_path / "my-model").mkdir()
    (tmp_path / "pairs").mkdir()
    # The plan reads a local pair source's schema: it must hold the Pick-a-Pic columns.
    columns = {"caption": ["c"], "jpg_0": [b""], "jpg_1": [b""], "label_0": [1.0], "label_1": [0.0]}
    pd.DataFrame(columns).to_parquet(tmp_path / "pairs" / "train-00000-of-00001.parquet")
    dropped = {"dspo_e": None, "dspo": None}
    for override in (
        {"base_model": {"path": "org/model", "build": None}},
        {"base_model": {"path": "my-model", "build": None}},
        {"methods": dropped},
        {"pairs": {"source": {"kind": "parquet", "path": "pairs"}}},
        {"pairs": {"source": {"kind": "parquet", "path": "pair*/train-*.parquet"}}},
    ):
        checked(merged(**override), tmp_path)
    assert config_problems(merged(methods=dropped), tmp_path) == []


def paths(tree: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path of the config (list items by index)."""
    found = [prefix] if prefix else []
    if isinstance(tree, dict):
        for key, value in tree.items():
            found += paths(value, (*prefix, key))
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            found += paths(value, (*prefix, i))
    return found


CONFIG_PATHS = paths(DEFAULT)
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 10**6),
    # No subnormals: a library built with fast-math may have set flush-to-zero in this process.
    st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=False),
    st.text(max_size=12),
    st.sampled_from(["org/model", "../x", "results/x", "toy", "cuda:0", "$(touch x)", "a;b"]),
    st.lists(st.integers(0, 3), max_size=3),
    st.dictionaries(st.sampled_from(["kind", "path", "beta", "x"]), st.integers(), max_size=2),
)
KEYS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_.$ ;'", min_size=1, max_size=10)


def parent(config: dict, path: tuple) -> Any:
    for key in path[:-1]:
        config = config[key]
    return config


def names_the_key(message: str, path: tuple, key: Any) -> bool:
    """The message names the mutated key (schema errors: instance path or unexpected key;
    config checks: a dotted key), or, when the mutation broke another entry (a renamed
    method that a table still names), the dotted key of the entry at fault."""
    keys = [k for k in path if isinstance(k, str)]
    instance = "".join(f"[{k!r}]" for k in path)
    dotted = ".".join(str(k) for k in path)
    if instance in message or dotted in message or (keys and repr(keys[-1]) in message):
        return True
    if key is not None and repr(key) in message:
        return True
    return bool(re.search(r"^\s*[a-z_]+(\.[\w$ ;'.-]+)+: ", message, flags=re.MULTILINE))


@settings(
    max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    path=st.sampled_from(CONFIG_PATHS),
    action=st.sampled_from(["value", "rename", "delete", "add"]),
    value=VALUES,
    key=KEYS,
)
def test_mutated_config_fails_only_naming_a_key(schema_json, path, action, value, key) -> None:
    config = copy.deepcopy(DEFAULT)
    holder = parent(config, path)
    last = path[-1]
    named = None
    if action == "value":
        holder[last] = value
    elif action == "rename" and isinstance(holder, dict):
        holder[f"{last}{key}"] = holder.pop(last)
        named = f"{last}{key}"
    elif action == "delete" and isinstance(holder, dict):
        del holder[last]
    elif action == "add" and isinstance(holder[last], dict):
        holder[last][key] = value
        named, path = key, (*path, key)
    else:
        holder[last] = value
    try:
        # Not a temporary folder per example: no check may write; relative paths stay missing.
        checked(config, REPO / "tests" / "faults", schema_json)
    except (WorkflowError, ConfigError) as err:
        message = str(err)
        assert names_the_key(message, path, named), message
        OUTCOMES[f"{action}: error naming the key"] += 1
    else:
        OUTCOMES[f"{action}: still valid"] += 1


def test_report_mutation_counts() -> None:
    """Runs after the property test (file order): the counts for the record."""
    print(f"\nconfig mutations tried: {sum(OUTCOMES.values())}; outcomes: {dict(OUTCOMES)}")


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"methods": {"dspo": {"params": {"lamb": 0.1}}}}, "methods.dspo.params.lamb"),
        ({"evaluation": {"tables": {"table1": {"methods": ["sfft"]}}}}, "table1.methods"),
        ({"pairs": {"source": {"kind": "parquet", "path": "gone"}}}, "pairs.source.path"),
    ],
    ids=["objective parameter", "table method", "pairs path"],
)
def test_snakemake_reports_config_faults_without_a_traceback(
    override: dict, named: str, tmp_path: Path
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(override))
    result = snakemake("-n", "all", "--configfile", str(config), cwd=tmp_path, check=False)
    assert result.returncode != 0 and named in result.stdout
    assert "Traceback" not in result.stdout and "dspo/" not in result.stdout


# Speed switches that are off when absent. Required, they would enter every method's config
# and so its content key, and rebuild every trained model of a run made before they existed.
OPTIONAL_TRAINING = {"channels_last", "compile"}


def test_shared_training_block_requires_every_training_key() -> None:
    """Methods fill what they do not override from `training`, so it must hold every key but
    the switches that are off when absent."""
    schema = yaml.safe_load(Path(SCHEMA).read_text())
    required = schema["properties"]["training"]["required"]
    keys = set(schema["$defs"]["training"]["properties"])
    assert sorted(required) == sorted(keys - OPTIONAL_TRAINING)
