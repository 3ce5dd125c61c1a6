"""Content keys: what an artefact was made from, as a short hash, never as a path.

Every cached or resumed artefact (a training checkpoint, a generated image, a cache shard) is
valid only for the exact inputs that made it. A path says nothing about that: a model folder
rebuilt in place keeps its path. So each artefact records the content keys of its inputs, and
is reused only when they match.

A local folder's key is the SHA-256 of each of its files (names and bytes), nothing else: not
its path, not the files' modification times, and not the marker files that tools leave beside
the content (:data:`NON_CONTENT`, such as Snakemake's ``.snakemake_timestamp`` in every
directory output). So a ``touch`` or a ``cp -r`` keeps the key, and a changed byte changes it.

Hashing gigabytes of weights at every job would cost more than some jobs, so the hashes are
kept in a record beside the size and modification time they were taken at, and a file is
hashed again only when its size or time differs from its record (the record is then
refreshed). Folders that ``dspo`` writes carry their record (:data:`RECORD`, written once
when they are saved, :func:`write_content_record`); for a folder or file made elsewhere (a
downloaded model) the record is kept in the user's cache folder
(``$XDG_CACHE_HOME/dspo/content``, default ``~/.cache/dspo/content``), so its first key costs
one read of its bytes. A path that is neither is a hub id: its key is the snapshot commit when
the local hub cache has one.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import dspo

RECORD = "dspo_content.json"
# Files and folders that say nothing about a folder's content, in every key left out wherever
# they appear: the workflow's marker (Snakemake writes it into each directory output after the
# job), the content record itself, operating systems' folder metadata, and the hub client's
# download metadata (``.cache/huggingface`` in a ``local_dir`` download).
NON_CONTENT = frozenset({RECORD, ".snakemake_timestamp", ".DS_Store", "Thumbs.db", ".cache"})
# Where records of folders and files that dspo did not write are kept.
SIDE_RECORDS = ("dspo", "content")
# The package's source folder, whose files make source keys.
PACKAGE = Path(dspo.__file__).parent
# A class named in a registry ("dspo.families.sd:SDFamily"), its module imported when first
# used. Only that form: a plain module name in a string is a command to run (``-m
# dspo.cli.commands`` in the launcher), not code this process runs.
_MODULE_NAME = re.compile(r"dspo(\.\w+)+:\w+")
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


def is_content(relative: Path) -> bool:
    """Whether a path inside a folder is part of its content (not a marker or a record)."""
    return not any(part in NON_CONTENT or part.startswith(f".{RECORD}.") for part in relative.parts)


def _files(folder: Path) -> list[str]:
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and is_content(p.relative_to(folder))
    )


def _read_record(path: Path) -> dict[str, Mapping[str, Any]]:
    """A record's entries by file name ({} when absent or unreadable); an entry of the
    first format (the SHA-256 alone) has no size or time, so its file is hashed again."""
    try:
        files = json.loads(path.read_text())["files"]
        return {
            name: entry if isinstance(entry, Mapping) else {"sha256": entry}
            for name, entry in files.items()
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _write_record(path: Path, entries: Mapping[str, Mapping[str, Any]]) -> None:
    """Write a record atomically (a name of its own per process, renamed into place)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"files": entries}, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _entries(
    base: Path, names: Iterable[str], known: Mapping[str, Mapping[str, Any]]
) -> tuple[dict[str, dict[str, Any]], bool]:
    """Each file's size, time and SHA-256, reusing a known hash where size and time still
    match; and whether any file had to be hashed."""
    entries, hashed = {}, False
    for name in names:
        stat = (base / name).stat()
        entry = {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        old = known.get(name, {})
        if "sha256" in old and all(old.get(k) == v for k, v in entry.items()):
            entry["sha256"] = old["sha256"]
        else:
            entry["sha256"] = file_sha256(base / name)
            hashed = True
        entries[name] = entry
    return entries, hashed


def _side_record(path: Path) -> Path:
    """Where the record of a folder or file that ``dspo`` did not write is kept."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    name = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    return root.joinpath(*SIDE_RECORDS, f"{name}.json")


def _hashes(base: Path, names: list[str], record: Path) -> dict[str, str]:
    """The SHA-256 of each named file under ``base``, through ``record``, which is refreshed
    when a file was hashed again or the files changed (best effort: a read-only place keeps
    its record as it is)."""
    known = _read_record(record)
    entries, hashed = _entries(base, names, known)
    if hashed or set(known) != set(entries):
        try:
            record.parent.mkdir(parents=True, exist_ok=True)
            _write_record(record, entries)
        except OSError:
            pass
    return {name: entry["sha256"] for name, entry in entries.items()}


def write_content_record(folder: Path) -> str:
    """Record every content file's SHA-256 in ``folder`` (the record written last,
    atomically); returns the folder's key."""
    folder = Path(folder)
    entries, _ = _entries(folder, _files(folder), {})
    _write_record(folder / RECORD, entries)
    return _digest(sorted((name, entry["sha256"]) for name, entry in entries.items()))


