"""How the ``dspo`` sub-commands are declared and turned into one argument parser.

A sub-command is a function with the ``@command`` decorator, which names its stage and lists
the options it takes (``arg(...)``, the arguments of ``add_argument``)::

    @command("score", arg("--manifest", required=True, help="..."), OUT, config="score")
    def score(args): ...

``config=STEP`` gives the command ``--config FILE.yaml`` and ``--params JSON``, merged with
its ``setting(...)`` flags and checked by `dspo.config.step` into ``args.params`` before the
function runs. ``dspo --help`` lists the commands by stage, in the workflow's order.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Handler = Callable[[argparse.Namespace], None]

# The stages in workflow order, with the heading `dspo --help` shows for each.
STAGES = {
    "data": "data: the toy world, pair tables, prompt sets",
    "cache": "cache: latents and text embeddings of the pairs",
    "train": "train: fine-tune the base model",
    "sample": "generate / edit: images of every model",
    "score": "score: reward models on the images",
    "report": "tables / report",
    "tools": "tools",
}
# Flags that set one key of the step's settings carry this prefix in their dest.
SETTING = "setting__"


@dataclass(frozen=True)
class Option:
    """The arguments of one ``add_argument`` call."""

    flags: tuple[str, ...]
    kwargs: dict[str, Any]


@dataclass(frozen=True)
class Command:
    name: str
    func: Handler
    stage: str
    options: tuple[Option, ...]
    config: str | None

    @property
    def summary(self) -> str:
        return (self.func.__doc__ or "").strip().split("\n")[0]


COMMANDS: dict[str, Command] = {}


def arg(*flags: str, **kwargs: Any) -> Option:
    return Option(flags, kwargs)


def setting(flag: str, **kwargs: Any) -> Option:
    """A flag that sets the key of the step's settings named like it (``--batch-size``:
    ``batch_size``), on top of ``--config`` and ``--params``."""
    key = flag.removeprefix("--").replace("-", "_")
    kwargs.setdefault("metavar", key.upper())
    return Option((flag,), {**kwargs, "dest": SETTING + key, "default": None})


def command(
    stage: str, *options: Option, config: str | None = None
) -> Callable[[Handler], Handler]:
    """Register the decorated function as the sub-command named like it (``_`` as ``-``)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {list(STAGES)}")

    def register(func: Handler) -> Handler:
        name = func.__name__.strip("_").replace("_", "-")
        COMMANDS[name] = Command(name, func, stage, options, config)
        return func

    return register


def json_mapping(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON mapping, got {text!r}")
    return value


def report(stats: dict[str, Any]) -> None:
    """Print a step's statistics as JSON; the rules send stdout to the step's log."""
    print(json.dumps(stats, indent=2, default=str), flush=True)


def setup_torch(n: int) -> None:
    import torch

    torch.set_num_threads(max(1, n))
    # Subnormal floats are 10-100x slower on x86 CPUs. They appear late in training, in
    # AdamW's second moments of tiny gradients: a DDSPO run slowed from 4 to 1.6 steps/s.
    # Flushing them to zero (no effect on GPUs) changes values below 1e-38 only.
    torch.set_flush_denormal(True)


# Options several commands share.
OUT = arg("--out", required=True, help="output path")
INPUT = arg("--input", required=True, help="input table or folder")
INPUTS = arg("--inputs", nargs="+", required=True, help="the parts to join, in order")
PARAMS = arg(
    "--params", type=json_mapping, required=True, metavar="JSON", help="the step's config as JSON"
)
PART = arg("--part", type=int, default=0, help="which part of the sharded step (from 0)")
BASE = arg("--base", required=True, help="base model: hub id or local diffusers folder")
MODEL = arg("--model", required=True, help="model: hub id, diffusers folder or LoRA folder")
DEVICE = arg("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default cpu)")


def threads(default: int = 1) -> Option:
    return arg("--threads", type=int, default=default, help=f"CPU threads (default {default})")


def _config_options(step: str) -> list[Option]:
    return [
        arg(
            "--config",
            type=Path,
            metavar="FILE.yaml",
            help=f"the {step} settings as a YAML mapping (docs/cli.md)",
        ),
        arg(
            "--params",
            type=json_mapping,
            default={},
            metavar="JSON",
            help="settings as an inline JSON mapping, on top of --config",
        ),
    ]


def _command_list() -> str:
    width = max(map(len, COMMANDS)) + 2
    lines = []
    for stage, heading in STAGES.items():
        names = [c for c in COMMANDS.values() if c.stage == stage]
        if names:
            lines.append(f"{heading}:")
            lines += [f"  {c.name:<{width}}{c.summary}" for c in names]
    return "\n".join(lines)


def build_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dspo",
        description=f"{description}\n\n{_command_list()}",
        epilog="`dspo COMMAND -h` lists the options of one command.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="one of the commands above"
    )
    for cmd in COMMANDS.values():
        # No help= here: the grouped list above replaces argparse's flat one.
        p = sub.add_parser(cmd.name, description=cmd.func.__doc__)
        options = [*(_config_options(cmd.config) if cmd.config else []), *cmd.options]
        for option in options:
            p.add_argument(*option.flags, **option.kwargs)
        p.set_defaults(func=cmd.func, step=cmd.config, subparser=p)
    return parser


def settings_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given as flags (``setting(...)`` options that were used)."""
    return {
        dest.removeprefix(SETTING): value
        for dest, value in vars(args).items()
        if dest.startswith(SETTING) and value is not None
    }
