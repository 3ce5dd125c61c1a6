"""Snakemake for tests, forked from a process that has imported it already.

A gate runs Snakemake about seventy times, mostly dry runs of 1.5 s of CPU, and about 0.8 s of
each is importing Snakemake (with pandas, SQLAlchemy and its plugins) before it reads the
Snakefile. Here a `multiprocessing` fork server imports Snakemake once per pytest process and
forks a child for each run; the child takes the caller's working directory and environment,
sends its standard output and error to one file, and runs Snakemake's own command line
(``snakemake.cli.main``), so the run is the one ``python -m snakemake`` makes. The child
starts with nothing of the Snakefile's imported: the ``dspo`` package and the libraries it
reads its settings with are imported by each run, as in a fresh process.

What a fresh interpreter reads only at start-up, the ``PYTHON*`` variables (a test that puts
a failing ``torch`` first on ``PYTHONPATH``, say), cannot reach a forked child. The server
starts with this process's own start-up variables, even inside a test that has set one, and
a run whose environment differs there from them starts a fresh ``python -m snakemake``.

Kept free of the tests' heavy imports: the fork server imports this module, and only this
module and Snakemake.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

PRELOAD = ["snakemake.cli", __name__]
_context: multiprocessing.context.ForkServerContext | None = None


def _startup_env(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith("PYTHON")}


# This process's own start-up variables, read when the tests are collected, before any test
# has set one (the fork server starts at the first run, perhaps inside such a test).
STARTUP = _startup_env(os.environ)


def _noop() -> None:
    pass


def _server() -> multiprocessing.context.ForkServerContext:
    """The fork server, started on first use with this process's own start-up variables."""
    global _context
    if _context is None:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)
        saved = dict(os.environ)
        try:
            for key in _startup_env(saved):
                del os.environ[key]
            os.environ.update(STARTUP)
            first = context.Process(target=_noop)  # starts the server
            first.start()
            first.join()
        finally:
            os.environ.clear()
            os.environ.update(saved)
        _context = context
    return _context


def _child(argv: list[str], env: dict[str, str], cwd: str, out: str) -> None:
    """The forked run: the caller's directory, environment and output, then Snakemake's own
    command line; its exit status is the child's (multiprocessing passes SystemExit on)."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    from snakemake.cli import main

    sys.argv = [sys.executable, "-m", "snakemake", *argv]
    main(argv)


def run(argv: list[str], env: Mapping[str, str]) -> subprocess.CompletedProcess:
    """``python -m snakemake *argv`` with ``env``, output and error together, as
    ``subprocess.run(..., stdout=PIPE, stderr=STDOUT, text=True)`` returns it."""
    command = [sys.executable, "-m", "snakemake", *argv]
    if _startup_env(env) != STARTUP:
        return subprocess.run(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=dict(env),
            check=False,
        )
    with tempfile.NamedTemporaryFile(prefix="snakemake-", suffix=".out") as out:
        process = _server().Process(target=_child, args=(argv, dict(env), os.getcwd(), out.name))
        process.start()
        process.join()
        output = Path(out.name).read_text(encoding="utf-8", errors="replace")
    assert process.exitcode is not None
    # A child killed by a signal reports minus its number, as subprocess does.
    return subprocess.CompletedProcess(command, process.exitcode, output)
