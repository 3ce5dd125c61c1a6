"""The ``dspo`` sub-commands of the train stage: a method's reference outputs, training,
and the models the workflow samples besides (released ones, and the steps a run keeps)."""

from __future__ import annotations

import argparse
from pathlib import Path

from dspo.cli.registry import (
    BASE,
    DEVICE,
    INPUTS,
    MODEL,
    OUT,
    PARAMS,
    PART,
    arg,
    command,
    report,
    setting,
    setup_torch,
    threads,
)


@command(
    "train",
    PART,
    PARAMS,
    arg("--cache", required=True, help="latent cache folder (`dspo cache-gather`)"),
    BASE,
    OUT,
    threads(),
    DEVICE,
)
def reference_part(args: argparse.Namespace) -> None:
    """Compute part --part of reference.shards of a method's reference outputs (no autograd)."""
    setup_torch(args.threads)
    from dspo.training.reference import compute_part

    p = args.params
    report(
        compute_part(
            p,
            Path(args.cache),
            args.base,
            Path(args.out),
            part=args.part,
            parts=p.get("shards", 1),
            batch_factor=p.get("batch_factor", 1),
            device=args.device,
        )
    )


@command("train", INPUTS, OUT)
def reference_gather(args: argparse.Namespace) -> None:
    """Join a method's reference parts into one folder; report its bytes per pair-visit."""
    from dspo.training.reference import gather

    report(gather([Path(p) for p in args.inputs], Path(args.out)))


@command(
    "train",
    arg("--cache", required=True, help="latent cache folder (`dspo cache-gather`)"),
    BASE,
    arg("--out", required=True, help="folder the trained model is saved to"),
    arg("--run-dir", help="folder for checkpoints and metrics (default: OUT.run)"),
    arg("--reference", help="the method's precomputed reference (`dspo reference-gather`)"),
    arg(
        "--validation-prompts",
        help="table of the prompt set training.validation.from_prompt_set names (`dspo prompts`)",
    ),
    setting("--objective", help="the loss (docs/objectives.md)"),
    setting("--name", help="name of the method in outputs (default: the objective)"),
    setting("--steps", type=int, help="optimiser steps"),
    setting("--lr", type=float, help="learning rate"),
    setting("--seed", type=int, help="seed of data order, noise and timesteps"),
    threads(),
    DEVICE,
    config="train",
)
def train(args: argparse.Namespace) -> None:
    """Fine-tune the base model with one method."""
    setup_torch(args.threads)
    from dspo.training.train import train as run_training

    out = Path(args.out)
    report(
        run_training(
            args.params,
            cache_dir=Path(args.cache),
            base_model=args.base,
            out_dir=out,
            run_dir=Path(args.run_dir) if args.run_dir else out.with_name(out.name + ".run"),
            reference_dir=Path(args.reference) if args.reference else None,
            validation_table=Path(args.validation_prompts) if args.validation_prompts else None,
        )
    )


@command(
    "train",
    MODEL,
    BASE,
    arg("--out", required=True, help="model folder to write (results/models/<method>)"),
)
def import_model(args: argparse.Namespace) -> None:
    """Import a released model (pipeline, denoiser folder or LoRA weights) without training."""
    from dspo.hub.released import import_model as run_import

    report(run_import(args.model, args.base, Path(args.out)))


@command(
    "train",
    arg("--run-dir", required=True, help="the training run's folder (results/train/<model>)"),
    # Not --step: the parsed arguments' `step` names the command's settings (dspo.config.step).
    arg("--at-step", type=int, required=True, help="the kept step (training.evaluate_steps)"),
    arg("--out", required=True, help="model folder to write (results/models/<model>@<step>)"),
)
def step_model(args: argparse.Namespace) -> None:
    """Put a run's kept model of one step where the workflow samples it (hard links)."""
    from dspo.training.step_models import link_step

    report({"out": str(link_step(Path(args.run_dir), args.at_step, Path(args.out)))})
