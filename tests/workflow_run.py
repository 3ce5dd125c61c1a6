"""Running the workflow from tests: Snakemake in a child process, and its dry-run job counts.

Shared by the workflow tests and the session-wide smoke run (tests/conftest.py).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

from tests import snakemake_fork
from tests.parallel import workflow_threads

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "config" / "presets" / "smoke.yaml"


def snakemake(*args: str, cwd: Path = REPO, check: bool = True) -> subprocess.CompletedProcess:
    """``python -m snakemake`` on the repository's Snakefile in ``cwd``, its output and error
    (where Snakemake reports) together; forked from a process that has imported Snakemake
    (`tests.snakemake_fork`)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    argv = ["-s", str(REPO / "Snakefile"), "-d", str(cwd), *workflow_threads(), *args]
    result = snakemake_fork.run(argv, env)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout}")
    return result


def planned_jobs(output: str) -> Counter:
    """The 'Job stats' table of a dry run as {rule: count}."""
    table = output.split("Job stats:")[1].split("\n\n")[0]
    rows = re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.MULTILINE)
    return Counter({rule: int(n) for rule, n in rows if rule != "total"})


def copy_run(workdir: Path, to: Path) -> Path:
    """A copy of a run's folder to carry on: it keeps the files' modification times and
    Snakemake's records, so nothing of the run reruns unasked."""
    return Path(shutil.copytree(workdir, to, symlinks=True))
