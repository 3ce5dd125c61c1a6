"""The workflow on a real SLURM: `scripts/local_slurm.sh` starts a single-node cluster and the
repository's `slurm` profile, through snakemake-executor-plugin-slurm, carries on copies of the
shared smoke run (tests/conftest.py): an edit of one method's parameters resubmits only that
method's jobs (the rules that take every model run in the main process), training on two GPUs,
and a training cut by its time limit resumes on Snakemake's retry; the two runs go side by
side, each filling the other's waits. Needs root to install and start the daemons (CI runs as
root); skipped elsewhere."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.workflow_run import copy_run

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "local_slurm.sh"
SMOKE = REPO / "config" / "presets" / "smoke.yaml"
# The method whose parameters the SLURM run edits. The smoke preset keeps DSPO's step 2 as a
# model of its own (config/presets/smoke.yaml), so the edit reruns a CPU rule (step_model)
# beside the GPU ones and both kinds of request reach the cluster.
METHOD = "dspo"
EDIT = {"methods": {METHOD: {"params": {"lam": 0.5}}}}
STEPS = yaml.safe_load(SMOKE.read_text())["methods"][METHOD]["training"]["evaluate_steps"]
EDITED_MODELS = (METHOD, *(f"{METHOD}@{step}" for step in STEPS))
# Rules that take every model's outputs (local rules, run in the main process): an edit of one
# method reruns them too.
SUMMARY_RULES = {"tables", "grid", "binding_table", "summary", "all"}
SQUEUE_FORMAT = "JobID:8,Partition:10,State:11,tres-per-job:22,Comment:60"
# "Job 5 has been submitted with SLURM jobid 46 (log: .../rule_prompt_set/pickv2/46.log)."
SUBMITTED = re.compile(r"submitted with SLURM jobid (\d+) \(log: \S*/slurm_logs/rule_(\w+)/")
SITE = {
    "DSPO_SLURM_GPU_PARTITION": "gpu",
    "DSPO_SLURM_CPU_PARTITION": "cpu",
    "DSPO_SLURM_GPU_MODEL": "fake",
}


def run(
    *command: str | Path, env: dict[str, str] | None = None, cwd: Path = REPO
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(c) for c in command],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )


def tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.splitlines()[-lines:])


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    """The local cluster, installed when missing, stopped after the module's tests."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip(
            "the local SLURM needs root to install and start it (CI runs the suite as root)"
        )
    if shutil.which("slurmctld") is None:
        if shutil.which("apt-get") is None:
            pytest.skip("SLURM is not installed and there is no apt-get to install it")
        installed = run(SCRIPT, "install")
        if installed.returncode != 0:
            pytest.skip(f"could not install SLURM's Debian packages:\n{tail(installed.stdout)}")
    started = run(SCRIPT, "start")
    if "is not ours" in started.stdout:
        pytest.skip(f"a SLURM configuration is already in place:\n{tail(started.stdout)}")
    assert started.returncode == 0, f"local SLURM did not start:\n{started.stdout}"
    yield
    stopped = run(SCRIPT, "stop")
    assert stopped.returncode == 0, stopped.stdout


class QueueWatcher:
    """Polls squeue while a workflow runs and keeps what it saw."""

    def __init__(self) -> None:
        self.snapshots: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(1.0):
            out = run("squeue", "--noheader", "--format", "%i").stdout
            if out.strip():
                self.snapshots.append(run("squeue", "-O", SQUEUE_FORMAT).stdout)

    def __enter__(self) -> QueueWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def busiest(self) -> str:
        """The snapshot with the most running jobs."""
        return max(self.snapshots, key=lambda s: s.count("RUNNING"), default="")


def snakemake(
    workdir: Path, *args: str | Path, train_gpus: int, site: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`snakemake --profile slurm` from the repository root, where `slurm` resolves to ./slurm."""
    env = {
        **os.environ,
        **SITE,
        **(site or {}),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DSPO_TRAIN_GPUS": str(train_gpus),
    }
    return run(
        sys.executable,
        "-m",
        "snakemake",
        "--profile",
        "slurm",
        "--directory",
        workdir,
        *args,
        env=env,
    )


def local_rules() -> set[str]:
    """The Snakefile's `localrules`: they run in the main process, not as SLURM jobs."""
    block = re.search(r"^localrules:\n((?:[ \t]+\w+,?\n)+)", (REPO / "Snakefile").read_text(), re.M)
    assert block, "the Snakefile names no localrules"
    return set(re.findall(r"\w+", block[1]))


def job_stats(output: str) -> Counter:
    """The 'Job stats' table of a run as {rule: count}."""
    table = output.split("Job stats:")[1].split("\n\n")[0]
    rows = re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.MULTILINE)
    return Counter({rule: int(n) for rule, n in rows if rule != "total"})


