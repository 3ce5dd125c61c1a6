"""One trainer per run folder, and a model written only by the run that still owns its folder.

A trainer holds an exclusive lock (``fcntl.flock``) on ``trainer.lock`` in its run folder for
the whole run. The kernel releases it when the process ends, however it ends (``kill -9``
included), so a lock is never stale. The file records the holder (pid, host, start time, the
pid of its job): a second trainer on the same folder stops at once with an error naming the
folder and the holder. The file itself is never removed, so that every trainer locks the same
file.

The model is written to a hidden folder beside its destination and put in place whole
(:func:`write_model`) only if, at that moment, this trainer still holds its run folder's lock,
its job is still there (:mod:`dspo.training.job_watch`) and the destination does not hold a model of
a run that started later. So a trainer left running after its job was killed never
overwrites the model of the rerun that replaced it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from dspo.core.files import replace_folder, space_for
from dspo.training.guards import Preempted
from dspo.training.job_watch import JobWatch

LOCK = "trainer.lock"
# The key of the model record (``dspo_config.json``) that says which run wrote the model.
RUN_KEY = "run"


class RunConflict(ValueError):
    """Another trainer holds this run folder, took it over, or wrote a newer model."""


def _holder(path: Path) -> str:
    """Who holds the lock at ``path``, in words, from its record."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return "another trainer (its record is unreadable)"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.get("started", 0)))
    job = f", job pid {record['job']}" if record.get("job") else ""
    return f"pid {record.get('pid')} on {record.get('host')} (started {started}{job})"


class RunLock:
    """The exclusive hold of a run folder by this process (see the module's docstring)."""

    def __init__(self, run_dir: Path, watch: JobWatch) -> None:
        self.path = Path(run_dir) / LOCK
        self.watch = watch
        self.record: dict[str, Any] = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.time(),
            "job": watch.job,
        }
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunConflict(
                f"{self.path.parent} is in use by another trainer: {_holder(self.path)}. "
                "One trainer per run folder: wait until it ends (it stops by itself at its "
                "next step if its job is gone) or stop it, then run again"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(self.record) + "\n").encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock; the file stays for the next trainer
            self._fd = None

    @property
    def started(self) -> float:
        return float(self.record["started"])

    def lost(self) -> str:
        """'' while this process holds the lock of the file at its path, else why not."""
        if self._fd is None:
            return f"{self.path} is not held"
        try:
            same = os.stat(self.path).st_ino == os.fstat(self._fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            return f"{self.path} was removed or replaced while this trainer ran"
        return ""


def newer_model(out_dir: Path, record_name: str, started: float) -> str:
    """'' unless ``out_dir`` holds a model whose record says its run started after ``started``."""
    try:
        record = json.loads((out_dir / record_name).read_text())
        other = float(record[RUN_KEY]["started"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""  # no model there, or one written before runs were recorded
    if other <= started:
        return ""
    return f"{out_dir} holds the model of a run that started later (pid {record[RUN_KEY]['pid']})"


def check_owner(lock: RunLock, out_dir: Path, record_name: str) -> None:
    """Raise unless this run may write ``out_dir`` now: :class:`Preempted` when its job is
    gone, :class:`RunConflict` when its lock or the destination belong to another run."""
    gone = lock.watch.gone()
    if gone:
        raise Preempted(f"{gone}: no model is written to {out_dir}")
    why = lock.lost() or newer_model(out_dir, record_name, lock.started)
    if why:
        raise RunConflict(f"{why}: the model of this run is not written to {out_dir}")


def write_model(
    out_dir: Path, lock: RunLock, record_name: str, write: Callable[[Path], None]
) -> None:
    """Have ``write`` fill a folder beside ``out_dir`` and put it at ``out_dir`` whole, only if
    this run still owns it (:func:`check_owner`, before and after writing).

    When it does not, or the disk fills (:class:`dspo.core.files.DiskFull`), ``out_dir`` is left
    as it was and the partial folder is removed.
    """
    check_owner(lock, out_dir, record_name)
    part = out_dir.with_name(f".{out_dir.name}.part")
    shutil.rmtree(part, ignore_errors=True)
    try:
        with space_for(out_dir):
            write(part)
        check_owner(lock, out_dir, record_name)
        replace_folder(part, out_dir)
    finally:
        shutil.rmtree(part, ignore_errors=True)


def run_record(lock: RunLock) -> dict[str, Any]:
    """What the model record keeps of the run that wrote it (under :data:`RUN_KEY`)."""
    return {RUN_KEY: {k: lock.record[k] for k in ("pid", "started")}}


def is_first_process() -> bool:
    """Whether this is the run's first process: rank 0 of a launch (the ranks' variables that
    accelerate reads), or the only process. Known before the processes join."""
    for name in ("RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK", "PMI_RANK"):
        if name in os.environ:
            return int(os.environ[name]) == 0
    return True


@contextlib.contextmanager
def held(run_dir: Path, watch: JobWatch) -> Iterator[RunLock | None]:
    """The run folder's lock on the first process (:func:`is_first_process`); None on the
    others. Taken before any work, so that a second trainer stops at once."""
    if not is_first_process():
        yield None
        return
    with RunLock(run_dir, watch) as lock:
        yield lock
