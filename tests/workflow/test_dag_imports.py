"""Building the DAG imports no torch: ``snakemake -n`` (what a login node without torch runs,
and what every job re-parses) with a ``torch`` that fails on import first on the path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.workflow_run import REPO, planned_jobs, snakemake

MESSAGE = "torch imported while building the DAG"


@pytest.fixture
def no_torch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PYTHONPATH with a failing ``torch`` package first, then the repository (whose ``dspo``
    the Snakefile imports); checked to shadow the installed torch."""
    poisoned = tmp_path / "poisoned" / "torch"
    poisoned.mkdir(parents=True)
    (poisoned / "__init__.py").write_text(f"raise ImportError({MESSAGE!r})\n")
    paths = [str(poisoned.parent), str(REPO), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))
    blocked = subprocess.run(
        [sys.executable, "-c", "import torch"], capture_output=True, text=True, check=False
    )
    assert blocked.returncode != 0 and MESSAGE in blocked.stderr


@pytest.mark.usefixtures("no_torch")
@pytest.mark.parametrize("presets", [(), ("sd15",), ("sd15", "sd15-ai-feedback")])
def test_the_dag_builds_without_torch(presets: tuple[str, ...], tmp_path: Path) -> None:
    configs = [str(REPO / f"config/presets/{name}.yaml") for name in presets]
    options = ["--configfile", *configs] if configs else []
    result = snakemake("-n", "all", *options, cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stdout
    assert planned_jobs(result.stdout)["all"] == 1
