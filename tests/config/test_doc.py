"""config/README.md is generated from the schema: every key, its type, default, description."""

from __future__ import annotations

from dspo.config.doc import keys, render, undocumented

SCHEMA = {
    "$defs": {"src": {"type": "object", "properties": {"kind": {"enum": ["toy", "hub"]}}}},
    "properties": {
        "training": {
            "type": "object",
            "description": "How to train.",
            "properties": {
                "lr": {"type": "number", "exclusiveMinimum": 0, "description": "learning rate"},
                "source": {"$ref": "#/$defs/src", "description": "data | pairs"},
            },
        },
        "methods": {
            "type": "object",
            "description": "One entry per method.",
            "additionalProperties": {
                "type": ["object", "null"],
                "properties": {"objective": {"enum": ["dspo", "sft"], "description": "loss"}},
            },
        },
    },
}


def test_every_key_is_listed_with_type_default_and_description() -> None:
    paths = [p for p, _ in keys(SCHEMA, SCHEMA)]
    assert paths == [
        "training",
        "training.lr",
        "training.source",
        "training.source.kind",
        "methods",
        "methods.*",
        "methods.*.objective",
    ]
    text = render(SCHEMA, {"training": {"lr": 0.001, "source": {"kind": "toy"}}})
    assert "| `training.lr` | number (> 0) | `0.001` | learning rate |" in text
    assert '| `training.source.kind` | `toy` \\| `hub` | `"toy"` |  |' in text
    assert "data \\| pairs" in text  # a | in a description does not split the cell
    assert "| `methods.*.objective` | `dspo` \\| `sft` |  | loss |" in text
    assert undocumented(SCHEMA) == ["training.source.kind", "methods.*"]


def test_config_readme_is_current_and_every_key_is_described() -> None:
    from pathlib import Path

    import yaml

    repo = Path(__file__).resolve().parents[2]
    schema = yaml.safe_load((repo / "config" / "schema.yaml").read_text())
    config = yaml.safe_load((repo / "config" / "config.yaml").read_text())
    assert undocumented(schema) == [], "describe these keys in config/schema.yaml"
    assert (repo / "config" / "README.md").read_text() == render(schema, config), (
        "config/README.md is stale: run `make config-doc`"
    )
