"""The ``dspo`` sub-commands of the data and cache stages: the toy world, the pair tables
(the source's, nodup's and DDSPO's), the prompt and editing sets, and the latent cache."""

from __future__ import annotations

import argparse
from pathlib import Path

from dspo.cli.registry import (
    BASE,
    DEVICE,
    INPUT,
    INPUTS,
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
    from dspo.data.cache_encode import CacheSettings, encode_part
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
    from dspo.data.cache_gather import gather_cache

    report(gather_cache([Path(p) for p in args.inputs], Path(args.out)))
