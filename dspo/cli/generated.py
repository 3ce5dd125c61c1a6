"""The ``dspo`` sub-commands of a generated pair source (dspo.data.generated): its prompts,
the sampled images of one part, and one part's labelled pairs."""

from __future__ import annotations

import argparse
from pathlib import Path

from dspo.cli.registry import (
    BASE,
    DEVICE,
    MODEL,
    OUT,
    PARAMS,
    PART,
    arg,
    command,
    json_mapping,
    report,
    setup_torch,
    threads,
)


@command(
    "data",
    PARAMS,
    arg("--toy-pairs", help="the toy world's pair folder (toy prompts with no split)"),
    arg("--toy-prompts", help="the toy world's prompt table (toy prompts of a split)"),
    OUT,
)
def generated_prompts(args: argparse.Namespace) -> None:
    """Write the prompts of the generated pair source (pairs.source.prompts) as a table."""
    from dspo.data.generated import generated_prompts as load
    from dspo.data.generated import write_prompts

    table = load(args.params["prompts"], args.toy_pairs, args.toy_prompts)
    if table.empty:
        raise ValueError("the generated pair source has no prompts")
    write_prompts(table, Path(args.out))
    report({"prompts": len(table)})


@command(
    "data",
    PART,
    PARAMS,
    arg("--prompts", required=True, help="the source's prompt table (`dspo generated-prompts`)"),
    MODEL,
    BASE,
    arg("--out", required=True, help="the part's manifest; its images are written beside it"),
    threads(),
    DEVICE,
)
def generated_images(args: argparse.Namespace) -> None:
    """Sample part --part of the generated source's prompts, images_per_prompt images each."""
    setup_torch(args.threads)
    import pandas as pd

    from dspo.data.generated import make_images_part

    prompts = pd.read_parquet(args.prompts)
    report(
        make_images_part(
            prompts,
            args.model,
            args.base,
            args.params,
            Path(args.out),
            part=args.part,
            device=args.device,
        )  # fmt: skip
    )


@command(
    "data",
    PARAMS,
    arg("--rewards", required=True, type=json_mapping, help="reward entries (JSON)"),
    arg("--manifest", required=True, help="the part's image manifest (`dspo generated-images`)"),
    OUT,
    threads(),
    DEVICE,
)
def generated_labels(args: argparse.Namespace) -> None:
    """Score one part's images with the labelling reward; write its pairs (Pick-a-Pic columns)."""
    setup_torch(args.threads)
    from dspo.data.generated import label_part

    report(
        label_part(
            Path(args.manifest), args.rewards, args.params, Path(args.out), device=args.device
        )
    )
