"""`python -m dspo.core.progress`: running jobs and their latest progress, on fabricated runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from dspo.core.progress import latest_metrics, latest_progress, parse_run, report

REPO = Path(__file__).resolve().parents[2]

# As Snakemake 9 writes its log: two training jobs and a scoring job start, one of them
# finishes, the scoring job fails.
SNAKEMAKE_LOG = """\
Building DAG of jobs...
Execute 3 jobs...
[Tue Dec  1 08:05:14 2026]
rule train:
    input: results/data/cache/pairs
    output: results/models/dspo
    log: results/logs/train/dspo.log
    jobid: 7
    reason: Missing output files: results/models/dspo
    wildcards: method=dspo
    resources: tmpdir=/tmp
[Tue Dec  1 08:05:14 2026]
rule train:
    output: results/models/mapo
    log: results/logs/train/mapo.log
    jobid: 8
    wildcards: method=mapo
[Tue Dec  1 08:05:15 2026]
rule score:
    output: results/scores/base/pickv2.parquet
    log: results/logs/score/base/pickv2.log
    jobid: 9
    wildcards: model=base, prompt_set=pickv2
[Tue Dec  1 08:06:00 2026]
Finished jobid: 8 (Rule: train)
1 of 12 steps (8%) done
[Tue Dec  1 08:06:05 2026]
Error in rule score:
    jobid: 9
    output: results/scores/base/pickv2.parquet
    log: results/logs/score/base/pickv2.log (check log file(s) for error details)
"""
TRAIN_LOG = (
    "Loading pipeline components...: 100%|##########| 5/5 [00:00<00:00, 26.07it/s]\n"
    "\rtrain dspo:   0%|          | 0/40 [00:00<?, ?it/s]"
    "\rtrain dspo:  25%|##5       | 10/40 [00:30<01:30,  3.00s/it, loss=0.3337]"
    "\rtrain dspo:  50%|#####     | 20/40 [01:00<01:00,  3.00s/it, loss=0.3105]"
)


def fabricated_run(workdir: Path, snakemake_log: str = SNAKEMAKE_LOG) -> Path:
    """A working directory mid-run: the Snakemake log, job logs and a metrics file."""
    logs = workdir / ".snakemake" / "log"
    logs.mkdir(parents=True)
    (logs / "2026-12-01T080511.000000.snakemake.log").write_text(snakemake_log)
    # A later dry run's log, which must not hide the run.
    (logs / "2026-12-01T080700.000000.snakemake.log").write_text("Job stats:\nThis was a dry-run")
    job_logs = workdir / "results" / "logs"
    (job_logs / "train").mkdir(parents=True)
    (job_logs / "train" / "dspo.log").write_text(TRAIN_LOG)
    (job_logs / "train" / "mapo.log").write_text('{\n  "method": "mapo",\n  "steps": 40\n}\n')
    (job_logs / "score" / "base").mkdir(parents=True)
    (job_logs / "score" / "base" / "pickv2.log").write_text("RuntimeError: out of memory\n")
    run_dir = workdir / "results" / "train" / "dspo"
    run_dir.mkdir(parents=True)
    records = [{"step": s, "lr": 1e-6, "loss": 0.3 + s / 1000} for s in (19, 20)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return workdir


def test_the_states_of_a_runs_jobs_follow_its_snakemake_log(tmp_path: Path) -> None:
    run = parse_run(
        fabricated_run(tmp_path) / ".snakemake/log/2026-12-01T080511.000000.snakemake.log"
    )
    states = {(j.rule, tuple(j.wildcards.values())): (j.state, j.log) for j in run.jobs}
    assert states == {
        ("train", ("dspo",)): ("running", "results/logs/train/dspo.log"),
        ("train", ("mapo",)): ("finished", "results/logs/train/mapo.log"),
        ("score", ("base", "pickv2")): ("failed", "results/logs/score/base/pickv2.log"),
    }
    assert run.steps == "1 of 12 steps (8%) done" and not run.ended


def test_jobs_still_open_when_the_run_ended_are_lost(tmp_path: Path) -> None:
    ended = SNAKEMAKE_LOG + "Exiting because a job execution failed. Look below\n"
    run = parse_run(
        fabricated_run(tmp_path, ended)
        / ".snakemake/log"
        / "2026-12-01T080511.000000.snakemake.log"
    )
    assert run.ended
    assert [j.state for j in run.jobs] == ["lost", "finished", "failed"]


def test_the_latest_progress_is_the_last_bar_without_its_drawing() -> None:
    assert latest_progress(TRAIN_LOG) == (
        "train dspo 20/40 (50%), 01:00 elapsed, ETA 01:00, loss=0.3105"
    )
    # Without a bar: the last line that says something (not a JSON summary's brace).
    assert latest_progress('step 3: skipped\n{\n  "seconds": 4.0\n}\n') == '"seconds": 4.0'
    assert latest_progress("") is None


def test_the_latest_metrics_skip_a_line_being_written(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 7, "loss": 0.25, "lr": 1e-6}) + '\n{"step": 8, "lo')
    assert latest_metrics(path) == "step 7, loss 0.25"
    assert latest_metrics(tmp_path / "absent.jsonl") is None


def test_the_report_shows_running_and_failed_jobs_with_their_progress(tmp_path: Path) -> None:
    text = report(fabricated_run(tmp_path), now=0.0)
    assert "Snakemake run in progress: .snakemake/log/2026-12-01T080511.000000" in text
    assert "running  train dspo\n" in text
    assert "train dspo 20/40 (50%), 01:00 elapsed, ETA 01:00, loss=0.3105" in text
    assert "results/train/dspo/metrics.jsonl: step 20, loss 0.32" in text
    assert "failed   score base pickv2\n" in text and "RuntimeError: out of memory" in text
    assert "train mapo" not in text  # finished while another job runs: left out
    assert "finished train mapo" in report(tmp_path, show_all=True, now=0.0)


def test_when_nothing_runs_the_last_finished_job_is_shown(tmp_path: Path) -> None:
    finished = SNAKEMAKE_LOG.split("[Tue Dec  1 08:06:05 2026]")[0]
    finished += "Finished jobid: 9 (Rule: score)\nFinished jobid: 7 (Rule: train)\n"
    finished += "3 of 3 steps (100%) done\nComplete log(s): x\n"
    text = report(fabricated_run(tmp_path, finished), now=0.0)
    assert "Snakemake run ended" in text and "3 of 3 steps (100%) done" in text
    jobs = [line for line in text.splitlines() if not line.startswith(" ")][3:]
    assert jobs == ["finished train dspo"]


def test_the_module_runs_from_the_command_line(tmp_path: Path) -> None:
    fabricated_run(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "dspo.core.progress", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert "running  train dspo" in result.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no Snakemake run has executed jobs" in report(empty)
