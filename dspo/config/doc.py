"""``config/README.md`` written from the schema and the default config.

Every key of the configuration is described once, in ``config/schema.yaml``, where the
validator reads it too; the README is generated from it (``make config-doc``) with the
default value of each key from ``config/config.yaml``, and a test fails when the README differs
from what this module writes, or when a key has no description.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

INTRO = """# Configuration

`config/config.yaml` is the default preset (the toy world); the presets in `config/presets/`
deep-merge over it (`snakemake all --configfile config/presets/sd15.yaml`). Every key is
checked against `config/schema.yaml` before anything runs: an unknown key or a wrong type is
an error naming the key. This page is generated from the schema's descriptions and the
default preset's values by `make config-doc`; do not edit it by hand.

`*` in a key stands for a name you choose (a method, prompt set, reward or table).
"""


def _resolve(node: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = node.get("$ref")
    if not ref:
        return node
    target: Any = root
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    return {**target, **{k: v for k, v in node.items() if k != "$ref"}}


def _type_text(node: Mapping[str, Any]) -> str:
    if "enum" in node:
        return " | ".join("null" if v is None else f"`{v}`" for v in node["enum"])
    kind = node.get("type", "")
    kinds = kind if isinstance(kind, list) else [kind]
    text = " or ".join(k for k in kinds if k)
    bounds = []
    for key, sign in (
        ("minimum", ">="),
        ("exclusiveMinimum", ">"),
        ("maximum", "<="),
        ("exclusiveMaximum", "<"),
    ):
        if key in node:
            bounds.append(f"{sign} {node[key]}")
    if "pattern" in node:
        bounds.append(f"matches `{node['pattern']}`")
    return f"{text} ({', '.join(bounds)})" if bounds else text


def keys(
    node: Mapping[str, Any], root: Mapping[str, Any], prefix: str = ""
) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every key of the schema below ``node`` as (dotted path, its schema), parents first."""
    node = _resolve(node, root)
    for name, child in node.get("properties", {}).items():
        path = f"{prefix}{name}"
        child = _resolve(child, root)
        yield path, child
        yield from keys(child, root, f"{path}.")
    # A key of several shapes (oneOf: the pair source, or a generated one): each shape's keys,
    # a key the shapes share once.
    seen: set[str] = set()
    for shape in node.get("oneOf", []):
        for path, child in keys(shape, root, prefix):
            if path not in seen:
                seen.add(path)
                yield path, child
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        path = f"{prefix}*"
        child = _resolve(extra, root)
        yield path, child
        yield from keys(child, root, f"{path}.")


def _default(config: Any, path: str) -> str:
    value: Any = config
    for part in path.split("."):
        if part == "*" or not isinstance(value, Mapping) or part not in value:
            return ""
        value = value[part]
    if isinstance(value, Mapping):
        return ""
    text = json.dumps(value)
    return f"`{text}`" if len(text) <= 40 else "(see config.yaml)"


def undocumented(schema: Mapping[str, Any]) -> list[str]:
    """The keys whose schema has no description."""
    return [path for path, node in keys(schema, schema) if not node.get("description")]


def render(schema: Mapping[str, Any], config: Mapping[str, Any]) -> str:
    lines = [INTRO]
    for section, node in _resolve(schema, schema)["properties"].items():
        node = _resolve(node, schema)
        lines += [f"## `{section}`", "", node.get("description", ""), ""]
        rows = [(section, node), *keys(node, schema, f"{section}.")]
        lines += ["| key | type | default | description |", "|---|---|---|---|"]
        for path, child in rows:
            description = " ".join(str(child.get("description", "")).split())
            cells = [f"`{path}`", _type_text(child), _default(config, path), description]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def write(repo: Path) -> bool:
    """Write ``config/README.md`` of ``repo``; True if it changed."""
    schema = yaml.safe_load((repo / "config" / "schema.yaml").read_text())
    config = yaml.safe_load((repo / "config" / "config.yaml").read_text())
    out = repo / "config" / "README.md"
    text = render(schema, config)
    changed = not out.exists() or out.read_text() != text
    if changed:
        out.write_text(text)
    return changed


if __name__ == "__main__":
    write(Path.cwd())
