"""No shell from config: hostile strings in every config value and prompt that reaches a
rule's command line must arrive as data, never run.

Every string value the rules pass on (paths of the base model and of every source, labels,
titles, the preset's name) gets a hostile string; the local paths are created under those
names so the config checks accept them. The dry run prints each job's command line; each is
then run by bash with stand-ins for `dspo` and `accelerate` that record their arguments: no
marker file may appear, and the hostile paths must reach `dspo` intact. One set of data
steps runs for real, with the real `dspo`, on hostile file names and a hostile prompt.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from dspo.data.sources import REQUIRED_COLUMNS as PAIR_COLUMNS
from tests.workflow_run import SMOKE, snakemake

MARK = "pwned"
# Each would run `touch pwned` if it reached a shell unquoted: `#` ends the line's words.
HOSTILE = {
    "single quote": f"q'; touch {MARK}; echo '",
    "double quote": f'd"; touch {MARK}; echo "',
    "command substitution": f"c$(touch {MARK})",
    "backticks": f"b`touch {MARK}`",
    "semicolon": f"s; touch {MARK} #",
    "newline": f"n\ntouch {MARK}\n",
    "ampersand and pipe": f"a & touch {MARK} | cat #",
}
# The recorders are shell scripts (a Python start for each of the DAG's 60-odd commands
# cost more than the rest of the test): each call appends its argument count and its
# arguments, each ended by a NUL byte, which no argument can hold (`recorded_calls`).
RECORDER = """#!/bin/bash
printf '%s\\0' "$#" "$@" >> "$ARGV_LOG"
"""
# The train rule starts `python -m dspo.training.launch ... -- ARGS` (dspo/training/launch.py),
# which runs `dspo ARGS` once per process: the stand-in records ARGS as `dspo` would receive
# them; any other `python` is the real one.
LAUNCH_RECORDER = """#!/bin/bash
if [ "$1" != "-m" ] || [ "$2" != "dspo.training.launch" ]; then exec python3 "$@"; fi
while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do shift; done
shift
printf '%s\\0' "$#" "$@" >> "$ARGV_LOG"
"""


def recorded_calls(log: Path) -> list[list[str]]:
    """The recorders' calls, each as its arguments."""
    fields = log.read_bytes().split(b"\0")[:-1]
    calls = []
    while fields:
        count, fields = int(fields[0]), fields[1:]
        calls.append([f.decode() for f in fields[:count]])
        fields = fields[count:]
    return calls


def hostile_config(workdir: Path, value: str, data: Path | None = None) -> Path:
    """A config whose every free string is ``value``; local paths exist under such names."""
    pairs, prompts, edits, model = (
        f"pairs-{value}",
        f"prompts-{value}.txt",
        f"edits-{value}.parquet",
        f"model-{value}",
    )
    (workdir / pairs).mkdir(parents=True, exist_ok=True)
    (workdir / model).mkdir(parents=True, exist_ok=True)
    # A prompt reaches the prompt_set job as data: it is hostile too.
    (workdir / prompts).write_text(f"a red circle\n{value.replace(chr(10), ' ')}\n")
    if data is not None:
        for parquet in (data / "pairs").glob("*.parquet"):
            shutil.copy(parquet, workdir / pairs / parquet.name)
        shutil.copy(data / "editing.parquet", workdir / edits)
    else:
        # The plan reads the first pair file's columns (dspo.data.sources.layout_problems).
        columns = {c: [b""] if c.startswith("jpg") else ["x"] for c in PAIR_COLUMNS}
        pd.DataFrame(columns).to_parquet(workdir / pairs / "train-0.parquet")
        (workdir / edits).write_bytes(b"")
    override = {
        "name": value,
        "base_model": {"path": model, "build": None},
        "pairs": {"source": {"kind": "parquet", "path": pairs}},
        "evaluation": {
            "prompt_sets": {
                "pickv2": {"label": value, "source": {"kind": "file", "path": prompts}}
            },
            "editing": {"label": value, "source": {"kind": "file", "path": edits}},
            "rewards": {"oracle": {"label": value}},
            "labels": {"dspo": value},
            "tables": {"table1": {"title": value}},
        },
        "methods": {"dspo_lora": {"lora": {"target_modules": [value]}}},
    }
    path = workdir / "hostile.yaml"
    path.write_text(yaml.safe_dump(override))
    return path


