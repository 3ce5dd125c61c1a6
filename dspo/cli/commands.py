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
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Imported for their commands (the downloads, the report stage and the tools), which
# register themselves.
import dspo.cli.fetch  # noqa: F401
import dspo.cli.generated  # noqa: F401
import dspo.cli.quality  # noqa: F401
import dspo.cli.report  # noqa: F401
from dspo.cli.registry import (
    BASE,
    DEVICE,
    INPUT,
    INPUTS,
    MODEL,
    OUT,
    PARAMS,
    PART,
    arg,
    build_parser,
    command,
    json_mapping,
    report,
    setting,
    settings_flags,
    setup_torch,
    threads,
)


@command(
    "data", arg("--params", type=json_mapping, default={}, help="toy world config as JSON"), OUT
)
def toy_world(args: argparse.Namespace) -> None:
    """Write the toy world's pairs, prompt sets and a preview of sample pairs."""
    from dspo import toy

    out = Path(args.out)
    stats = toy.build_world(toy.ToyWorldConfig.from_dict(args.params), out)
    toy.preview_pairs(next((out / "pairs").glob("*.parquet")), out / "preview.png")
    report(stats)


@command(
    "data",
    arg("--world", type=json_mapping, default={}, help="toy world config as JSON"),
    arg("--params", type=json_mapping, required=True, help="architecture and pretrain as JSON"),
    OUT,
    arg("--metrics", required=True, help="pre-training metrics file (JSONL)"),
    threads(),
)
def pretrain_base(args: argparse.Namespace) -> None:
    """Pre-train the toy world's base model (a tiny SD-shaped pipeline)."""
    setup_torch(args.threads)
    from dspo.toy.pretrain import pretrain_toy_base

    report(pretrain_toy_base(args.world, args.params, Path(args.out), Path(args.metrics)))


@command(
    "data",
    PART,
    PARAMS,
    arg("--input", required=True, help="pair source: path or id"),
    arg("--exclude", nargs="*", default=[], help="prompt tables whose prompts are dropped"),
    OUT,
)
def pairs_part(args: argparse.Namespace) -> None:
    """Screen part --part of pairs.shards of the pair source (winner first, ties dropped)."""
    from dspo.data.dedup import evaluation_keys
    from dspo.data.pairs import PairSettings, normalise_part

    source = dict(args.params["source"])
    # The toy world's pairs, and a generated source's labelled parts, are local parquet.
    if source["kind"] in ("toy", "generated"):
        source = {"kind": "parquet", "path": args.input}
    settings = PairSettings.from_params(args.params, source)
    exclude = evaluation_keys(Path(p) for p in args.exclude)
    parts = args.params.get("shards", 1)
    record = normalise_part(settings, args.part, parts, Path(args.out), exclude)
    visits = {"unreadable_visited": len(record["unreadable"])}
    report({"units": record["blocks"], **record["counts"], **visits})


REPORT = arg("--report", help="JSON file for the counts (written once the table is in place)")


@command("data", INPUTS, OUT, REPORT)
def pairs_gather(args: argparse.Namespace) -> None:
    """Join the pairs parts into the canonical pair table; report what was dropped and why."""
    from dspo.data.pairs import gather_pairs

    paths = [Path(p) for p in args.inputs]
    report(gather_pairs(paths, Path(args.out), args.report and Path(args.report)))


@command("data", PART, PARAMS, INPUT, OUT)
def nodup_part(args: argparse.Namespace) -> None:
    """Copy one pair per prompt (seeded) of part --part of pairs.shards of a pair table."""
    from dspo.data.nodup import nodup_part as copy_part

    parts = args.params.get("shards", 1)
    record = copy_part(Path(args.input), args.part, parts, args.params["seed"], Path(args.out))
    report({"row_groups": record["blocks"], "kept": record["kept"]})


@command("data", INPUTS, OUT, REPORT)
def nodup_gather(args: argparse.Namespace) -> None:
    """Join the nodup parts into the pair table of the nodup ablation."""
    from dspo.data.nodup import gather_nodup

    paths = [Path(p) for p in args.inputs]
    report(gather_nodup(paths, Path(args.out), args.report and Path(args.report)))


DEGRADED = arg(
    "--degraded", help="the degraded prompts' table (dspo ddspo-degrade), for degrader kind llm"
)


