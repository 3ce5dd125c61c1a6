"""`dspo bench memory`: every dspo job of a watched command, named, with its peak memory."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from dspo.bench.memory import job_name, main


def test_jobs_are_named_by_sub_command_and_what_tells_them_apart() -> None:
    argv = ["/v/bin/python", "/v/bin/dspo", "cache-part", "--part", "3", "--out", "x/3"]
    assert job_name(argv) == ("cache-part part=3 out=x/3", "cache-part")
    launched = ["python", "-m", "dspo.cli.commands", "train", "--out", "results/models/dspo"]
    assert job_name(launched) == ("train out=results/models/dspo", "train")
    assert job_name(["/usr/bin/bash", "-c", "snakemake"]) is None
    assert job_name(["/v/bin/dspo", "--help"]) is None
    assert job_name(["/v/bin/dspo", "bench", "memory", "--out", "m.csv"]) is None


def test_a_watched_command_records_each_job_peak(tmp_path: Path) -> None:
    out = tmp_path / "memory.csv"
    # A dspo job below a shell, as Snakemake runs jobs, then a process that is no dspo job
    # (200 MiB for two seconds): only the job is recorded.
    hold = (
        "import numpy; a = numpy.ones(200 * 2**20, dtype=numpy.uint8); import time; time.sleep(2)"
    )
    script = tmp_path / "job.py"
    script.write_text(hold + "\n")
    code = main(
        [
            "--out",
            str(out),
            "--interval",
            "0.2",
            "--",
            "bash",
            "-c",
            f"{sys.executable} -m dspo.cli.commands standins --out {tmp_path / 's'}"
            " --only prompts --tiny"
            f" --prompts 4 > /dev/null && {sys.executable} {script}",
        ]
    )
    assert code == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["command"] for r in rows] == ["standins"]
    assert rows[0]["job"] == f"standins out={tmp_path / 's'}"
    assert float(rows[0]["peak_mib"]) > 50  # python, numpy and torch imported at least


def watched(monkeypatch, polls: list[dict[int, tuple[int, list[str], float]]]) -> dict:
    """The jobs :func:`dspo.bench.memory.watch` records over scripted polls of the process
    table: each poll maps pid to (start time, argv, high-water mark in MiB)."""
    from dspo.bench import memory as bench_memory

    seen: dict[int, tuple[int, list[str], float]] = {}

    def descendants(root: int) -> list[int]:
        seen.clear()
        seen.update(polls.pop(0) if polls else {})
        return [root, *seen]

    monkeypatch.setattr(bench_memory, "_descendants", descendants)
    monkeypatch.setattr(bench_memory, "_alive", lambda pid: bool(polls))
    monkeypatch.setattr(bench_memory, "_start_time", lambda pid: seen[pid][0] if pid in seen else 0)
    monkeypatch.setattr(bench_memory, "_argv", lambda pid: seen[pid][1] if pid in seen else [])
    monkeypatch.setattr(bench_memory, "_hwm_mib", lambda pid: seen[pid][2] if pid in seen else None)
    return bench_memory.watch(None, 0.0, pid=1)[1]


def test_a_reused_pid_is_another_job(monkeypatch) -> None:
    """The kernel reuses pids over a long run: a later process is not the earlier job's."""

    polls = [
        {100: (1, ["/v/bin/dspo", "cache-gather", "--out", "c"], 400.0)},
        {100: (2, ["/v/bin/dspo", "score", "--name", "m", "--out", "s"], 6000.0)},
    ]
    jobs = watched(monkeypatch, polls)
    peaks = {name: job.peak_mib for name, job in jobs.items()}
    assert peaks == {"cache-gather out=c": 400.0, "score name=m out=s": 6000.0}


def test_a_job_first_seen_before_its_exec_is_recorded(monkeypatch) -> None:
    """A forked process shows its parent's argv until it execs the job, under the same pid and
    start time; a loaded machine widens that window. Whatever the watcher saw first, the job
    it sees afterwards is recorded."""

    shell = ["bash", "-c", "dspo standins --out s"]
    job = ["/v/bin/dspo", "standins", "--out", "s"]
    polls = [{100: (7, shell, 3.0)}, {100: (7, [""], 3.0)}, {100: (7, job, 300.0)}]
    jobs = watched(monkeypatch, polls)
    assert {name: job.peak_mib for name, job in jobs.items()} == {"standins out=s": 300.0}
