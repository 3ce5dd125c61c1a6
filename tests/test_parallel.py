"""tests/parallel.py: the gate's plan (groups, order), a run built once for all workers, and
one thread a job in the workflows the tests run."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.durations import Costs
from tests.parallel import HOLD, plan
from tests.workflow_run import snakemake

SHARED = """
import os
import time
from pathlib import Path

import pytest

from tests.parallel import build_once


def build(folder: Path) -> None:
    with open(os.environ["BUILDS"], "a") as log:
        log.write(os.environ.get("PYTEST_XDIST_WORKER", "none") + "\\n")
    time.sleep(1.0)
    (folder / "made").write_text("yes")


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    return build_once(tmp_path_factory, "smoke", build)


@pytest.fixture(scope="module")
def module_state():
    time.sleep(0.2)


@pytest.mark.parametrize("n", range(4))
def test_reads_the_shared_run(smoke_run, n):
    assert (smoke_run / "made").read_text() == "yes"


def test_with_a_module_fixture(module_state):
    pass
"""


def run_pytest(folder: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    plugin = ["-p", "tests.durations", "-p", "no:cacheprovider"]
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", *plugin, *args, str(folder)],
        cwd=folder,
        env={"PYTHONPATH": str(Path.cwd()), "PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        check=False,
    )


def test_two_workers_build_the_shared_run_once_and_record_the_workers_fixtures(
    tmp_path: Path,
) -> None:
    (tmp_path / "test_shared.py").write_text(SHARED)
    builds, out = tmp_path / "builds.txt", tmp_path / "recorded.json"
    args = ["-n", "2", "--record-durations", str(out)]
    result = run_pytest(tmp_path, *args, env={"BUILDS": str(builds)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 passed" in result.stdout
    assert len(builds.read_text().split()) == 1  # one worker built it; the other read it
    recorded = json.loads(out.read_text())
    # The workers' tests and fixture setups reach the controller's file.
    assert len(recorded["tests"]) == 5
    assert recorded["fixtures"]["test_shared.py::module_state"] >= 0.2
    assert recorded["fixtures"]["test_shared.py::smoke_run"] >= 1.0


def test_a_failed_build_fails_every_user_without_building_again(tmp_path: Path) -> None:
    (tmp_path / "test_shared.py").write_text(SHARED.replace('write_text("yes")', "rmdir()"))
    builds = tmp_path / "builds.txt"
    result = run_pytest(tmp_path, "-n", "2", env={"BUILDS": str(builds)})
    assert result.returncode == 1
    assert "4 errors" in result.stdout and "failed in another worker" in result.stdout
    assert len(builds.read_text().split()) == 1


class Item:
    """What plan() reads of a collected test."""

    def __init__(self, nodeid: str, *fixtures: str) -> None:
        self.nodeid, self.fixturenames = nodeid, ["request", *fixtures]


def test_the_plan_puts_costly_modules_first_and_dependents_behind_independent_work(
    tmp_path: Path,
) -> None:
    kept = tmp_path / "durations.json"
    fixtures = {"tests::smoke_run": 100.0, "tests/b.py::run": 30.0, "tests::tiny": 0.1}
    tests = {
        "tests/a.py::test_report": 100.0 + 50.0,  # set the smoke run up in the gate
        "tests/d.py::test_read": 1.0,
        "tests/b.py::test_one": 30.0 + 5.0,  # set its module's run up
        "tests/b.py::test_two": 5.0,
        "tests/c1.py::test_big": 90.0,
        "tests/c2.py::test_mid": 70.0,
        "tests/c3.py::test_small": 2.0,
    }
    kept.write_text(json.dumps({"tests": tests, "fixtures": fixtures}))
    items = [
        Item("tests/a.py::test_report", "smoke_run"),
        Item("tests/d.py::test_read", "smoke_run", "tiny"),
        Item("tests/b.py::test_one", "run"),
        Item("tests/c3.py::test_small"),
        Item("tests/b.py::test_two", "run", "tiny"),
        Item("tests/c2.py::test_mid"),
        Item("tests/c1.py::test_big"),
    ]
    plan(items, Costs(kept))  # type: ignore[arg-type]
    order = [item.nodeid.split("::")[1] for item in items]
    # The costliest dependent module first (it builds the run), then independent work worth
    # HOLD builds (90 + 70 = 160 >= 150), then the rest longest first, a module's tests
    # together: b (30 + 5 + 4.9 + 0.1 = 40), c3, then the other dependent (0.9 + 0.1).
    assert HOLD * 100 == 150
    assert order == [
        "test_report",
        "test_big",
        "test_mid",
        "test_one",
        "test_two",
        "test_small",
        "test_read",
    ]


def test_the_gates_options_keep_a_module_on_one_worker() -> None:
    """`make test`'s options on this suite: each module's tests run on one worker, so its
    shared fixtures are set up once (`--dist loadgroup` split them: its groups do not take
    with pytest 9)."""
    # Two modules of quick tests that start no processes of their own.
    module, other = "tests/evaluation/test_statistics.py", "tests/config/test_experiments.py"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadscope", "-v"]
        + ["--no-loadscope-reorder", "-p", "no:cacheprovider", module, other],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    ran = re.findall(r"^\[(gw\d)\] .*PASSED (\S+)::", result.stdout, flags=re.MULTILINE)
    workers: dict[str, set[str]] = {}
    for worker, path in ran:
        workers.setdefault(path, set()).add(worker)
    assert len(ran) == 24 and {path: len(w) for path, w in workers.items()} == {
        module: 1,
        other: 1,
    }


def test_a_tests_workflow_runs_one_thread_a_job_on_a_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The base model's pretraining asks for two threads; on a worker it gets one."""

    def pretraining_threads() -> str:
        plan = snakemake("-n", "-p", "--cores", "2", "results/models/base", cwd=tmp_path).stdout
        (command,) = [line for line in plan.splitlines() if "dspo pretrain-base" in line]
        return command.split("--threads ")[1].split()[0]

    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    assert pretraining_threads() == "2"
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    assert pretraining_threads() == "1"