def _folder_key(folder: Path) -> str:
    own = folder / RECORD
    record = own if own.is_file() else _side_record(folder)
    return _digest(sorted(_hashes(folder, _files(folder), record).items()))


def _file_key(path: Path) -> str:
    sha = _hashes(path.parent, [path.name], _side_record(path))[path.name]
    return _digest([path.name, sha])


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
    """A short key that changes whenever the content of the model, cache or file at
    ``source`` changes, and only then.

    A local folder: the SHA-256 of its content files (markers left out); a local file: its
    name and SHA-256; hashes are reused from the record while a file's size and time match
    it. Anything else is taken for a hub id.
    """
    path = Path(source)
    if path.is_dir():
        return _folder_key(path)
    if path.is_file():
        return _file_key(path)
    return _hub_key(str(source))


def _module_file(module: str) -> Path | None:
    """The source file of a ``dspo`` module or package, None when there is none."""
    if module.split(".")[0] != "dspo":
        return None
    stem = PACKAGE.joinpath(*module.split(".")[1:])
    for path in (stem / "__init__.py", stem.with_suffix(".py")):
        if path.is_file():
            return path
    return None


def _imports(module: str, path: Path) -> set[str]:
    """The ``dspo`` modules one source file imports: at its top, inside functions, and by
    name in a registry (``"dspo.families.sd:SDFamily"``, imported when first used)."""
    names: set[str] = set()
    package = module.split(".")[: None if path.name == "__init__.py" else -1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package[: len(package) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            names |= {base} | {f"{base}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Constant) and _MODULE_NAME.fullmatch(str(node.value)):
            names.add(str(node.value).split(":")[0])
    return {name for name in names if _module_file(name) is not None}


def imported_modules(entry: str) -> list[str]:
    """``entry`` and every ``dspo`` module it imports, transitively, with their packages."""
    seen: set[str] = set()
    todo = [entry]
    while todo:
        module = todo.pop()
        path = _module_file(module)
        if module in seen or path is None:
            continue
        seen.add(module)
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        todo += sorted(_imports(module, path))
    return sorted(seen)


def source_files(entry: str | None = None) -> list[Path]:
    """Every ``dspo`` source file, or with ``entry`` those of the modules it runs
    (:func:`imported_modules`)."""
    if entry is None:
        return sorted(PACKAGE.rglob("*.py"))
    return sorted({path for m in imported_modules(entry) if (path := _module_file(m))})


def source_hashes(files: Iterable[Path]) -> dict[str, str]:
    """Each source file's SHA-256 (short), by its path from the package's parent
    (``dspo/objectives/losses.py``): what says which file changed."""
    return {
        str(path.relative_to(PACKAGE.parent)): hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        for path in sorted(files)
    }


def source_key(files: Iterable[Path] | None = None) -> str:
    """The package version and a hash of ``dspo`` source files (default: all of them, else
    e.g. :func:`source_files` of one entry point): the code that ran."""
    sha = hashlib.sha256(dspo.__version__.encode())
    for path in sorted(source_files() if files is None else files):
        sha.update(str(path.relative_to(PACKAGE)).encode())
        sha.update(path.read_bytes())
    return sha.hexdigest()[:16]


def combined_key(**parts: Any) -> str:
    """One key from named parts (configs, content keys): equal parts give equal keys."""
    return _digest(sorted(parts.items()))
