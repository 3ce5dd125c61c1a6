"""Evaluation prompt sets: from the toy world, a local table, or a hub dataset."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from dspo.data.dedup import CAPTION_UNREADABLE, caption_text
from dspo.data.hpsv2_prompts import read_benchmark
from dspo.data.pairs import prompt_id_of
from dspo.data.split_files import TABLE_SUFFIXES, hub_split_files

COLUMNS = ["prompt_set", "prompt_id", "prompt"]


def _read_table(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix in {".csv", ".tsv"}:
        return pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",")
    if path.suffix in {".jsonl", ".json"}:
        return pd.read_json(path, lines=path.suffix == ".jsonl")
    if path.suffix == ".txt":
        return pd.DataFrame({"prompt": path.read_text().splitlines()})
    raise ValueError(f"prompt file {path}: unsupported format {path.suffix!r}")


def prompt_texts(cells: Iterable[Any], where: str) -> list[str]:
    """The prompts of a column of cells, read as training captions are (bytes as UTF-8).

    Missing and blank cells (a text file's empty or whitespace-only lines) are skipped with
    a warning that counts them; a cell that is not text is an error naming its row.
    """
    prompts, skipped = [], 0
    for row, cell in enumerate(cells):
        text, issue = caption_text(cell)
        if issue == CAPTION_UNREADABLE:
            raise ValueError(f"{where} row {row}: prompt {cell!r:.60} is not UTF-8 text")
        if issue is None:
            prompts.append(text)
        else:
            skipped += 1
    if skipped:
        warnings.warn(f"{where}: skipped {skipped} missing or blank prompts", stacklevel=2)
    return prompts


# Source kinds of prompt sets and the editing set: the toy world's, and those _read_source reads;
# prompt sets also take the HPSv2 benchmark's files (dspo.data.hpsv2_prompts).
_READ_KINDS = ("file", "hub")
SOURCE_KINDS = ("toy", *_READ_KINDS)
PROMPT_SOURCE_KINDS = (*SOURCE_KINDS, "hpsv2")


def _read_source(source: Mapping[str, Any], default_split: str) -> tuple[pd.DataFrame, str]:
    """A local table (kind file) or a hub dataset split (kind hub), and its name for errors."""
    if source["kind"] == "file":
        return _read_table(Path(source["path"])), source["path"]
    # Only the split's files are downloaded (or, offline, found in the hub cache).
    files = hub_split_files(
        source["id"], source.get("split", default_split), source.get("revision"), TABLE_SUFFIXES
    )
    return pd.concat([_read_table(file) for file in files], ignore_index=True), source["id"]


def load_prompt_set(
    name: str, spec: Mapping[str, Any], toy_prompts: str | None = None
) -> pd.DataFrame:
    """One prompt set as (prompt_set, prompt_id, prompt); ``spec`` is its config entry."""
    source = spec["source"]
    kind = source["kind"]
    if kind == "toy":
        if toy_prompts is None:
            raise ValueError(
                f"prompt set {name!r} comes from the toy world, but no toy prompts given"
            )
        table = pd.read_parquet(toy_prompts)
        table = table[table["prompt_set"] == source["split"]]
        if table.empty:
            raise ValueError(f"{toy_prompts}: no prompts of toy split {source['split']!r}")
        prompts = table["prompt"].tolist()
    elif kind == "hpsv2":
        prompts = list(dict.fromkeys(prompt_texts(read_benchmark(source), "HPSv2 benchmark")))
    elif kind in _READ_KINDS:
        column = source.get("column", "prompt")
        frame, where = _read_source(source, default_split="test")
        if column not in frame:
            raise ValueError(f"{where}: no column {column!r}; columns are {list(frame.columns)}")
        # Prompt sets such as Pick-a-Pic's repeat captions; each prompt is evaluated once.
        prompts = list(dict.fromkeys(prompt_texts(frame[column], where)))
    else:
        raise ValueError(f"prompt set {name!r}: unsupported source kind {kind!r}")
    if source.get("limit"):
        prompts = prompts[: source["limit"]]
    return pd.DataFrame(
        {"prompt_set": name, "prompt_id": [prompt_id_of(p) for p in prompts], "prompt": prompts},
        columns=COLUMNS,
    )


EDITING_COLUMNS = [*COLUMNS, "image"]


def load_editing_set(spec: Mapping[str, Any], toy_editing: str | None = None) -> pd.DataFrame:
    """The editing set as (prompt_set, prompt_id, prompt, image), images as PNG bytes.

    ``spec`` is the ``evaluation.editing`` entry. Its source is the toy world's editing set,
    a local parquet/CSV/JSONL table, or a hub dataset such as the InstructPix2Pix 1000-sample
    set; ``column`` names the prompt column and ``image_column`` the source-image column.
    The prompt id is the row's position, since one prompt may come with several images.
    """
    source = spec["source"]
    kind = source["kind"]
    if kind == "toy":
        if toy_editing is None:
            raise ValueError("the editing set comes from the toy world, but no toy set given")
        frame, where = pd.read_parquet(toy_editing), toy_editing
    elif kind in _READ_KINDS:
        frame, where = _read_source(source, default_split="train")
    else:
        raise ValueError(f"editing set: unsupported source kind {kind!r}")
    prompt_column = source.get("column", "prompt")
    image_column = source.get("image_column", "image")
    for column in (prompt_column, image_column):
        if column not in frame:
            raise ValueError(f"{where}: no column {column!r}; columns are {list(frame.columns)}")
    if source.get("limit"):
        frame = frame.head(source["limit"])
    images = [_png_bytes(value, f"{where} row {i}") for i, value in enumerate(frame[image_column])]
    return pd.DataFrame(
        {
            "prompt_set": "editing",
            "prompt_id": range(len(frame)),
            "prompt": frame[prompt_column].astype(str).tolist(),
            "image": images,
        },
        columns=EDITING_COLUMNS,
    )


def _png_bytes(value: Any, where: str) -> bytes:
    """An image cell (encoded bytes, a datasets {'bytes': ...} dict, or a PIL image) as PNG."""
    import io

    from PIL import Image, UnidentifiedImageError

    if isinstance(value, dict):
        value = value.get("bytes")
    try:
        image = value if isinstance(value, Image.Image) else Image.open(io.BytesIO(value))
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, "PNG")
    except (TypeError, UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{where}: not a readable image ({err})") from err
    return buffer.getvalue()
