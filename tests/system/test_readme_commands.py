"""The README's preset and cluster commands, run as written.

Every command line of the shell blocks in the sections "Presets" and "Running on a cluster"
runs in a copy of the repository. `export` lines set the environment of the lines after
them. Every `snakemake` line runs as a dry run (`-n` added): the presets need GPUs and the
hub, the slurm profile a cluster, and the smoke preset's line is the shared smoke run's command
(tests/conftest.py), which it plans nothing on top of; the `dspo` lines run for real. No file
is added to the copy: every input of the sd15 preset is on the hub.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.workflow_run import REPO, snakemake

SECTIONS = ("## Presets", "## Running on a cluster")


def section_lines(readme: str, heading: str) -> list[str]:
    """The command lines of the shell blocks of one section, continuations joined."""
    body = readme.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", body, flags=re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            command = line.split("  #", 1)[0].strip()
            if command:
                lines.append(command)
    return lines


COMMANDS = [line for h in SECTIONS for line in section_lines((REPO / "README.md").read_text(), h)]


def test_the_sections_have_commands() -> None:
    assert sum(c.startswith("snakemake") for c in COMMANDS) >= 4
    assert any("sdxl.yaml" in c and "sd15.yaml" in c for c in COMMANDS)


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the repository's files (tracked and new, not ignored), as a clone has them."""
    root = tmp_path_factory.mktemp("clone")
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout.splitlines()
    for name in files:
        src = REPO / name
        if src.is_file() and not src.is_symlink():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, root / name)
    (root / "slurm").symlink_to("workflow/profiles/slurm")
    return root


def test_readme_commands_run_as_written(checkout: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    # The copy's own dspo package, as in a clone.
    env["PYTHONPATH"] = os.pathsep.join([str(checkout), env.get("PYTHONPATH", "")])
    ran = 0
    for command in COMMANDS:
        words = shlex.split(command)
        if words[0] == "export":
            env.update(dict(w.split("=", 1) for w in words[1:]))
            continue
        assert words[0] in ("snakemake", "dspo"), command
        dry = words[0] == "snakemake" and "-n" not in words
        args = [*words, "-n"] if dry else words
        result = subprocess.run(
            args, cwd=checkout, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}"
        assert "FileNotFoundError" not in result.stdout
        ran += 1
    assert ran == sum(c.startswith(("snakemake", "dspo")) for c in COMMANDS)


def test_the_smoke_line_plans_nothing_after_the_shared_smoke_run(smoke_run: Path) -> None:
    """The README's smoke line is the shared smoke run's command: on its results, a dry run of
    the line as written (its config files relative to the repository) has nothing to do."""
    (line,) = [c for c in COMMANDS if "smoke.yaml" in c]
    words = shlex.split(line)
    assert words[:2] == ["snakemake", "--cores"] and "all" in words
    args = [str(REPO / w) if w.endswith(".yaml") else w for w in words[1:]]
    result = snakemake(*args, "-n", cwd=smoke_run)
    assert "Nothing to be done" in result.stdout, result.stdout[-3000:]