def planned_jobs(output: str) -> Counter:
    """The 'Job stats' table of a run as {rule: count}, without the rules run locally."""
    local = local_rules()
    return Counter({rule: n for rule, n in job_stats(output).items() if rule not in local})


def started_jobs(output: str) -> list[tuple[str, str]]:
    """Every job a run started, local or submitted, as (rule, the model or method its
    wildcards name, or "" where they name none), from the blocks Snakemake prints."""
    jobs = []
    for rule, body in re.findall(r"^(?:local)?rule (\w+):\n((?:    .*\n)*)", output, re.M):
        line = re.search(r"^    wildcards: (.*)$", body, flags=re.MULTILINE)
        wildcards = dict(w.split("=", 1) for w in line[1].split(", ")) if line else {}
        jobs.append((rule, wildcards.get("model", wildcards.get("method", ""))))
    return jobs


class WorkflowRun:
    """One run on the local cluster: its output, its SLURM jobs and their rows in squeue."""

    def __init__(self, workdir: Path, configs: list[Path], train_gpus: int) -> None:
        with QueueWatcher() as self.watcher:
            result = snakemake(
                workdir,
                "--workflow-profile",
                "workflow/profiles/local-slurm",
                "all",
                "--configfile",
                *configs,
                train_gpus=train_gpus,
            )
        self.output = result.stdout
        assert result.returncode == 0, f"the workflow failed under SLURM:\n{tail(self.output, 80)}"
        self.jobs = {int(job): rule for job, rule in SUBMITTED.findall(self.output)}
        self.queue = run("squeue", "--states", "all", "-O", SQUEUE_FORMAT).stdout
        self.completed = run("sacct", "--completion", "-o", "JobID,Partition,State,End").stdout

    def rows(self) -> dict[int, dict[str, str]]:
        """This run's jobs as squeue shows them after the run."""
        keys = ("partition", "state", "tres", "comment")
        rows = {}
        for line in self.queue.splitlines()[1:]:
            job, *fields = line.split()
            if int(job) in self.jobs and len(fields) == len(keys):
                rows[int(job)] = dict(zip(keys, fields, strict=True))
        return rows