@command("data", PART, PARAMS, INPUT, BASE, OUT, DEGRADED, threads(), DEVICE)
def ddspo_part(args: argparse.Namespace) -> None:
    """Generate part --part of ddspo.shards of DDSPO's pairs (reference model, degraded prompts)."""
    setup_torch(args.threads)
    from dspo.data.ddspo import make_ddspo_part
    from dspo.data.degraded_prompts import read_degraded
    from dspo.data.pair_table import read_pair_texts

    captions = read_pair_texts(Path(args.input))["caption"].tolist()
    report(
        make_ddspo_part(
            captions,
            args.base,
            args.params,
            Path(args.out),
            part=args.part,
            parts=args.params.get("shards", 1),
            device=args.device,
            degraded=args.degraded and read_degraded(Path(args.degraded)),
        )
    )


@command(
    "data",
    PARAMS,
    INPUT,
    OUT,
    arg("--cache", required=True, help="folder of the cached answers (kept across runs)"),
    arg("--report", required=True, help="JSON file of the counts (accepted, fallback, cached)"),
    threads(),
    DEVICE,
)
def ddspo_degrade(args: argparse.Namespace) -> None:
    """Degrade DDSPO's prompts with the LLM of ddspo.degrader (kind llm), resumably."""
    setup_torch(args.threads)
    from dspo.data.degraded_prompts import degrade_with_llm
    from dspo.data.pair_table import read_pair_texts

    captions = read_pair_texts(Path(args.input))["caption"].tolist()
    paths = {"cache": Path(args.cache), "out": Path(args.out), "report": Path(args.report)}
    report(degrade_with_llm(captions, args.params, device=args.device, **paths))


@command("data", INPUTS, OUT)
def ddspo_gather(args: argparse.Namespace) -> None:
    """Join the DDSPO parts into the pair table of the ddspo method."""
    from dspo.data.ddspo import gather_ddspo

    report(gather_ddspo([Path(p) for p in args.inputs], Path(args.out)))


@command(
    "data",
    arg("--name", required=True, help="name of the prompt set"),
    PARAMS,
    arg("--input", help="the toy world's prompt table (toy sources)"),
    OUT,
)
def prompts(args: argparse.Namespace) -> None:
    """Write one prompt set as a table (prompt_set, prompt_id, prompt)."""
    from dspo.data.prompts import load_prompt_set

    table = load_prompt_set(args.name, args.params, toy_prompts=args.input)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(args.out, index=False)
    report({"prompt_set": args.name, "prompts": len(table)})


@command("data", PARAMS, arg("--input", help="editing source: path or id"), OUT)
def editing_set(args: argparse.Namespace) -> None:
    """Write the editing set as a table (prompt_set, prompt_id, prompt, image)."""
    from dspo.data.prompts import load_editing_set

    table = load_editing_set(args.params, toy_editing=args.input)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(args.out, index=False)
    report({"prompt_set": "editing", "images": len(table)})


@command("cache", PART, PARAMS, INPUT, BASE, OUT, threads(), DEVICE)
def cache_part(args: argparse.Namespace) -> None:
    """Encode part --part of cache.shards of a pair table into latents and text embeddings."""
    setup_torch(args.threads)
    from dspo.data.cache import CacheSettings, encode_part
    from dspo.data.pair_table import read_pair_rows, read_pair_texts

    report(
        encode_part(
            read_pair_texts(args.input),
            lambda start, stop: read_pair_rows(args.input, start, stop),
            args.base,
            Path(args.out),
            CacheSettings.from_params(args.params),
            part=args.part,
            parts=args.params.get("shards", 1),
            device=args.device,
        )
    )


@command("cache", INPUTS, OUT)
def cache_gather(args: argparse.Namespace) -> None:
    """Join the cache parts into one cache folder; report its bytes per pair."""
    from dspo.data.cache import gather_cache

    report(gather_cache([Path(p) for p in args.inputs], Path(args.out)))


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


SAMPLING_OPTIONS = (
    MODEL,
    BASE,
    setting("--seeds", type=int, nargs="+", help="seeds per prompt"),
    setting("--guidance", type=float, nargs="+", help="guidance scales"),
    setting("--steps", type=int, help="sampling steps"),
    setting("--batch-size", type=int, help="images per sampling batch"),
    threads(),
    DEVICE,
)


