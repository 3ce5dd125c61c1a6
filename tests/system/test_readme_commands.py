"""The README's preset and cluster commands, run as written.

Every command line of the shell blocks in the sections "Presets" and "Running on a cluster"
runs in a copy of the repository. `export` lines set the environment of the lines after
them. A command that needs GPUs and the hub (the sd15/sdxl presets) or a cluster (the slurm
profile) runs as a dry run (`-n` added); the smoke preset and the `dspo` lines run for real.
No file is added to the copy: every input of the sd15 preset is on the hub.
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

REPO = Path(__file__).resolve().parents[2]
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
        dry = words[0] == "snakemake" and "smoke.yaml" not in command and "-n" not in words
        args = [*words, "-n"] if dry else words
        result = subprocess.run(
            args, cwd=checkout, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}"
        assert "FileNotFoundError" not in result.stdout
        ran += 1
    assert (checkout / "results/tables/win_rates.md").exists()  # the smoke line ran for real
    assert ran == sum(c.startswith(("snakemake", "dspo")) for c in COMMANDS)
