"""What each test costs, measured in a full gate and kept in tests/durations.json.

The loops' markers (`unit`, `slow`; tests/conftest.py) are decided from these figures, so the
edit-test loops stay fast as tests are added: a test measured over a threshold leaves a loop
by itself once the file is refreshed. A test the file does not hold yet counts as quick.

The file holds each test's own time (setup, call and teardown, as pytest reports them) and
each shared fixture's setup (module, package or session scope, keyed by where it is defined
and its name). A test's cost is its own time plus the setups of the shared fixtures it uses:
a shared fixture is set up by whichever selected test needs it first, so a loop that runs a
test pays for its fixtures whatever ran first in the gate.

`make test` records the figures to .gate-durations.json in the kept file's format; after a
full gate, `make durations` copies them over the kept file. On pytest-xdist's workers
(tests/parallel.py) each worker measures its fixtures and sends them to the controller, which
writes the file; times measured beside another worker are those of a shared machine.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

DURATIONS = Path(__file__).with_name("durations.json")
OPTION = "--record-durations"
# What a worker sends its controller (xdist's workeroutput) at the end of its session.
WORKER_KEY = "record-durations-fixtures"


class Recorder:
    """Collects test and shared-fixture times during a run (a pytest plugin object)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.tests: dict[str, float] = {}
        self.fixtures: dict[str, float] = {}

    @pytest.hookimpl(hookwrapper=True)
    def pytest_fixture_setup(self, fixturedef: pytest.FixtureDef) -> Iterator[None]:
        start = time.perf_counter()
        yield
        if fixturedef.scope != "function":
            key = fixture_key(fixturedef.baseid, fixturedef.argname)
            spent = time.perf_counter() - start
            self.fixtures[key] = max(self.fixtures.get(key, 0.0), spent)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.tests[report.nodeid] = self.tests.get(report.nodeid, 0.0) + report.duration

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: object, error: object) -> None:
        """Under pytest-xdist: a worker's fixture setups, which it measured itself."""
        for key, spent in getattr(node, "workeroutput", {}).get(WORKER_KEY, {}).items():
            self.fixtures[key] = max(self.fixtures.get(key, 0.0), spent)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        worker = getattr(session.config, "workeroutput", None)
        if worker is not None:  # an xdist worker: the controller writes the file
            worker[WORKER_KEY] = self.fixtures
        else:
            self.out.write_text(dump(self.tests, self.fixtures))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        OPTION,
        type=Path,
        metavar="FILE",
        help="write each test's and shared fixture's time to FILE (tests/durations.py)",
    )


def pytest_configure(config: pytest.Config) -> None:
    if out := config.getoption(OPTION):
        config.pluginmanager.register(Recorder(out), "record-durations")


def fixture_key(baseid: str, name: str) -> str:
    """A shared fixture by where it is defined (a module's or folder's node id) and name."""
    return f"{baseid}::{name}"


def dump(tests: dict[str, float], fixtures: dict[str, float]) -> str:
    rounded = [{k: round(v, 2) for k, v in sorted(d.items())} for d in (tests, fixtures)]
    return json.dumps({"tests": rounded[0], "fixtures": rounded[1]}, indent=1) + "\n"


class Costs:
    """Each test's cost from the kept figures (see the module docstring)."""

    def __init__(self, path: Path = DURATIONS) -> None:
        kept = json.loads(path.read_text()) if path.exists() else {}
        self.tests: dict[str, float] = kept.get("tests", {})
        self.fixtures: dict[str, float] = kept.get("fixtures", {})

    def shared(self, item: pytest.Item) -> dict[str, float]:
        """The measured setups of the shared fixtures the test uses, by fixture key: each name
        is looked up where pytest would find it first (its module, then its folders)."""
        module = item.nodeid.split("::")[0]
        scopes = [module] + [str(p) for p in Path(module).parents][:-1] + [""]
        found = {}
        for name in item.fixturenames:
            for scope in scopes:
                if (key := fixture_key(scope, name)) in self.fixtures:
                    found[key] = self.fixtures[key]
                    break
        return found

    def of(self, item: pytest.Item) -> float:
        """Seconds: the test's own time and its shared fixtures' setups; 0 if not measured."""
        return self.tests.get(item.nodeid, 0.0) + sum(self.shared(item).values())
