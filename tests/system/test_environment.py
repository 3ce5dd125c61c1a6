"""environment.yml works from the copy Snakemake builds rule environments from."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def _pip_lines() -> list[str]:
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(sections) == 1, "environment.yml needs exactly one pip section"
    return sections[0]


def _pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def test_no_path_depends_on_where_the_file_lies() -> None:
    for line in _pip_lines():
        for word in line.split():
            if word.startswith((".", "/")) or word in {"-e", "-c", "-r"}:
                assert word in {"-e", "-c", "-r"}, f"environment.yml: relative path in {line!r}"
            if "/" in word:
                assert word.startswith("${DSPO_ROOT}"), f"environment.yml: {line!r}"


def _resolve(lines: list[str], tmp_path: Path) -> dict[str, dict]:
    """What pip installs (dry run) for requirement lines, from another folder: name -> item."""
    requirements = tmp_path / "copy" / "requirements.txt"
    requirements.parent.mkdir()
    requirements.write_text("\n".join(lines) + "\n")
    report = tmp_path / "report.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--quiet",
            "-r",
            str(requirements),
            "--report",
            str(report),
        ],
        cwd=requirements.parent,
        env={**os.environ, "DSPO_ROOT": str(REPO)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return {
        item["metadata"]["name"].lower().replace("_", "-"): item
        for item in json.loads(report.read_text())["install"]
    }


def test_pip_section_resolves_from_a_copy_with_the_tested_pins(tmp_path: Path) -> None:
    """What conda does with the pip section, from another folder: pip resolves it (dry run)
    to the package of this repository and the versions of constraints.txt."""
    installed = _resolve(_pip_lines(), tmp_path)
    assert "dspo" in installed, "the package itself is not installed"
    assert installed["dspo"]["download_info"]["url"] == REPO.as_uri()
    for name, version in _pins().items():
        if name in installed:
            got = installed[name]["metadata"]["version"].split("+")[0]
            assert got == version, f"{name}: {got} instead of the tested {version}"
    assert {"torch", "snakemake", "diffusers", "datasets"} <= set(installed)


def test_the_makefile_install_has_what_the_presets_need(tmp_path: Path) -> None:
    """`make`'s install (the README's) gives `datasets`, which every hub source of the
    presets reads with, at its tested version."""
    extras = re.search(r'-e "\.\[([a-z,]+)\]"', (REPO / "Makefile").read_text())
    assert extras, 'the Makefile installs the package with extras: -e ".[...]"'
    lines = ["-c ${DSPO_ROOT}/constraints.txt", f"-e ${{DSPO_ROOT}}[{extras.group(1)}]"]
    installed = _resolve(lines, tmp_path)
    assert installed["datasets"]["metadata"]["version"] == _pins()["datasets"]
