"""The `dspo` command: per-command options, settings from --config/--params/flags, by hand."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dspo.cli.commands import main
from dspo.cli.registry import COMMANDS, STAGES, build_parser
from dspo.config.step import Source, StepConfigError, resolve

REPO = Path(__file__).resolve().parents[2]
DEFAULTS = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def dspo(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """The installed command line as a user runs it (PYTHONPATH as the test run has it)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "dspo.cli.commands", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The message of a usage error, which must exit with status 2."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_help_lists_the_commands_by_stage_in_workflow_order() -> None:
    text = build_parser("dspo").format_help()
    listed = re.findall(r"^  ([a-z-]+)  +\S", text, flags=re.MULTILINE)
    assert sorted(listed) == sorted(COMMANDS)
    order = [listed.index(name) for name in ("toy-world", "cache-part", "train", "generate")]
    order += [listed.index(name) for name in ("score", "tables", "summary", "bench")]
    assert order == sorted(order)
    headings = [text.index(f"\n{heading}:\n") for heading in STAGES.values()]
    assert headings == sorted(headings)
    assert "Fine-tune the base model with one method." in text


def test_each_command_shows_only_its_own_options() -> None:
    parser = build_parser("dspo")
    subparsers = parser._subparsers._group_actions[0].choices  # noqa: SLF001
    options = {
        name: {flag for action in p._actions for flag in action.option_strings}  # noqa: SLF001
        for name, p in subparsers.items()
    }
    assert options["train"] == {
        "-h", "--help", "--config", "--params", "--cache", "--base", "--out", "--run-dir",
        "--reference", "--validation-prompts", "--objective", "--name", "--steps", "--lr",
        "--seed", "--threads", "--device",
    }  # fmt: skip
    assert options["pairs-gather"] == {"-h", "--help", "--inputs", "--out", "--report"}
    assert "--world" in options["pretrain-base"] and "--world" not in options["toy-world"]
    for name, p in subparsers.items():
        for action in p._actions:  # noqa: SLF001
            assert action.help, f"dspo {name} {action.option_strings}: no help text"


def test_train_help_is_train_alone() -> None:
    done = dspo("train", "-h")
    assert done.returncode == 0
    assert "--cache" in done.stdout and "--config FILE.yaml" in done.stdout
    for other in ("--inputs", "--part", "--world", "--plots", "--metrics", "--prompts"):
        assert other not in done.stdout


def test_a_missing_option_is_named_without_a_traceback(tmp_path: Path) -> None:
    done = dspo("train", "--out", str(tmp_path / "model"))
    assert done.returncode == 2
    assert "the following arguments are required: --cache, --base" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_unknown_option_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    err = usage_error(["pairs-gather", "--inputs", "a", "--out", "b", "--part", "3"], capsys)
    assert "dspo pairs-gather: error: unrecognized arguments: --part 3" in err


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("steps: 3\n", "objective: missing (set it in --config"),
        ("objective: dspo\nstepz: 3\n", "stepz (from --config"),
        ("objective: dspo\nparams: {lamm: 1}\n", "params.lamm (from --config"),
        ("objective: dspo\nlr: 1e-3\n", "write a number as 1.0e-3"),
        ("objective: nope\n", "objective (from --config"),
    ],
)
def test_bad_settings_name_the_key_and_the_file(
    text: str, named: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "my.yaml"
    config.write_text(text)
    argv = ["train", "--config", str(config), "--cache", "c", "--base", "b", "--out", "o"]
    err = usage_error(argv, capsys)
    assert named in err and str(config) in err
    assert not Path("o").exists()


def test_optional_training_keys_may_be_absent_or_set() -> None:
    """channels_last and compile are optional in the schema: a method's config from before
    they existed still trains, and a config that sets them is checked like any other."""
    assert "compile" not in resolve("train", [Source("--params", {"objective": "sft"})])
    switches = {"objective": "sft", "channels_last": True, "compile": {"policy": True}}
    assert resolve("train", [Source("--params", switches)])["compile"] == {"policy": True}
    with pytest.raises(StepConfigError, match="compile"):
        resolve("train", [Source("--params", {"objective": "sft", "compile": {"polcy": True}})])


def test_settings_merge_config_then_params_then_flags(tmp_path: Path) -> None:
    sources = [
        Source("--config a.yaml", {"objective": "sft", "steps": 5, "seed": 1}),
        Source("--params", {"steps": 6, "lr": 0.5}),
        Source("the flags", {"steps": 7}),
    ]
    settings = resolve("train", sources)
    assert (settings["steps"], settings["lr"], settings["seed"]) == (7, 0.5, 1)
    # What none of them sets comes from config/config.yaml's training section.
    assert settings["adam_eps"] == DEFAULTS["training"]["adam_eps"]
    assert set(settings) == {*DEFAULTS["training"], "objective", "params"}


def test_sampling_needs_every_key_but_the_dtype() -> None:
    keys = {k: DEFAULTS["evaluation"][k] for k in ("seeds", "guidance", "steps", "scheduler")}
    with pytest.raises(StepConfigError, match="resolution: missing") as err:
        resolve("generate", [Source("--config s.yaml", keys)])
    assert "batch_size: missing" in str(err.value)
    full = {**keys, "resolution": 16, "batch_size": 8}
    assert resolve("generate", [Source("--config s.yaml", full)])["dtype"] == "float32"


def workflow_commands(workdir: Path) -> list[list[str]]:
    """Every `dspo` command line of a dry run of the default config, as argument lists."""
    done = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir)]
        + ["-n", "-p"],
        env={
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        },
        capture_output=True,
        text=True,
        check=True,
    )
    commands = []
    for line in re.findall(r"^Shell command: (.*)$", done.stdout + done.stderr, re.MULTILINE):
        words = shlex.split(line)
        # `dspo ARGS`, `python -m dspo.cli.commands ARGS`, or the train rule's
        # `python -m dspo.training.launch ... -- ARGS`, which runs `dspo ARGS` per process.
        starts = [i + 1 for i, word in enumerate(words) if word in ("dspo", "dspo.cli.commands")]
        if "dspo.training.launch" in words:
            starts = [words.index("--") + 1]
        if starts:  # not every rule runs dspo
            commands.append(words[starts[0] : words.index(">")])
    return commands


def test_every_workflow_command_parses_and_its_settings_validate(tmp_path: Path) -> None:
    """The rules' command lines against the parser, and their --params against the schema."""
    commands = workflow_commands(tmp_path)
    assert {c[0] for c in commands} >= {"toy-world", "train", "generate", "score", "tables"}
    ran = []
    for argv in commands:
        args, unknown = build_parser("dspo").parse_known_args(argv)
        assert not unknown, f"dspo {' '.join(argv)}: unknown {unknown}"
        if args.step:
            ran.append(resolve(args.step, [Source("--params", args.params)]))
    assert {s.get("name") for s in ran} >= {"dspo", "dspo_lora", "ddspo"}


def test_a_full_disk_is_named_without_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    """A step that runs out of space exits with dspo.core.files' message, not a traceback."""
    import errno

    import dspo.data.pairs
    from dspo.core.files import DiskFull

    def full(inputs, out, report=None):
        raise DiskFull(errno.ENOSPC, f"No space left on device: writing {out} failed")

    monkeypatch.setattr(dspo.data.pairs, "gather_pairs", full)
    with pytest.raises(SystemExit) as exit_info:
        main(["pairs-gather", "--inputs", "a", "--out", "results/pairs"])
    message = str(exit_info.value.code)
    assert message.startswith("dspo pairs-gather: error: No space left on device")
    assert "writing results/pairs failed" in message
