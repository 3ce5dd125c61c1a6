"""Snakemake forked from a process that has imported it (`tests.snakemake_fork`) runs as
``python -m snakemake`` would: in the caller's directory, with its environment, its output
and error in one text, its exit status; a start-up variable gets a fresh interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests import snakemake_fork

SNAKEFILE = """
rule all:
    output: "seen.txt"
    shell: "echo $PROBE_VALUE $(pwd) > {output}; echo job-output"
"""


# A Snakefile's first lines that write the pid of its process's parent to $PARENT_OUT.
PARENT = 'import os\nopen(os.environ["PARENT_OUT"], "w").write(str(os.getppid()))\n'


def failing_module(tmp_path: Path) -> Path:
    """A folder with a module ``probe`` that fails on import, naming where it was found."""
    (tmp_path / "path").mkdir()
    (tmp_path / "path" / "probe.py").write_text("raise ImportError('probe on PYTHONPATH')\n")
    return tmp_path / "path"


def workflow(tmp_path: Path, snakefile: str = SNAKEFILE) -> tuple[list[str], dict[str, str]]:
    (tmp_path / "Snakefile").write_text(snakefile)
    env = {**os.environ, "PROBE_VALUE": "from-the-caller"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return ["-s", str(tmp_path / "Snakefile"), "-d", str(tmp_path / "work"), "--cores", "1"], env


def test_a_forked_run_takes_the_callers_environment_and_reports_its_output(
    tmp_path: Path,
) -> None:
    argv, env = workflow(tmp_path, PARENT + SNAKEFILE)
    env["PARENT_OUT"] = str(tmp_path / "parent.txt")
    result = snakemake_fork.run(argv, env)
    assert result.returncode == 0, result.stdout
    # Forked from the server, not started by this process.
    assert int((tmp_path / "parent.txt").read_text()) != os.getpid()
    assert "job-output" in result.stdout and "Finished job" in result.stdout
    seen = (tmp_path / "work" / "seen.txt").read_text().split()
    assert seen == ["from-the-caller", str(tmp_path / "work")]

    failed = snakemake_fork.run([*argv, "no-such-target"], env)
    assert failed.returncode == 1
    assert "MissingRuleException" in failed.stdout or "No rule to produce" in failed.stdout


def test_a_changed_start_up_variable_runs_a_fresh_interpreter(tmp_path: Path) -> None:
    """A module found only on the run's PYTHONPATH: a forked child, whose sys.path was made
    at the server's start, would not find it."""
    argv, env = workflow(tmp_path, "import probe\n" + SNAKEFILE)
    env["PYTHONPATH"] = os.pathsep.join([str(failing_module(tmp_path)), env.get("PYTHONPATH", "")])
    fresh = subprocess.run(
        [sys.executable, "-m", "snakemake", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        check=False,
    )
    result = snakemake_fork.run(argv, env)
    assert result.returncode == fresh.returncode == 1
    assert "probe on PYTHONPATH" in result.stdout and "probe on PYTHONPATH" in fresh.stdout


# A process that sets PYTHONPATH, as a test's fixture does, before its first run starts the
# fork server; then runs again with the variable unset.
SERVER_PROBE = """
import os, sys
from tests import snakemake_fork
argv, env, path = sys.argv[1:-2], dict(os.environ), sys.argv[-2]
os.environ["PYTHONPATH"] = os.pathsep.join([path, os.environ.get("PYTHONPATH", "")])
first = snakemake_fork.run(argv, dict(os.environ))
os.environ.clear()
os.environ.update(env)
second = snakemake_fork.run(argv, env)
print(first.stdout, second.stdout, sep=sys.argv[-1])
"""


def test_the_server_starts_with_the_processs_own_start_up_variables(tmp_path: Path) -> None:
    argv, env = workflow(tmp_path, PARENT + "import probe\n" + SNAKEFILE)
    env["PARENT_OUT"] = str(tmp_path / "parent.txt")
    split = "=====SPLIT====="
    probe = subprocess.Popen(
        [sys.executable, "-c", SERVER_PROBE, *argv, str(failing_module(tmp_path)), split],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = probe.communicate(timeout=300)
    assert probe.returncode == 0, err[-3000:]
    first, second = out.split(split)
    assert "probe on PYTHONPATH" in first  # a fresh interpreter with the variable
    # The second run, without it: forked (its parent is the server, not the probe process),
    # from a server whose path does not hold the folder.
    assert int((tmp_path / "parent.txt").read_text()) != probe.pid
    assert "No module named 'probe'" in second, second[-2000:]