def shell_commands(dry_run: str) -> list[str]:
    """The command lines of `snakemake -n -p` (a quoted newline stays inside its command)."""
    blocks = dry_run.split("Shell command: ")[1:]
    commands = [re.split(r"\n\n|\nWould |\nJob stats:|\nThis was a dry-run", b)[0] for b in blocks]
    return [c for c in commands if c != "None"]  # rule all has no command


def recorders(folder: Path) -> dict[str, str]:
    """A PATH whose `dspo`, `accelerate` and the training launcher only record their
    arguments."""
    folder.mkdir()
    for name, script in (("dspo", RECORDER), ("accelerate", RECORDER), ("python", LAUNCH_RECORDER)):
        (folder / name).write_text(script)
        (folder / name).chmod((folder / name).stat().st_mode | stat.S_IEXEC)
    return {**os.environ, "PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"}


@pytest.mark.parametrize("value", HOSTILE.values(), ids=list(HOSTILE))
def test_hostile_config_values_never_run(value: str, tmp_path: Path) -> None:
    config = hostile_config(tmp_path, value)
    result = snakemake("-n", "-p", "all", "--configfile", str(SMOKE), str(config), cwd=tmp_path)
    commands = shell_commands(result.stdout)
    assert len(commands) > 20  # every job of the DAG
    env = {**recorders(tmp_path / "bin"), "ARGV_LOG": str(tmp_path / "argv.log")}
    for command in commands:
        for log in re.findall(r"> '?([^' ]+?)'? 2>&1", command):
            (tmp_path / log).parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, check=False)
        assert not list(tmp_path.glob(f"{MARK}*")), f"injected command ran from:\n{command}"
    calls = recorded_calls(tmp_path / "argv.log")
    assert len(calls) == len(commands)
    # The hostile paths arrive as one argument each, exactly as written in the config.
    args = [dict(zip(call[1::2], call[2::2], strict=False)) for call in calls]
    assert {a.get("--input") for a in args} >= {f"pairs-{value}", f"prompts-{value}.txt"}
    assert f"model-{value}" in {a.get("--base") for a in args}


def test_hostile_device_is_refused_before_any_job(tmp_path: Path) -> None:
    config = tmp_path / "device.yaml"
    for kind in ("semicolon", "command substitution", "newline"):
        value = HOSTILE[kind]
        config.write_text(yaml.safe_dump({"resources": {"device": f"cpu{value}"}}))
        result = snakemake(
            "--cores",
            "1",
            "all",
            "--configfile",
            str(SMOKE),
            str(config),
            cwd=tmp_path,
            check=False,
        )
        assert result.returncode != 0 and "resources.device: " in result.stdout
        assert not (tmp_path / MARK).exists() and not (tmp_path / "results").exists()


@pytest.fixture(scope="module")
def toy_data(smoke_run: Path) -> Path:
    """The smoke preset's toy world (pairs, prompts, editing set): the shared smoke run's
    (tests/conftest.py), read only."""
    return smoke_run / "results" / "data" / "toy"


def test_data_steps_run_for_real_on_hostile_names(toy_data: Path, tmp_path: Path) -> None:
    value = HOSTILE["single quote"] + HOSTILE["command substitution"]
    config = hostile_config(tmp_path, value, data=toy_data)
    targets = ["results/data/pairs.parquet", "results/data/prompts/pickv2.parquet"]
    targets.append("results/data/editing.parquet")
    snakemake("--cores", "1", *targets, "--configfile", str(SMOKE), str(config), cwd=tmp_path)
    assert not (tmp_path / MARK).exists()
    prompts = pd.read_parquet(tmp_path / targets[1])["prompt"].tolist()
    assert prompts == ["a red circle", value.replace("\n", " ")]
    assert len(pd.read_parquet(tmp_path / targets[0])) > 0
    assert len(pd.read_parquet(tmp_path / targets[2])) == len(
        pd.read_parquet(toy_data / "editing.parquet")
    )
