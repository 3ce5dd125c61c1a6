"""Webdataset tar shards of preference pairs: member layouts, and reading one tar file.

A webdataset tar holds samples: runs of consecutive members that share a key, the member
name up to the first dot of its file name; the rest of the name is the member's suffix
(``0.jpg_0.jpg`` is sample ``0``, suffix ``jpg_0.jpg``). A *member mapping* says which
suffix holds each Pick-a-Pic column:

- ``jpg_0``, ``jpg_1``: the two images (JPEG, PNG or any format PIL reads), required;
- ``caption``, ``label_0``, ``label_1``: a text member each (UTF-8; labels as numbers in
  text, e.g. ``1``, ``0``, ``0.5``), or
- ``json``: a JSON object holding the columns not mapped to their own member (and optionally
  ``has_label``, ``are_different``, ``ranking_id``).

Known layouts (:data:`LAYOUTS`) are recognised from the first sample of the first tar; a
source's ``members`` key gives any other mapping. Members a mapping does not name are skipped.
"""

from __future__ import annotations

import contextlib
import json
import math
import tarfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

# Columns a mapping may name; the images are required, the text columns may come from `json`.
MEMBER_FIELDS = ("caption", "jpg_0", "jpg_1", "label_0", "label_1", "json")
_TEXT_FIELDS = ("caption", "label_0", "label_1")
# The column of a sample's key in a tar's rows (webdataset's own name for it).
KEY = "__key__"
_JSON_COLUMNS = ("caption", "label_0", "label_1", "has_label", "are_different", "ranking_id")
LAYOUTS: dict[str, dict[str, str]] = {
    # The public full copy sayakpaul/pickapic_v2_webdataset (tars 00000.tar ... 00644.tar), as
    # diffusers' diffusion_orpo/train_diffusion_orpo_sdxl_lora_wds.py renames its members.
    "pickapic_v2_webdataset": {
        "caption": "original_prompt.txt",
        "jpg_0": "jpg_0.jpg",
        "jpg_1": "jpg_1.jpg",
        "label_0": "label_0.txt",
        "label_1": "label_1.txt",
    },
    # One JSON member with the caption and labels beside the two images.
    "json": {"jpg_0": "jpg_0", "jpg_1": "jpg_1", "json": "json"},
}


def mapping_problems(members: Any) -> list[str]:
    """Why ``members`` is not a usable member mapping (empty when it is)."""
    if not isinstance(members, Mapping):
        return [f"must map columns to member suffixes, got {members!r}"]
    problems = [
        f"unknown column {field!r}; known: {', '.join(MEMBER_FIELDS)}"
        for field in members
        if field not in MEMBER_FIELDS
    ]
    problems += [
        f"{field!r} must be a member suffix such as 'jpg_0.jpg', got {suffix!r}"
        for field, suffix in members.items()
        if not isinstance(suffix, str) or not suffix or "/" in suffix
    ]
    suffixes = list(members.values())
    problems += [
        f"member {suffix!r} is named for more than one column"
        for suffix in sorted({s for s in suffixes if suffixes.count(s) > 1}, key=str)
    ]
    problems += [f"needs {field!r}" for field in ("jpg_0", "jpg_1") if field not in members]
    if "json" not in members:
        problems += [
            f"needs {field!r} (or a 'json' member holding it)"
            for field in _TEXT_FIELDS
            if field not in members
        ]
    return problems


def first_sample(file: Path) -> tuple[str, list[str]]:
    """The key of the first sample of a tar file and its members' suffixes, in tar order."""
    key, suffixes = None, []
    with _readable(file), tarfile.open(file, "r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            sample, suffix = _split_name(member.name)
            if key is not None and sample != key:
                break
            key = sample
            suffixes.append(suffix)
    if key is None:
        raise ValueError(f"{file}: holds no file member")
    return key, suffixes


def recognise(suffixes: list[str]) -> dict[str, str] | None:
    """The first known layout whose members are all among ``suffixes``, or None."""
    for layout in LAYOUTS.values():
        if set(layout.values()) <= set(suffixes):
            return dict(layout)
    return None


def describe_layouts() -> str:
    """The known layouts, for error messages."""
    return "; ".join(
        f"{name}: {', '.join(f'KEY.{suffix}' for suffix in layout.values())}"
        for name, layout in LAYOUTS.items()
    )


def tar_frame(file: Path, members: Mapping[str, str]) -> pd.DataFrame:
    """The pair rows of one tar file, read with the member mapping ``members``; the column
    ``__key__`` (webdataset's name) holds each sample's key, which names its members."""
    with _readable(file):
        rows = list(_tar_rows(file, members))
    if not rows:
        return pd.DataFrame(columns=[KEY, "caption", "jpg_0", "jpg_1", "label_0", "label_1"])
    return pd.DataFrame.from_records(rows)


@contextlib.contextmanager
def _readable(file: Path) -> Iterator[None]:
    # tarfile's errors do not name the file.
    try:
        yield
    except tarfile.TarError as exc:
        raise ValueError(f"{file}: not a readable tar file ({exc})") from exc


def _split_name(name: str) -> tuple[str, str]:
    # webdataset's convention: the key is the path up to the first dot of the file name.
    folder, _, base = name.rpartition("/")
    stem, _, suffix = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), suffix


def _tar_rows(file: Path, members: Mapping[str, str]) -> Iterator[dict[str, Any]]:
    """The rows of one tar file, read in one sequential pass (stream mode, no index)."""
    wanted = {suffix: field for field, suffix in members.items()}
    key, found = None, {}
    with tarfile.open(file, "r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            sample, suffix = _split_name(member.name)
            if sample != key:
                if key is not None:
                    yield _row(file, key, found, members)
                key, found = sample, {}
            if suffix in wanted:
                found[wanted[suffix]] = tar.extractfile(member).read()
    if key is not None:
        yield _row(file, key, found, members)


def _row(file: Path, key: str, found: dict[str, bytes], members: Mapping[str, str]) -> dict:
    missing = [f"{key}.{members[field]}" for field in members if field not in found]
    if missing:
        raise ValueError(
            f"{file}: sample {key!r} has no {', '.join(missing)} member "
            f"(member mapping {dict(members)})"
        )
    row: dict[str, Any] = {KEY: key, "jpg_0": found["jpg_0"], "jpg_1": found["jpg_1"]}
    if "json" in found:
        row |= _json_columns(file, f"{key}.{members['json']}", found["json"], members)
    if "caption" in found:
        row["caption"] = _text(found["caption"])
    for label in ("label_0", "label_1"):
        if label in found:
            row[label] = _number(found[label])
    return row


def _json_columns(file: Path, name: str, data: bytes, members: Mapping[str, str]) -> dict:
    try:
        meta = json.loads(data)
    except ValueError as exc:
        raise ValueError(f"{file}: {name} is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise ValueError(f"{file}: {name} must hold an object")
    for field in _TEXT_FIELDS:
        if field not in members and field not in meta:
            raise ValueError(f"{file}: {name} lacks the key {field!r}")
    return {column: meta[column] for column in _JSON_COLUMNS if column in meta}


def _text(data: bytes) -> str | bytes:
    # Undecodable bytes stay bytes: the normaliser counts such a caption as unreadable.
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data


def _number(data: bytes) -> float:
    # A label that is not a number is NaN, which the normaliser counts as an invalid label.
    try:
        return float(data.decode("utf-8").strip())
    except (UnicodeDecodeError, ValueError):
        return math.nan
