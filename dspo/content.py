"""Content keys: what an artefact was made from, as a short hash, never as a path.

Every cached or resumed artefact (a training checkpoint, a generated image, a cache shard) is
valid only for the exact inputs that made it. A path says nothing about that: a model folder
rebuilt in place keeps its path. So each artefact records the content keys of its inputs, and
is reused only when they match.

Hashing gigabytes of weights at every job would cost more than some jobs, so folders that
``dspo`` writes carry a record of their files' SHA-256, computed once when written
(:func:`write_content_record`). For a folder made elsewhere (a downloaded model) the key is
cheaper and still changes when a file is rewritten: names, sizes and modification times. For a
hub id, it is the snapshot commit when the local hub cache has one.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import dspo

RECORD = "dspo_content.json"
_CHUNK = 1 << 22


def _digest(parts: Iterable[Any]) -> str:
    blob = json.dumps(list(parts), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def file_sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            sha.update(chunk)
    return sha.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != RECORD)


def write_content_record(folder: Path) -> str:
    """Record every file's SHA-256 in ``folder`` (written last, atomically); returns the key."""
    folder = Path(folder)
    files = {str(p.relative_to(folder)): file_sha256(p) for p in _files(folder)}
    tmp = folder / f".{RECORD}.tmp"
    tmp.write_text(json.dumps({"files": files}, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, folder / RECORD)
    return _digest(sorted(files.items()))


def _recorded_key(folder: Path) -> str | None:
    """The recorded key, if the record still lists exactly the files present with their sizes."""
    record = folder / RECORD
    if not record.is_file():
        return None
    try:
        files = json.loads(record.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        return None
    present = {str(p.relative_to(folder)) for p in _files(folder)}
    if present != set(files):
        return None
    return _digest(sorted(files.items()))


def _stat_key(folder: Path) -> str:
    rows = []
    for p in _files(folder):
        st = p.stat()
        rows.append((str(p.relative_to(folder)), st.st_size, st.st_mtime_ns))
    return _digest(rows)


def _hub_key(model_id: str) -> str:
    """The local hub cache's snapshot commit for an id, or the id itself when none is cached."""
    try:
        from huggingface_hub import scan_cache_dir

        for repo in scan_cache_dir().repos:
            if repo.repo_id == model_id and repo.revisions:
                newest = max(repo.revisions, key=lambda r: r.last_modified)
                return _digest(["hub", model_id, newest.commit_hash])
    except Exception:  # no cache folder yet, or an unreadable one: fall back to the id
        pass
    return _digest(["hub", model_id])


def content_key(source: str | os.PathLike[str]) -> str:
    """A short key that changes whenever the model, cache or file at ``source`` changes.

    A local folder: its content record when present and still matching the files (written by
    ``dspo``), else names, sizes and modification times of its files. A local file: its size,
    time and path-free name. Anything else is taken for a hub id.
    """
    path = Path(source)
    if path.is_dir():
        return _recorded_key(path) or _stat_key(path)
    if path.is_file():
        st = path.stat()
        return _digest([path.name, st.st_size, st.st_mtime_ns])
    return _hub_key(str(source))


def source_key() -> str:
    """The package version and a hash of every ``dspo`` source file: the code that ran."""
    package = Path(dspo.__file__).parent
    sha = hashlib.sha256(dspo.__version__.encode())
    for path in sorted(package.rglob("*.py")):
        sha.update(str(path.relative_to(package)).encode())
        sha.update(path.read_bytes())
    return sha.hexdigest()[:16]


def combined_key(**parts: Any) -> str:
    """One key from named parts (configs, content keys): equal parts give equal keys."""
    return _digest(sorted(parts.items()))
