"""The ``dspo`` sub-commands that make each model's images and score them: ``generate``
(samples and edits) and ``score`` (every reward model)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dspo.cli.registry import (
    BASE,
    DEVICE,
    MODEL,
    arg,
    command,
    report,
    setting,
    setup_torch,
    threads,
)

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
    import io

    import pandas as pd

    from dspo.core.files import write_bytes_atomic
    from dspo.core.image_keys import check_manifest_images
    from dspo.rewards import needs_torch, score_manifests

    if needs_torch(args.params):
        setup_torch(args.threads)

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
