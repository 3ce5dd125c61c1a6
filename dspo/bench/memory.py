"""``dspo bench memory``: the peak resident memory of every job of a workflow run.

Runs a command (typically ``snakemake ...``) and, while it runs, reads the kernel's
high-water mark of resident memory (``VmHWM`` in ``/proc/PID/status``) of every ``dspo``
process below it, every ``--interval`` seconds. The mark only grows, so the last reading
of a process is its peak up to that moment (growth in its last interval is missed). Each job
is named by its sub-command and the arguments that tell jobs apart (part, model, name,
output). Writes one CSV row per job: job, sub-command, peak MiB, seconds alive.

    dspo bench memory --out results/bench/memory.csv -- snakemake --cores 2 all ...
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

# Arguments that tell jobs of one sub-command apart.
_KEYS = ("--part", "--name", "--model", "--out")


@dataclass
class Job:
    name: str
    command: str
    peak_mib: float = 0.0
    first_seen: float = 0.0
    last_seen: float = 0.0


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        tree.setdefault(int(fields[1]), []).append(int(entry))
    return tree


def _descendants(root: int) -> list[int]:
    tree, found, todo = _children(), [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(tree.get(pid, []))
    return found


def job_name(argv: list[str]) -> tuple[str, str] | None:
    """(job, sub-command) of a ``dspo`` process's argv, or None for other processes."""
    for i, word in enumerate(argv):
        if os.path.basename(word) == "dspo" or (
            word == "dspo.cli.commands" and argv[i - 1] == "-m"
        ):
            rest = argv[i + 1 :]
            if not rest or rest[0].startswith("-") or rest[:2] == ["bench", "memory"]:
                return None  # not a job (or a watcher, such as this one)
            parts = [rest[0]]
            for key in _KEYS:
                if key in rest and rest.index(key) + 1 < len(rest):
                    parts.append(f"{key[2:]}={rest[rest.index(key) + 1]}")
            return " ".join(parts), rest[0]
    return None


def _hwm_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _argv(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _start_time(pid: int) -> int | None:
    """When the process started (clock ticks since boot): with the pid, names one process
    even when the kernel reuses the pid for a later one."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def watch(
    command: list[str] | None,
    interval: float,
    *,
    pid: int | None = None,
    out: Path | None = None,
    every: float = 10.0,
) -> tuple[int, dict[str, Job]]:
    """Run ``command`` (or watch the running process ``pid``) and record each dspo job's peak
    resident memory; with ``out``, rewrite the CSV every ``every`` seconds, so a run that is
    stopped early still leaves its table."""
    jobs: dict[str, Job] = {}
    # By (pid, start time): a long run outlives many pids, and a reused one is another job.
    # Only jobs are kept: a process forked to run a job shows its parent's argv (a shell,
    # Snakemake) until it execs the job under the same pid and start time, and a loaded
    # machine widens that window, so a process that is no job yet is read again each time.
    names: dict[tuple[int, int | None], tuple[str, str]] = {}
    process = subprocess.Popen(command) if command else None
    root = process.pid if process else pid
    written = time.monotonic()
    while True:
        done = process.poll() is not None if process else not _alive(root)
        now = time.monotonic()
        if out is not None and now - written > every:
            write_csv(jobs, out)
            written = now
        for pid in _descendants(root):
            process_key = (pid, _start_time(pid))
            named = names.get(process_key) or job_name(_argv(pid))
            if named is not None:
                names[process_key] = named
            hwm = _hwm_mib(pid) if named else None
            if named is None or hwm is None:
                continue
            job = jobs.setdefault(named[0], Job(named[0], named[1], first_seen=now))
            job.peak_mib = max(job.peak_mib, hwm)
            job.last_seen = now
        if done:
            return (process.returncode if process else 0), jobs
        time.sleep(interval)


def write_csv(jobs: dict[str, Job], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["job", "command", "peak_mib", "seconds"])
        for job in sorted(jobs.values(), key=lambda j: (j.command, j.name)):
            seconds = round(job.last_seen - job.first_seen, 1)
            writer.writerow([job.name, job.command, round(job.peak_mib, 1), seconds])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dspo bench memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="CSV to write")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between readings")
    parser.add_argument("--pid", type=int, help="watch this running process instead")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command and args.pid is None:
        parser.error("give the command to watch after --, or --pid")
    code, jobs = watch(command or None, args.interval, pid=args.pid, out=args.out)
    write_csv(jobs, args.out)
    print(f"{len(jobs)} jobs; peak MiB by job written to {args.out}", flush=True)
    return code
