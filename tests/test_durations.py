"""tests/durations.py: the recorded figures and each test's cost, on a run of its own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from tests.durations import Costs

MODULE = """
import time
import pytest

@pytest.fixture(scope="module")
def shared():
    time.sleep(0.3)

def test_first(shared):
    pass

def test_second(shared):
    pass

def test_alone():
    pass
"""


def test_a_run_records_its_tests_and_a_shared_fixture_once(tmp_path: Path) -> None:
    (tmp_path / "test_some.py").write_text(MODULE)
    out = tmp_path / "recorded.json"
    plugin = f"-p tests.durations --record-durations {out}".split()
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plugin, str(tmp_path)],
        cwd=tmp_path,
        env={"PYTHONPATH": str(Path.cwd())},
        check=True,
        capture_output=True,
    )
    recorded = json.loads(out.read_text())
    tests = {k.split("::")[-1]: v for k, v in recorded["tests"].items()}
    assert set(tests) == {"test_first", "test_second", "test_alone"}
    # The first user of the fixture pays its setup in its own time; the fixture is recorded.
    assert tests["test_first"] >= 0.3 > tests["test_second"]
    [(key, seconds)] = [(k, v) for k, v in recorded["fixtures"].items() if k.endswith("::shared")]
    assert key == "test_some.py::shared" and seconds >= 0.3


def test_a_tests_cost_adds_the_shared_fixtures_it_uses_where_they_are_defined(
    tmp_path: Path,
) -> None:
    kept = tmp_path / "durations.json"
    kept.write_text(
        json.dumps(
            {
                "tests": {"tests/data/test_a.py::test_one": 0.1},
                "fixtures": {
                    "tests::model": 1.0,  # tests/conftest.py
                    "tests/data::model": 2.0,  # tests/data/conftest.py overrides it
                    "tests/data/test_a.py::table": 0.5,
                    "tests/data/test_b.py::table": 9.0,  # another module's, same name
                },
            }
        )
    )
    costs = Costs(kept)

    def item(nodeid: str, *fixtures: str) -> SimpleNamespace:
        return SimpleNamespace(nodeid=nodeid, fixturenames=["request", *fixtures])

    assert costs.of(item("tests/data/test_a.py::test_one", "model", "table")) == 2.6
    assert costs.of(item("tests/core/test_c.py::test_two", "model")) == 1.0
    assert costs.of(item("tests/core/test_c.py::test_new")) == 0.0  # not measured yet
    assert Costs(tmp_path / "absent.json").of(item("tests/x.py::test_y", "model")) == 0.0