@pytest.fixture(scope="module")
def workdir(smoke_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the shared smoke run, for the SLURM run to carry on."""
    return copy_run(smoke_run, tmp_path_factory.mktemp("slurm") / "run")


@pytest.fixture(scope="module")
def edit_run(workdir: Path, cluster: None, cut_run: Future[CutRun]) -> WorkflowRun:
    """The smoke run carried on under SLURM after an edit of METHOD's parameters, with two
    GPUs for training; the time-limit cut's workflow (``cut_run``) runs beside it."""
    edit = workdir.parent / "edit.yaml"
    edit.write_text(yaml.safe_dump(EDIT))
    return WorkflowRun(workdir, [SMOKE, edit], train_gpus=2)


def planned(output: str) -> list[tuple[str, str, str]]:
    """The jobs of a dry run with -p as (rule, resources, shell command)."""
    jobs = []
    for block in output.split("\n\n"):
        rule = re.search(r"^rule (\w+):", block, flags=re.MULTILINE)
        if rule:
            resources = re.search(r"^    resources: (.*)$", block, flags=re.MULTILINE)
            shell = re.search(r"^Shell command: (.*)$", block, flags=re.MULTILINE)
            jobs.append((rule[1], resources[1], shell[1] if shell else ""))
    return jobs


def test_dry_run_gives_gpus_to_the_rules_that_take_a_device(tmp_path: Path) -> None:
    # No cluster needed: the plan shows each job's resources and command.
    result = snakemake(tmp_path, "-n", "-p", "all", train_gpus=4)
    assert result.returncode == 0, result.stdout
    jobs = planned(result.stdout)
    assert {rule for rule, _, _ in jobs} >= {"train", "cache", "generate", "score", "tables"}
    for rule, resources, shell in jobs:
        if "--device" in shell:
            assert "slurm_partition=gpu" in resources and "gpu_model=fake" in resources, rule
            assert re.search(r"\bgpu=[1-9]", resources), rule
            assert "tasks=" not in resources, rule  # it would become --ntasks-per-gpu
        elif "gpu=" not in resources:
            assert "slurm_partition=cpu" in resources, rule
        if rule == "train":
            assert "gpu=4" in resources
            assert "python -m dspo.training.launch --procs-per-node 4 --cpu -- train" in shell
            assert "srun" not in shell  # one node: no second job step


def test_site_knobs_reach_every_request(tmp_path: Path) -> None:
    """The variables of docs/cluster.md in the planned jobs' resources (the plugin turns
    each into its sbatch option); two training nodes ask GPUs per node and start one
    launcher per node."""
    site = {
        "DSPO_SLURM_QOS": "long",
        "DSPO_SLURM_GPU_CONSTRAINT": "a100_80g",
        "DSPO_SLURM_CPU_CONSTRAINT": "skylake",
        "DSPO_SLURM_GPU_STYLE": "gres",
        "DSPO_TRAIN_NODES": "2",
        "DSPO_SLURM_RUNTIME_TRAIN": "720",
        "DSPO_SLURM_RUNTIME_CPU": "60",
        "DSPO_TRAIN_SIGNAL_LEAD": "2400",
    }
    result = snakemake(tmp_path, "-n", "-p", "all", train_gpus=4, site=site)
    assert result.returncode == 0, result.stdout
    for rule, resources, shell in planned(result.stdout):
        assert "qos=long" in resources, rule
        if "slurm_partition=gpu" in resources:
            assert "constraint=a100_80g" in resources and "gpu_model" not in resources, rule
            assert not re.search(r"\bgpu=", resources), rule  # --gres, not --gpus
        else:
            assert "constraint=skylake" in resources and "runtime=60" in resources, rule
        if rule == "generate":
            assert "gres=gpu:fake:1" in resources and "runtime=1440" in resources
        if rule == "train":
            assert "nodes=2" in resources and "gres=gpu:fake:4" in resources
            assert "runtime=720" in resources and "slurm_extra=--signal=URG@2400" in resources
            assert "srun --overlap --nodes 2 --ntasks-per-node 1 --cpus-per-task" in shell
            assert (
                "python -m dspo.training.launch --procs-per-node 4 --cpu --slurm -- train" in shell
            )


def test_every_job_runs_on_slurm(
    edit_run: WorkflowRun, workdir: Path, capsys: pytest.CaptureFixture
) -> None:
    with capsys.disabled():
        print(f"\nsqueue while the edit ran:\n{edit_run.watcher.busiest()}")
        print(f"squeue after it:\n{edit_run.queue}sacct --completion:\n{edit_run.completed}")
    assert Counter(edit_run.jobs.values()) == planned_jobs(edit_run.output)
    assert "RUNNING" in edit_run.watcher.busiest()
    rows = edit_run.rows()
    assert rows.keys() == edit_run.jobs.keys()
    assert {row["state"] for row in rows.values()} == {"COMPLETED"}
    finished = {int(line.split()[0]) for line in edit_run.completed.splitlines()[2:]}
    assert edit_run.jobs.keys() <= finished
    assert (workdir / "results/tables/win_rates.md").exists()


def test_gpu_rules_get_gpus_in_the_gpu_partition(edit_run: WorkflowRun) -> None:
    profile = yaml.safe_load((REPO / "slurm" / "config.yaml").read_text())
    gpu_rules = {rule for rule, res in profile["set-resources"].items() if "gpu" in res}
    assert {"train", "generate", "score"} <= gpu_rules
    submitted = set(edit_run.jobs.values())
    assert submitted & gpu_rules and submitted - gpu_rules  # both kinds of request are checked
    for job, row in edit_run.rows().items():
        rule = edit_run.jobs[job]
        assert row["comment"].startswith(f"rule_{rule}")
        gpus = 2 if rule == "train" else 1
        expected = ("gpu", f"gres:gpu:fake:{gpus}") if rule in gpu_rules else ("cpu", "N/A")
        assert (row["partition"], row["tres"]) == expected, row["comment"]


def test_an_edit_resubmits_only_the_affected_jobs(
    edit_run: WorkflowRun, capsys: pytest.CaptureFixture
) -> None:
    with capsys.disabled():
        print(f"\njobs of the edit: {dict(job_stats(edit_run.output))}")
    rules = Counter(edit_run.jobs.values())
    assert rules["train"] == rules["step_model"] == 1
    assert rules["generate"] == rules["score"] == len(EDITED_MODELS)
    for row in edit_run.rows().values():
        assert row["comment"].split("_wildcards_")[-1] in EDITED_MODELS, row["comment"]
    # Local jobs too: the base model's and the other methods' jobs stay done.
    started = started_jobs(edit_run.output)
    assert Counter(rule for rule, _ in started) == job_stats(edit_run.output)
    for rule, model in started:
        if rule in SUMMARY_RULES:
            assert model == "", rule
        else:
            assert model in EDITED_MODELS, (rule, model)


def test_training_on_two_gpus_runs_two_processes(edit_run: WorkflowRun, workdir: Path) -> None:
    (train,) = (row for job, row in edit_run.rows().items() if edit_run.jobs[job] == "train")
    assert train["tres"] == "gres:gpu:fake:2"
    log = (workdir / f"results/logs/train/{METHOD}.log").read_text()
    assert "dspo.training.launch --procs-per-node 2" in edit_run.output and '"processes": 2' in log


# The time-limit test: enough steps that the first job is still training when its limit is
# lowered (up to 30 s pass before slurmctld's next time-limit pass sends the warning); no
# checkpoint but the one the warning makes, of a method that keeps no step.
CUT_METHOD = "dspo_nodup"
CUT_STEPS = 250
CUT_SITE = {"DSPO_SLURM_RUNTIME_TRAIN": "5", "DSPO_TRAIN_SIGNAL_LEAD": "30"}


def elapsed_seconds(job: int) -> int:
    """A running job's elapsed time, from squeue's [D-]H:MM:SS or M:SS."""
    text = run("squeue", "--noheader", "--jobs", str(job), "--format", "%M").stdout.strip()
    days, _, clock = text.rpartition("-")
    seconds = 0
    for part in clock.split(":"):
        seconds = 60 * seconds + int(part)
    return seconds + 86400 * int(days or 0)


def job_state(job: int) -> str:
    return run("squeue", "--noheader", "--states", "all", "--jobs", str(job), "-o", "%T").stdout


# The states of a job that has ended (squeue --states all); an empty answer, as squeue gives
# while slurmctld is busy, is none of them.
ENDED = {"COMPLETED", "FAILED", "TIMEOUT", "CANCELLED", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED"}


def train_command(output: str, out: Path) -> list[str]:
    """The train job's `dspo train` arguments as Snakemake printed them, writing to ``out``."""
    line = next(x for x in output.splitlines() if x.startswith("Shell command: exec env "))
    words = shlex.split(line.removeprefix("Shell command: "))
    words = words[words.index("--") + 1 : words.index(">")]
    words[words.index("--out") + 1] = str(out / "model")
    words[words.index("--run-dir") + 1] = str(out / "run")
    return [str(Path(sys.executable).parent / "dspo"), *words]


def unet_of(model: Path) -> dict[str, torch.Tensor]:
    return load_file(model / "unet" / "diffusion_pytorch_model.safetensors")


@dataclass
class CutRun:
    """What the time-limit cut's workflow left: its output and the jobs the loop saw."""

    workdir: Path
    tmp: Path
    returncode: int | None = None
    output: str = ""
    first: int | None = None
    lowered: str = ""
    first_log: str = ""
    straight: int | None = None  # the uninterrupted run's exit status

    @property
    def metrics(self) -> Path:
        return self.workdir / f"results/train/{CUT_METHOD}/metrics.jsonl"

    @property
    def train_log(self) -> Path:
        return self.workdir / f"results/logs/train/{CUT_METHOD}.log"


def cut_workflow(cut: CutRun, stop: threading.Event) -> CutRun:
    """One training job under the profile, on a copy of the smoke run (the longer training
    reruns that job alone), its time limit lowered with scontrol once it trains (so the cut
    comes mid-training whatever the machine's speed): SLURM's warning (the profile's
    --signal, DSPO_TRAIN_SIGNAL_LEAD before the limit) or the limit itself stops it with a
    checkpoint, and the profile's retries resubmit it. An uninterrupted run trains beside the
    SLURM jobs, from the command Snakemake prints when it submits the first: the plugin's
    status checks back off by 10 s while a job runs, so the core would otherwise wait idle
    after each job ends. ``stop`` ends both early (the module's teardown)."""
    smoke_copy, tmp_path, metrics = cut.workdir, cut.tmp, cut.metrics
    metrics.unlink()  # the smoke run's training: it would read as this one's first steps
    overlay = tmp_path / "cut.yaml"
    overlay.write_text(yaml.safe_dump({"training": {"steps": CUT_STEPS, "checkpoint_every": 0}}))
    retries = yaml.safe_load((REPO / "slurm" / "config.yaml").read_text())["retries"]
    env = {
        **os.environ,
        **SITE,
        **CUT_SITE,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DSPO_TRAIN_GPUS": "1",
    }
    command = [sys.executable, "-m", "snakemake", "--profile", "slurm", "--directory", smoke_copy]
    command += ["--workflow-profile", "workflow/profiles/local-slurm", "--retries", retries]
    command += [f"results/models/{CUT_METHOD}", "--configfile", SMOKE, overlay]
    log = tmp_path / "snakemake.out"
    straight: subprocess.Popen | None = None
    with log.open("w") as out, ExitStack() as stack:
        proc = subprocess.Popen(
            [str(c) for c in command], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
        )
        stack.callback(proc.kill)  # a no-op once it has ended
        deadline = time.monotonic() + 900
        while proc.poll() is None:
            assert time.monotonic() < deadline, tail(log.read_text(), 80)
            if stop.wait(0.5):
                return cut
            trains = [int(j) for j, r in SUBMITTED.findall(log.read_text()) if r == "train"]
            if not trains:
                continue
            if straight is None:
                straight = subprocess.Popen(
                    train_command(log.read_text(), tmp_path / "straight"),
                    cwd=smoke_copy,
                    stdout=stack.enter_context((tmp_path / "straight.log").open("w")),
                    stderr=subprocess.STDOUT,
                )
                stack.callback(straight.kill)
            cut.first = trains[0]
            if not cut.lowered and metrics.exists() and metrics.read_text().strip():
                limit = elapsed_seconds(cut.first) // 60 + 1
                done = run("scontrol", "update", f"JobId={cut.first}", f"TimeLimit={limit}")
                assert done.returncode == 0, done.stdout
                cut.lowered = f"time limit of job {cut.first} lowered to {limit} min"
            elif cut.lowered and not cut.first_log and job_state(cut.first).strip() in ENDED:
                cut.first_log = cut.train_log.read_text()  # before the retry's job rewrites it
        cut.returncode = proc.returncode
        if straight is not None and proc.returncode == 0:
            cut.straight = straight.wait(timeout=900)  # if the workflow failed, exit stops it
    cut.output = log.read_text()
    return cut


@pytest.fixture(scope="module")
def cut_run(
    smoke_run: Path, cluster: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Future[CutRun]]:
    """The cut's workflow, started in a thread on a copy of the smoke run: the edit's run
    (``edit_run``) starts it first, so that the two runs fill each other's waits for the
    plugin's status checks and slurmctld's passes."""
    tmp = tmp_path_factory.mktemp("cut")
    stop = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(cut_workflow, CutRun(copy_run(smoke_run, tmp / "run"), tmp), stop)
        yield future
        stop.set()


def test_a_job_cut_by_its_time_limit_resumes_on_snakemakes_retry(
    cut_run: Future[CutRun], capsys: pytest.CaptureFixture
) -> None:
    """The cut job's checkpoint, the retry's resumption from it, and the retry's weights
    equal to the uninterrupted run's (the retry runs in a new allocation, whose environment no
    other resume test has)."""
    cut = cut_run.result(timeout=1200)
    smoke_copy, output, metrics, train_log = cut.workdir, cut.output, cut.metrics, cut.train_log
    assert cut.returncode == 0, tail(output, 80)
    assert {rule for _, rule in SUBMITTED.findall(output)} == {"train"}
    trains = [int(j) for j, r in SUBMITTED.findall(output) if r == "train"]
    states = {job: job_state(job).strip() for job in trains}
    completed = run("sacct", "--completion", "-o", "JobID,State,Start,End,Elapsed,ExitCode")
    stopped = re.search(r"(SIGURG|SIGTERM) received: stopped after step (\d+)", cut.first_log)
    with capsys.disabled():
        print(f"\n{cut.lowered}; train jobs {states}\nsacct --completion:\n{completed.stdout}")
        print(f"the first job's log: {stopped[0] if stopped else tail(cut.first_log, 5)}")
    assert cut.lowered and len(trains) >= 2 and trains[0] == cut.first
    assert states[cut.first] in {"FAILED", "TIMEOUT"} and states[trains[-1]] == "COMPLETED"
    assert stopped, tail(cut.first_log)
    stats = json.loads(train_log.read_text()[train_log.read_text().rindex("\n{") :])
    assert stats["resumed_from"] == int(stopped[2]) and 0 < stats["resumed_from"] < CUT_STEPS
    # Both jobs' steps in one metrics file (the smoke preset logs every step): the first
    # job's up to its checkpoint, the retry's from there to the end.
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == list(range(1, CUT_STEPS + 1))

    straight_log = cut.tmp / "straight.log"
    assert cut.straight == 0, tail(straight_log.read_text())
    resumed, uninterrupted = (
        unet_of(smoke_copy / f"results/models/{CUT_METHOD}"),
        unet_of(cut.tmp / "straight/model"),
    )
    assert uninterrupted.keys() == resumed.keys()
    for key, value in uninterrupted.items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=1e-6)
