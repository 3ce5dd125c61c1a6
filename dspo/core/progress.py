"""Where the workflow's jobs are: each running (or last) job with its latest progress line.

Jobs write to their logs under results/logs/, not to the console. This reads the newest
Snakemake log (.snakemake/log/) for the jobs it started, finished or lost, and shows for each
the last progress bar its log holds (tqdm: step/total, elapsed<remaining) and, for training,
the last record of its metrics.jsonl (step, loss). ``--watch SECONDS`` refreshes.

    python -m dspo.core.progress [--workdir DIR] [--all] [--watch SECONDS]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

SNAKEMAKE_LOGS = Path(".snakemake") / "log"
JOB_LOGS = Path("results") / "logs"
# The runs whose trainers append metrics (rules/train.smk's run_dir, rules/model.smk's
# --metrics): rule -> metrics file, formatted with the job's wildcards.
METRICS_OF_RULE = {
    "train": "results/train/{method}/metrics.jsonl",
    "base_model": "results/train/base/metrics.jsonl",
}
# Lines Snakemake writes when a run ends, whichever way; jobs still open then were lost.
RUN_ENDED = ("Complete log(s):", "Exiting because", "Nothing to be done", "Shutting down")
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# A tqdm bar: "desc:  50%|#####     | 2/4 [00:03<00:03, 1.2s/it, loss=0.31]".
TQDM_BAR = re.compile(
    r"(?:(?P<desc>[^|]*?):\s*)?(?P<percent>\d+)%\|[^|]*\|\s*(?P<done>\d+)/(?P<total>\d+)"
    r"\s*\[(?P<elapsed>[^<\]]*)<(?P<remaining>[^,\]]*)(?P<rest>[^\]]*)\]"
)


@dataclass
class Job:
    """One job of a Snakemake run, as its log tells it."""

    jobid: str
    rule: str
    log: str | None = None
    wildcards: dict[str, str] = field(default_factory=dict)
    state: str = "running"  # running | finished | failed | lost
    finish_rank: int = -1  # the how-manieth job of the run to finish


@dataclass
class Run:
    """The newest Snakemake run of a working directory."""

    log: Path
    jobs: list[Job]
    steps: str | None  # Snakemake's latest "N of M steps (P%) done"
    ended: bool


def newest_snakemake_log(workdir: Path) -> Path | None:
    """The newest log of a Snakemake run that executed jobs: dry runs, reports and lints
    write logs too, without jobs."""
    # Their names start with the time they started.
    for log in sorted((workdir / SNAKEMAKE_LOGS).glob("*.snakemake.log"), reverse=True):
        if re.search(r"^Execute \d+ jobs", log.read_text(errors="replace"), flags=re.MULTILINE):
            return log
    return None


def parse_run(log: Path) -> Run:
    """The jobs of one Snakemake log in the order they started, with their states."""
    jobs: dict[str, Job] = {}
    opening: Job | None = None  # the job whose "rule X:" block is being read
    failing = False  # inside an "Error in rule X:" block, until its jobid line
    steps, ended = None, False
    for line in log.read_text(errors="replace").splitlines():
        stripped = line.strip()
        if stripped and not line[0].isspace():
            opening = None  # a job's block is its indented lines below "rule X:"
        if match := re.fullmatch(r"(?:local)?rule (\w+):", stripped):
            opening, failing = Job(jobid="", rule=match[1]), False
        elif match := re.match(r"Error in rule \w+, jobid: (\d+)", stripped):
            if match[1] in jobs:
                jobs[match[1]].state = "failed"
        elif stripped.startswith("Error in rule "):
            failing = True
        elif match := re.fullmatch(r"jobid: (\d+)", stripped):
            if failing and match[1] in jobs:
                jobs[match[1]].state = "failed"
            elif opening is not None:
                opening.jobid = match[1]
                jobs[match[1]] = opening
            failing = False
        elif opening is not None and stripped.startswith("log: "):
            opening.log = stripped.removeprefix("log: ").split(",")[0].strip()
        elif opening is not None and stripped.startswith("wildcards: "):
            pairs = stripped.removeprefix("wildcards: ").split(", ")
            opening.wildcards = dict(p.split("=", 1) for p in pairs if "=" in p)
        elif match := re.match(r"Finished jobid: (\d+)", stripped):
            if match[1] in jobs:
                jobs[match[1]].state = "finished"
                jobs[match[1]].finish_rank = sum(j.state == "finished" for j in jobs.values())
        elif re.fullmatch(r"\d+ of \d+ steps \(.*\) done", stripped):
            steps = stripped
        elif stripped.startswith(RUN_ENDED):
            ended = True
    if ended:
        for job in jobs.values():
            if job.state == "running":
                job.state = "lost"  # the run ended without it finishing
    return Run(log=log, jobs=list(jobs.values()), steps=steps, ended=ended)


def latest_progress(text: str) -> str | None:
    """The last tqdm bar of a log, else its last line with words (bars redraw with \\r)."""
    segments = [ANSI_ESCAPE.sub("", s).strip() for s in re.split(r"[\r\n]", text)]
    # Lines of punctuation only (the closing brace of a JSON summary) say nothing.
    segments = [s for s in segments if re.search(r"\w", s)]
    for segment in reversed(segments):
        if match := TQDM_BAR.search(segment):
            return describe_bar(match)
    return segments[-1] if segments else None


def describe_bar(match: re.Match[str]) -> str:
    """A tqdm bar without its drawing: "desc 2/4 (50%), 00:03 elapsed, ETA 00:03, loss=0.31"."""
    desc = f"{match['desc'].strip()} " if match["desc"] else ""
    text = f"{desc}{match['done']}/{match['total']} ({match['percent']}%)"
    text += f", {match['elapsed'].strip()} elapsed"
    remaining = match["remaining"].strip()
    if remaining and remaining != "?":
        text += f", ETA {remaining}"
    # After the rate come tqdm's postfix values (the trainer's loss).
    postfix = [p.strip() for p in match["rest"].split(",") if "=" in p]
    return text + "".join(f", {p}" for p in postfix)


def latest_metrics(path: Path) -> str | None:
    """The last record of a metrics.jsonl as "step N, loss X" (a partial last line skipped)."""
    if not path.exists():
        return None
    for line in reversed(path.read_text().splitlines()):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # being written
        parts = [f"step {record['step']}"] if "step" in record else []
        parts += [f"{k} {record[k]:.4g}" for k in ("loss",) if isinstance(record.get(k), float)]
        return ", ".join(parts) or None
    return None


def describe_job(job: Job, workdir: Path, now: float) -> list[str]:
    """The lines shown for one job: state, rule, wildcards, log; its progress; its metrics."""
    what = " ".join([job.rule, *job.wildcards.values()])
    lines = [f"{job.state:<9}{what}"]
    if job.log is None:
        return lines
    log = workdir / job.log
    if not log.exists():
        return [*lines, f"         {job.log} (not written yet)"]
    age = int(now - log.stat().st_mtime)
    lines.append(f"         {job.log} (written {age} s ago)")
    progress = latest_progress(log.read_text(errors="replace"))
    if progress:
        lines.append(f"         {progress}")
    if job.rule in METRICS_OF_RULE:
        relative = METRICS_OF_RULE[job.rule].format(**job.wildcards)
        metrics = latest_metrics(workdir / relative)
        if metrics:
            lines.append(f"         {relative}: {metrics}")
    return lines


def chosen_jobs(run: Run, show_all: bool) -> list[Job]:
    """Running and failed jobs; and when none runs, the last one with a log to finish (or
    every job)."""
    if show_all:
        return run.jobs
    shown = [j for j in run.jobs if j.state in ("running", "failed", "lost")]
    if not any(j.state == "running" for j in run.jobs):
        # Target rules such as `all` have no log to show.
        finished = [j for j in run.jobs if j.state == "finished" and j.log]
        shown += sorted(finished, key=lambda j: j.finish_rank)[-1:]
    return shown


def report(workdir: Path, show_all: bool = False, now: float | None = None) -> str:
    """The whole progress report of a working directory, as text."""
    now = time.time() if now is None else now
    snakemake_log = newest_snakemake_log(workdir)
    if snakemake_log is None:
        return f"no Snakemake run has executed jobs in {workdir} yet ({SNAKEMAKE_LOGS}/ holds none)"
    run = parse_run(snakemake_log)
    status = "ended" if run.ended else "in progress"
    lines = [f"Snakemake run {status}: {snakemake_log.relative_to(workdir)}"]
    if run.steps:
        lines.append(run.steps)
    lines.append(f"job logs: {JOB_LOGS}/")
    jobs = chosen_jobs(run, show_all)
    if not jobs:
        lines.append("no job started yet")
    for job in jobs:
        lines += describe_job(job, workdir, now)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dspo.core.progress",
        description="Each running job of the newest Snakemake run with its latest progress.",
    )
    parser.add_argument("--workdir", type=Path, default=Path("."), help="the run's directory")
    parser.add_argument("--all", action="store_true", help="every job of the run, finished too")
    parser.add_argument(
        "--watch", type=float, metavar="SECONDS", help="refresh every SECONDS until Ctrl-C"
    )
    args = parser.parse_args(argv)
    if args.watch is None:
        print(report(args.workdir, args.all))
        return 0
    try:
        while True:
            # Clear the terminal and redraw, as `watch` does.
            sys.stdout.write("\x1b[H\x1b[2J" + report(args.workdir, args.all) + "\n")
            sys.stdout.flush()
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
