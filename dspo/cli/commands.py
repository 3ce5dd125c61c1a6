"""The ``dspo`` command: one sub-command per workflow step, and tools.

Each sub-command declares its own options (``dspo COMMAND -h``); a missing or unknown option
is a usage error (exit status 2) that names it. The steps take their input and output paths
as options and the config slice they need as ``--params JSON``, so the Snakemake rules stay
one line and the package never reads the workflow's config itself.

``train``, ``generate``, ``edit``, ``score`` and ``tables`` also read their settings from
``--config FILE.yaml``, for use by hand. The rule: ``--config`` first, ``--params`` on top,
the command's setting flags (``dspo train --steps 10``) on top of both; training fills what
none sets from the ``training`` defaults of config/config.yaml. The result is checked against
config/schema.yaml before any work starts (`dspo.config.step`); docs/cli.md has examples.

Heavy libraries are imported inside the sub-commands so that the light steps start fast.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

# Imported for their commands, which register themselves in this order: within a stage,
# `dspo --help` lists the commands in the order they register.
# isort: off
import dspo.cli.fetch  # noqa: F401
import dspo.cli.generated  # noqa: F401
import dspo.cli.quality  # noqa: F401
import dspo.cli.report  # noqa: F401
import dspo.cli.data  # noqa: F401
import dspo.cli.training  # noqa: F401
import dspo.cli.images  # noqa: F401

# isort: on
from dspo.cli.registry import build_parser, settings_flags
from dspo.core.collector import job_collector


def _step_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The step's settings: --config, then --params, then the setting flags, checked."""
    from dspo.config.step import Source, read_config_file, resolve

    sources = []
    if args.config:
        sources.append(Source(f"--config {args.config}", read_config_file(args.config)))
    if args.params:
        sources.append(Source("--params", args.params))
    flags = settings_flags(args)
    if flags:
        sources.append(Source("the flags", flags))
    return resolve(args.step, sources)


def main(argv: list[str] | None = None) -> None:
    description = "Preference fine-tuning of diffusion models, one command per workflow step."
    args, unknown = build_parser(description).parse_known_args(argv)
    if unknown:
        # Said by the sub-command's parser, so that the message shows its usage.
        args.subparser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.step:
        from dspo.config.step import StepConfigError

        try:
            args.params = _step_settings(args)
        except StepConfigError as err:
            # A usage error like a bad option: exit status 2, before any work starts.
            args.subparser.error(str(err))
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as err:
        # Bad input is the user's to fix: say what is wrong without a traceback.
        sys.exit(f"dspo {args.command}: error: {err}")
    except OSError as err:
        # So is a full disk (dspo.core.files names the path and the space needed).
        from dspo.core.files import DiskFull

        if not isinstance(err, DiskFull):
            raise
        sys.exit(f"dspo {args.command}: error: {err}")
    except RuntimeError as err:
        # A training job stopped by a signal has saved a checkpoint: exit non-zero, so the
        # workflow's retry resumes it, with no traceback.
        from dspo.training.guards import Preempted

        if not isinstance(err, Preempted):
            raise
        sys.exit(f"dspo {args.command}: stopped: {err}")


def console() -> None:
    """The ``dspo`` console script and ``python -m dspo.cli.commands``: :func:`main` in a
    process of its own, with the collector set for a job (`dspo.core.collector`)."""
    with job_collector():
        main()


if __name__ == "__main__":
    console()
