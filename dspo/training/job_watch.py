"""Whether the job that started this trainer is still there.

The workflow runs training as ``exec dspo train ...``: the trainer is the job's own process, a
child of Snakemake (or of the batch system's job step). When that parent is killed outright
(``kill -9``, the OOM killer, a crashed login session), the trainer is not told: it lives on,
re-parented to pid 1 (or to a subreaper), and would write its model after a rerun had
started, over the rerun's. So the trainer notes its parent when it starts and, at each step
boundary, checks that its parent is still that process (the kernel changes a process's
parent the moment the parent dies).

Under a launcher (``python -m dspo.training.launch``, which the train rule uses; ``accelerate
launch``, ``torchrun``) the parent is the launcher, which
starts one trainer process per GPU, and the job is the launcher's parent: both links are
checked. The launcher's parent is read from ``/proc`` (Linux); elsewhere only the first link
is. A trainer started by pid 1 itself (a container's entry point) has no job to watch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# Programs that start the trainer processes on the job's behalf: the script or module name
# in their command line (``python -m dspo.training.launch``, ``accelerate launch``, ``torchrun``,
# ``python -m torch.distributed.run``).
LAUNCHERS = frozenset(
    {
        "dspo.training.launch",
        "accelerate",
        "torchrun",
        "torch.distributed.run",
        "torch.distributed.launch",
    }
)


def parent_of(pid: int) -> int | None:
    """The parent pid of ``pid``, or None when it cannot be read (no such process, no /proc)."""
    if pid == os.getpid():
        return os.getppid()
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the command name, which is in parentheses and may hold spaces: state, ppid.
    return int(stat.rsplit(")", 1)[1].split()[1])


def command_line(pid: int) -> list[str]:
    """The arguments ``pid`` was started with (Linux), or [] when unknown."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]


def is_launcher(argv: list[str]) -> bool:
    """Whether a command line is one of the :data:`LAUNCHERS` (by its first three words)."""
    return any(Path(arg).name in LAUNCHERS for arg in argv[:3])


@dataclass(frozen=True)
class JobWatch:
    """The chain of parents from this process up to its job, as found at start.

    ``links[0]`` is this process's parent; ``links[1]``, when present, the launcher's parent.
    """

    links: tuple[int, ...]

    @classmethod
    def start(cls) -> JobWatch:
        """Note the parent (and, under a launcher, the launcher's parent) of this process."""
        parent = os.getppid()
        links = [parent]
        if is_launcher(command_line(parent)):
            job = parent_of(parent)
            if job is not None:
                links.append(job)
        # Pid 1 (or none) is no job: a process started by init is not watched past it.
        watched = []
        for pid in links:
            if pid <= 1:
                break
            watched.append(pid)
        return cls(tuple(watched))

    @property
    def job(self) -> int | None:
        """The pid of the job this process belongs to, None when it is not watched."""
        return self.links[-1] if self.links else None

    def gone(self) -> str:
        """'' while every link holds, else what happened, to say why training stops."""
        child = os.getpid()
        for pid in self.links:
            now = parent_of(child)
            if now is not None and now != pid:
                what = "this trainer's parent" if child == os.getpid() else "its launcher's parent"
                return (
                    f"the job that started this trainer (pid {self.job}) is gone ({what} "
                    f"{pid} was replaced by pid {now})"
                )
            child = pid
        return ""