@command(
    "sample",
    arg("--prompts", required=True, nargs="+", help="prompt tables (`dspo prompts`)"),
    arg("--out", required=True, nargs="+", help="one manifest per prompt table, in their order"),
    arg("--editing-set", help="editing table (`dspo editing-set`) to edit too"),
    arg("--editing-out", help="the edits' manifest (with --editing-set)"),
    *SAMPLING_OPTIONS,
    setting("--strength", type=float, help="share of the schedule an edit's source is noised to"),
    config="generate",
)
def generate(args: argparse.Namespace) -> None:
    """Sample a model on prompt sets, and edit the editing set with it, at every configured
    seed and guidance scale.

    The prompt sets and the edits share one job, so the model and libraries load once per
    model (on the toy world, loading took longer than sampling a set).
    """
    from dspo.generation.edit import edit as run_editing
    from dspo.generation.sample import generate as run_generation

    _same_count("--prompts", args.prompts, "--out", args.out)
    jobs = [
        (table, out, run_generation, {}) for table, out in zip(args.prompts, args.out, strict=True)
    ]
    if (args.editing_set is None) != (args.editing_out is None):
        raise SystemExit("error: --editing-set and --editing-out go together")
    if args.editing_set is not None:
        if "strength" not in args.params:
            raise SystemExit("error: editing needs the strength setting (--strength or params)")
        strength = {"strength": args.params["strength"]}
        jobs.append((args.editing_set, args.editing_out, run_editing, strength))
    _make_images(args, jobs)


def _make_images(
    args: argparse.Namespace, jobs: list[tuple[str, str, Callable[..., Any], dict[str, Any]]]
) -> None:
    """Load the model, make every image of each (input table, manifest, maker, its extra
    settings) and write the manifests.

    Images whose recorded key (model and base contents, settings, code) still matches are
    kept; the manifest's sidecar records the job's key.
    """
    setup_torch(args.threads)
    import pandas as pd

    from dspo.generation.sample import load_for_sampling, run_key, sampling_dtype, write_manifest

    p = args.params
    dtype = sampling_dtype(p.get("dtype", "float32"), args.device)
    # Seeds and guidance are in each image's own key, and so is an edit's strength; the batch
    # size only groups the work. So a changed strength remakes the edits, not the samples.
    per_image = ("seeds", "guidance", "batch_size", "strength")
    shared = {k: v for k, v in p.items() if k not in per_image}
    key = run_key(args.model, args.base, {**shared, "dtype": dtype})
    pipe = load_for_sampling(args.model, args.base, dtype=dtype, device=args.device)
    meta = {"model": args.model, "base": args.base, **shared, "sampling_dtype": dtype, "key": key}
    images = 0
    for table, out, make, extra in jobs:
        manifest = make(
            pipe,
            pd.read_parquet(table),
            Path(out).parent,
            seeds=p["seeds"],
            guidance=p["guidance"],
            steps=p["steps"],
            resolution=p["resolution"],
            scheduler=p["scheduler"],
            batch_size=p["batch_size"],
            key=key,
            **extra,
        )
        settings = {k: p[k] for k in ("seeds", "guidance", "batch_size")} | extra
        write_manifest(manifest, Path(out), {**meta, **settings})
        images += len(manifest)
    report({"model": args.model, "images": images, "key": key})


@command(
    "score",
    arg("--manifest", required=True, nargs="+", help="image manifests (`dspo generate`)"),
    arg("--name", required=True, help="name of the model, written into the scores"),
    arg("--out", required=True, nargs="+", help="one score table per manifest, in their order"),
    threads(),
    DEVICE,
    config="score",
)
def score(args: argparse.Namespace) -> None:
    """Score a model's generated images with every reward model (each loaded once).

    Every image is checked first (whole, and holding the key its manifest lists), so a bad
    one fails the job before any scoring, naming the file; each table is written atomically
    once all are scored, so earlier tables stay until the new ones are whole.
    """
    _same_count("--manifest", args.manifest, "--out", args.out)
    setup_torch(args.threads)
    import io

    import pandas as pd

    from dspo.core.files import write_bytes_atomic
    from dspo.core.image_keys import check_manifest_images
    from dspo.rewards import score_manifests

    paths = [Path(m) for m in args.manifest]
    manifests = [pd.read_parquet(p) for p in paths]
    for manifest, path in zip(manifests, paths, strict=True):
        check_manifest_images(manifest, path, args.name)
    tables = score_manifests(
        [(m, p.parent) for m, p in zip(manifests, paths, strict=True)],
        args.params,
        model_name=args.name,
        device=args.device,
    )
    for scores, out in zip(tables, args.out, strict=True):
        buffer = io.BytesIO()
        scores.to_parquet(buffer, index=False)
        write_bytes_atomic(buffer.getvalue(), Path(out))
    report({"model": args.name, "rows": sum(len(t) for t in tables)})


def _same_count(flag: str, values: list[str], out_flag: str, outs: list[str]) -> None:
    if len(values) != len(outs):
        raise SystemExit(
            f"error: {out_flag} needs one path per {flag} value ({len(values)}), got {len(outs)}"
        )


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


if __name__ == "__main__":
    main()
