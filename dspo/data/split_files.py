"""The files of one split of a dataset: in a local folder or glob, or in a hub dataset repo.

Dataset copies name a split's files ``<split>-00000-of-00645[-hash].parquet`` (the hub's
own layout, ``data/train-00000-of-00645-<hash>.parquet``), ``<split>.parquet``, or put
them in a ``<split>/`` folder (the hub's parquet conversion, ``default/train/0000.parquet``).
:func:`split_files` selects them locally; :func:`hub_split_files` downloads only them from
the hub into its cache (or, offline, finds them there: a downloaded snapshot is read the same
way) and selects them in the snapshot.
"""

from __future__ import annotations

import glob
from pathlib import Path

# Data files of a pair source, and of a prompt set or editing set (the tables prompts.py reads).
PAIR_SUFFIXES = (".parquet",)
TABLE_SUFFIXES = (".parquet", ".csv", ".tsv", ".jsonl", ".json")
# A hub pair source's split: parquet files (the hub's own layout) or webdataset tars (the
# public copy sayakpaul/pickapic_v2_webdataset, 00000.tar ... 00644.tar at the repo root).
HUB_PAIR_SUFFIXES = (*PAIR_SUFFIXES, ".tar")
# Everything a hub data source may hold (what `dspo fetch` chooses among).
DATA_SUFFIXES = tuple(dict.fromkeys((*TABLE_SUFFIXES, *HUB_PAIR_SUFFIXES)))


def _matches_split(file: Path, split: str, folders: tuple[str, ...]) -> bool:
    # The "-" matters so that "validation" does not also pick up "validation_unique-...".
    # Only folders below the given one may name the split, not its ancestors.
    name = file.name
    return name.startswith(f"{split}-") or name == f"{split}{file.suffix}" or split in folders


def split_files(path: str, split: str | None, suffixes: tuple[str, ...]) -> list[Path]:
    """The files with one of ``suffixes`` of a file, folder (searched recursively) or glob,
    of one split (all of them when ``split`` is None), sorted by path.

    An explicitly named file is taken as the caller's choice of split. Raises
    FileNotFoundError naming the place, the patterns and what files with those suffixes the
    place holds.
    """
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        every = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in suffixes)
        folders = {f: f.relative_to(p).parts[:-1] for f in every}
        where = f"folder {p}"
    else:
        every = sorted(Path(f) for f in glob.glob(path, recursive=True))
        every = [f for f in every if f.is_file() and f.suffix in suffixes]
        folders = {f: () for f in every}
        where = f"glob {path!r}"
    files = [f for f in every if split is None or _matches_split(f, split, folders[f])]
    if not files:
        kinds = "/".join(suffixes)
        ext = suffixes[0] if len(suffixes) == 1 else ".*"
        wanted = f"of split {split!r} ({split}-*{ext}, {split}{ext} or in a {split}/ folder)"
        hint = "; without a split every file is read" if split and every else ""
        raise FileNotFoundError(
            f"no {kinds} file{f' {wanted}' if split else ''} in {where}; found {listing(every, p)}"
            + hint
        )
    return files


def listing(files: list[Path], root: Path) -> str:
    """A short description of ``files``: their count and first and last names."""
    if not files:
        return "none"
    root = root.parent if root.is_file() else root
    names = [str(f.relative_to(root)) if f.is_relative_to(root) else str(f) for f in files]
    shown = ", ".join(names[:3]) + (f", ..., {names[-1]}" if len(names) > 3 else "")
    return f"{len(names)} file{'s' if len(names) > 1 else ''} ({shown})"


def split_patterns(split: str, suffixes: tuple[str, ...]) -> list[str]:
    """The hub file patterns (``allow_patterns`` of huggingface_hub, fnmatch syntax) that
    match the files :func:`split_files` selects for ``split``, at any depth."""
    patterns = []
    for suffix in suffixes:
        for name in (f"{split}-*{suffix}", f"{split}{suffix}", f"{split}/*{suffix}"):
            patterns += [name, f"*/{name}"]
    return patterns


def repo_split_files(names: list[str], split: str, suffixes: tuple[str, ...]) -> list[str]:
    """The files of ``split`` among a hub repo's file ``names``, as :func:`hub_split_files`
    downloads and then reads them: those :func:`split_patterns` matches; for ``train``, when
    no file names a split, every file with ``suffixes``. Raises ValueError naming the data files
    when the split has none."""
    from fnmatch import fnmatch

    data = sorted(f for f in names if f.endswith(suffixes))
    patterns = split_patterns(split, suffixes)
    chosen = [f for f in data if any(fnmatch(f, pattern) for pattern in patterns)]
    if not chosen and split == "train":
        chosen = data
    if not chosen:
        shown = ", ".join(data[:8]) + (f" ... ({len(data)} in all)" if len(data) > 8 else "")
        raise ValueError(f"no data file of split {split!r}; the repo's data files: {shown or '-'}")
    return chosen


def hub_split_files(
    dataset_id: str, split: str, revision: str | None, suffixes: tuple[str, ...]
) -> list[Path]:
    """The local files of one split of a hub dataset, downloading only that split's files.

    ``huggingface_hub.snapshot_download`` with :func:`split_patterns` fetches the missing
    ones into the hub cache; offline (``HF_HUB_OFFLINE=1``, as on compute nodes) it returns
    the cached snapshot that a download on a login node left. A repo whose data files name no
    split holds only a train split (the hub's convention): for ``split == "train"`` its
    files with ``suffixes`` are then taken whole.
    """
    from huggingface_hub import snapshot_download

    def snapshot(patterns: list[str]) -> Path:
        return Path(
            snapshot_download(
                repo_id=dataset_id,
                repo_type="dataset",
                revision=revision,
                allow_patterns=patterns,
            )
        )

    where = f"hub dataset {dataset_id!r} (revision {revision or 'default'})"
    try:
        return split_files(str(snapshot(split_patterns(split, suffixes))), split, suffixes)
    except FileNotFoundError as exc:
        if split != "train":
            raise FileNotFoundError(f"{where}: {exc}") from None
    try:
        return split_files(str(snapshot([f"*{suffix}" for suffix in suffixes])), None, suffixes)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{where}: {exc}") from None
