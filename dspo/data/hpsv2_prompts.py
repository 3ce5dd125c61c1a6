"""The HPSv2 benchmark prompts, read in the layout of the hub dataset ``zhwang/HPDv2``.

The benchmark is four JSON files, each a JSON list of prompt strings (800 each), in the
dataset's ``benchmark/`` folder: ``anime.json``, ``concept-art.json``, ``paintings.json`` and
``photo.json`` (what ``hpsv2.utils.download_benchmark_prompts`` fetches). A prompt-set source
``{kind: hpsv2, id: zhwang/HPDv2}`` reads them from the hub (through the local hub cache, so
``HF_HUB_OFFLINE=1`` works once `dspo fetch` has run); ``{kind: hpsv2, path: DIR}`` reads a
local folder with the same layout (``DIR/benchmark/anime.json``, ...). The prompts come in the
order of ``STYLES``, each file's in its own order.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

STYLES = ("anime", "concept-art", "paintings", "photo")
FOLDER = "benchmark"


def benchmark_files() -> list[str]:
    """The benchmark's files, as paths inside the dataset repository."""
    return [f"{FOLDER}/{style}.json" for style in STYLES]


def _local_file(source: Mapping[str, Any], name: str) -> Path:
    if source.get("path"):
        return Path(source["path"]) / name
    from huggingface_hub import hf_hub_download

    return Path(
        hf_hub_download(source["id"], name, repo_type="dataset", revision=source.get("revision"))
    )


def read_benchmark(source: Mapping[str, Any]) -> list[str]:
    """Every benchmark prompt of a ``kind: hpsv2`` source (``path`` or hub ``id``)."""
    prompts: list[str] = []
    for name in benchmark_files():
        file = _local_file(source, name)
        if not file.is_file():
            raise FileNotFoundError(f"HPSv2 benchmark file {file} does not exist")
        values = json.loads(file.read_text())
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ValueError(f"{file}: expected a JSON list of prompt strings")
        prompts += values
    return prompts
