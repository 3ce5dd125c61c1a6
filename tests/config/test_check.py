"""dspo.config.check.validate_schema: Snakemake's schema validation, its errors as ConfigErrors
whose message starts with the dotted key at fault (tests/faults/test_workflow_config.py tries
random mutations of the whole config)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from dspo.config.check import ConfigError, validate_schema

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "config" / "schema.yaml"
DEFAULT = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def error_of(config: dict) -> str:
    with pytest.raises(ConfigError) as err:
        validate_schema(config, SCHEMA)
    return str(err.value)


def test_a_wrong_type_names_its_key() -> None:
    config = copy.deepcopy(DEFAULT)
    config["training"]["lr"] = "fast"
    assert error_of(config) == "training.lr: 'fast' is not of type 'number'"


def test_a_oneof_failure_names_the_missing_key_of_the_closest_branch() -> None:
    # pairs.source is one of two shapes (a pair source, or a generated one); without its kind
    # neither matches, and the message says what is missing, and where.
    config = copy.deepcopy(DEFAULT)
    config["pairs"]["source"] = {}
    assert error_of(config) == "pairs.source: 'kind' is a required property"


def test_a_valid_config_gets_the_schemas_defaults() -> None:
    config = copy.deepcopy(DEFAULT)
    del config["pairs"]["drop_ties"]
    validate_schema(config, SCHEMA)
    assert config["pairs"]["drop_ties"] is True


def test_a_oneof_failure_inside_the_branch_its_kind_chose_names_that_key() -> None:
    # A generated source (its kind matches one branch only) whose prompt source is wrong:
    # the error is the generated branch's, not the other branch's unexpected keys.
    config = copy.deepcopy(DEFAULT)
    config["pairs"]["source"] = {
        "kind": "generated",
        "prompts": {"kind": "toy", "split": None},
        "label": {"reward": "alignment"},
    }
    assert error_of(config) == "pairs.source.prompts.split: None is not of type 'string'"
