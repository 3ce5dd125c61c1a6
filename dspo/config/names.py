"""What a config value names: the entries a preset kept, hub ids and local paths.

A path that does not exist locally is a hub id only when it has the hub's ``owner/name`` form
and ``owner`` is not a local folder; anything else is a local path (`dspo.config.check`).
"""

from __future__ import annotations

import glob
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# The hub's repository ids: owner/name, letters, digits, '-', '_', '.'.
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Older hub models have no owner (bert-base-uncased); accepted for reward models' parts only.
_LEGACYHUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def entries(mapping: Mapping[str, Any] | None) -> dict[str, Any]:
    """The entries of a config mapping that a preset has not dropped by setting them to null."""
    return {name: value for name, value in (mapping or {}).items() if value is not None}


def is_hub_id(value: str, root: Path, legacy: bool = False) -> bool:
    """True when ``value`` names no local file or folder and has the hub's ``owner/name`` form
    (or, with ``legacy``, an owner-less name such as ``bert-base-uncased``)."""
    if (root / value).exists():
        return False
    if HUB_ID.match(value):
        # models/sd51 next to a local models/ folder is a mistyped local path.
        return not (root / value.split("/")[0]).is_dir()
    return bool(legacy and _LEGACYHUB_ID.match(value))


def local_path_exists(path: str, root: Path) -> bool:
    """A file, folder or glob (relative to ``root``) that names at least one existing path."""
    if (root / path).exists():
        return True
    return glob.has_magic(path) and bool(glob.glob(str(root / path), recursive=True))
