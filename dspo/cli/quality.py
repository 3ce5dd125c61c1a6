"""The ``dspo quality`` sub-command: Inception Score and FID of a model's image sets."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

from dspo.cli.registry import DEVICE, OUT, PARAMS, arg, command, report, setup_torch, threads


@command(
    "score",
    PARAMS,
    arg("--name", required=True, help="the model's name (the rows' model column)"),
    arg("--manifest", nargs="+", required=True, help="image manifests (`dspo generate`)"),
    OUT,
    threads(),
    DEVICE,
)
def quality(args: argparse.Namespace) -> None:
    """Inception Score (and FID against a reference set) of each image set, as a CSV table.

    --params is ``evaluation.quality``; each manifest's folder name is its image set's name.
    Every image is checked against its manifest first; the table is written atomically.
    """
    import pandas as pd

    from dspo.core.files import write_bytes_atomic
    from dspo.core.image_keys import check_manifest_images
    from dspo.evaluation.quality import image_set_quality, needs_torch

    if needs_torch(args.params):
        setup_torch(args.threads)

    image_sets = {}
    for path in map(Path, args.manifest):
        manifest = pd.read_parquet(path)
        check_manifest_images(manifest, path, args.name)
        image_sets[path.parent.name] = (manifest, path.parent)
    table = image_set_quality(image_sets, args.params, args.name, args.device)
    buffer = io.StringIO()
    table.to_csv(buffer, index=False, lineterminator="\n")
    write_bytes_atomic(buffer.getvalue().encode(), Path(args.out))
    report({"model": args.name, "rows": len(table), "classifier": table["classifier"].iloc[0]})
