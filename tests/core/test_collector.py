"""The collector a job's process runs with: set by the console script only, frozen at exit."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import weakref
from collections.abc import Iterator
from importlib.metadata import entry_points

import pytest

from dspo.cli.commands import main
from dspo.core.collector import FULL_AFTER, job_collector


class Node:
    itself: Node


@pytest.fixture
def collector() -> Iterator[None]:
    """This process's collector settings, put back after the test."""
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_a_job_waits_longer_for_full_collections_and_freezes_at_exit(collector: None) -> None:
    young, middle, _ = gc.get_threshold()
    frozen = gc.get_freeze_count()
    with job_collector():
        assert gc.get_threshold() == (young, middle, FULL_AFTER)
        garbage = Node()
        garbage.itself = garbage  # a cycle: only a collection frees it
        freed = weakref.ref(garbage)
        del garbage
        assert gc.get_freeze_count() == frozen
    # What survived the exit's collection is frozen; garbage in cycles is not among it.
    assert gc.get_freeze_count() > frozen
    assert freed() is None


def test_main_called_from_python_leaves_the_collector_alone(
    collector: None, capsys: pytest.CaptureFixture
) -> None:
    threshold, frozen = gc.get_threshold(), gc.get_freeze_count()
    with pytest.raises(SystemExit):
        main(["--help"])
    assert (gc.get_threshold(), gc.get_freeze_count()) == (threshold, frozen)


def test_the_console_script_and_module_run_main_under_the_job_collector() -> None:
    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "dspo"]
    assert script.value == "dspo.cli:console"
    # `python -m dspo.cli.commands` (the training launcher's workers) runs the same.
    probe = (
        "import gc, json, runpy, sys\n"
        "sys.argv = ['dspo', '--help']\n"
        "try:\n"
        "    runpy.run_module('dspo.cli.commands', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(json.dumps([gc.get_threshold()[2], gc.get_freeze_count() > 0]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out.splitlines()[-1]) == [FULL_AFTER, True]
