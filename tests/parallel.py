"""The full gate on several workers (`make test`: pytest-xdist, `--dist loadscope`).

Four things make the gate's workers share two cores well (docs/development.md):

- **Runs built once:** :func:`build_once` builds a folder (the shared smoke run) once per
  gate, under a file lock in the folder every worker's temporary files sit in; a worker that
  needs it while another builds it waits, and one that fails makes the others fail with it.
- **A module on one worker:** `--dist loadscope` hands out a test module at a time, so a
  module's shared fixtures (a workflow run, a cluster) are set up once. (`--dist loadgroup`
  would split modules finer, but its groups do not take with pytest 9, whose test ids
  pytest-xdist 3.8 can no longer suffix.)
- **Order:** modules are handed out in the order of the collected tests, as workers free up.
  :func:`plan` puts the costly ones first, so that no long one starts last; those that need
  the shared run wait behind the first of them (which builds it) and enough independent
  work to fill the time it takes to build.
- **One thread:** each worker's torch computes on one thread (:func:`one_thread_per_worker`),
  and so does each job of a workflow a test runs (:func:`workflow_threads`).

Costs come from tests/durations.py's figures; a test not measured yet counts as quick.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from filelock import FileLock

if TYPE_CHECKING:
    from tests.durations import Costs


# The session fixture that every worker shares (built by build_once): a unit that uses it is
# "dependent".
SHARED_RUN = "smoke_run"
# Independent work queued before the dependent units, as a multiple of the shared run's
# measured setup: on a worker beside another, the run takes longer than alone.
HOLD = 1.5


def on_worker() -> bool:
    """Whether this process is one of pytest-xdist's workers."""
    return bool(os.environ.get("PYTEST_XDIST_WORKER"))


def one_thread_per_worker() -> None:
    """Under xdist, one compute thread for each worker's torch.

    Two workers on two cores, each with torch's default of a thread a core, spend most of
    their CPU waiting on each other's threads: tests/training/test_train.py took 380 s of wall
    and 353 s of CPU beside a workflow run, and 109 s and 74 s with one thread. The processes
    a test starts keep their own setting (the workflow's jobs set theirs from `--threads`):
    OMP_NUM_THREADS=1 in their environment doubled the CPU of the torch.compile tests (53 s
    against 28 s for test_a_switched_step_computes_the_plain_steps_loss_and_gradient).
    """
    if on_worker():
        import torch  # here, so that pytest's controlling process does not import it

        torch.set_num_threads(1)


def workflow_threads() -> list[str]:
    """Under xdist, Snakemake's option that runs a test's workflow at one thread a job.

    Snakemake gives a rule its `threads` (the toy base model's pretraining asks for 2) within
    `--cores`, but the other worker computes on one of the two cores: beside it, the
    pretraining's two threads spun waiting on each other, 23.6 s of CPU against 7.0 s on one
    thread (one pretraining of the smoke preset beside a busy loop; 22.6 s of wall against
    7.7 s).
    """
    return ["--max-threads", "1"] if on_worker() else []


def shared_root(factory: pytest.TempPathFactory) -> Path:
    """The folder every worker of this gate sees (each worker's own base folder's parent
    under xdist; the base folder itself in a run without workers)."""
    base = factory.getbasetemp()
    return base.parent if on_worker() else base


def build_once(factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """The folder ``name`` that ``build`` fills, built by the first worker that asks for it.

    The others wait on a file lock and then read it. A failed build is recorded beside the
    folder, so every worker fails with its message instead of building it again.
    """
    root = shared_root(factory)
    folder, done, failed = root / name, root / f"{name}.done", root / f"{name}.failed"
    with FileLock(root / f"{name}.lock"):
        if failed.exists():
            raise RuntimeError(f"{name} failed in another worker:\n{failed.read_text()}")
        if not done.exists():
            folder.mkdir()
            try:
                build(folder)
            except BaseException:
                failed.write_text(traceback.format_exc())
                raise
            done.touch()
    return folder


def own_seconds(item: pytest.Item, costs: Costs) -> float:
    """The item's measured time without the shared setups it paid in the gate: a shared
    fixture's setup is taken out of the time of whichever test set it up (largest first,
    each only where the time holds it)."""
    seconds = costs.tests.get(item.nodeid, 0.0)
    for setup in sorted(costs.shared(item).values(), reverse=True):
        if seconds >= setup:
            seconds -= setup
    return seconds


def unit_seconds(items: Iterable[pytest.Item], costs: Costs) -> float:
    """A unit's cost: its tests' own times and, once each, the shared setups they use but
    the one every worker shares."""
    items = list(items)
    shared: dict[str, float] = {}
    for item in items:
        shared |= costs.shared(item)
    own = sum(own_seconds(item, costs) for item in items)
    return own + sum(v for k, v in shared.items() if not k.endswith(f"::{SHARED_RUN}"))


def plan(items: list[pytest.Item], costs: Costs) -> None:
    """Reorder the items in place, a module's together (see above)."""
    units: dict[str, list[pytest.Item]] = {}
    for item in items:
        units.setdefault(item.nodeid.split("::")[0], []).append(item)
    cost = {unit: unit_seconds(members, costs) for unit, members in units.items()}
    by_cost = sorted(units, key=lambda unit: -cost[unit])  # stable: ties keep their order
    dependent = [u for u in by_cost if any(SHARED_RUN in i.fixturenames for i in units[u])]
    independent = [u for u in by_cost if u not in set(dependent)]
    build = max((v for k, v in costs.fixtures.items() if k.endswith(f"::{SHARED_RUN}")), default=0)
    first, held, queued = dependent[:1], [], 0.0
    while independent and queued < HOLD * build:
        queued += cost[independent[0]]
        held.append(independent.pop(0))
    rest = sorted(dependent[1:] + independent, key=lambda unit: -cost[unit])
    items[:] = [item for unit in first + held + rest for item in units[unit]]
