"""The ``dspo`` command: one sub-command per workflow step.

Each sub-command takes its input and output paths plus the config slice it needs as JSON
(``--params '{...}'``), so the Snakemake rules stay one line and the package never reads the
workflow's config itself. Heavy libraries are imported inside the sub-commands so that the
light steps start fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {}


def command(func: Callable[[argparse.Namespace], None]) -> Callable[[argparse.Namespace], None]:
    COMMANDS[func.__name__.replace("_", "-")] = func
    return func


def _report(stats: dict[str, Any]) -> None:
    """Print a step's statistics as JSON; the rules send stdout to the step's log."""
    print(json.dumps(stats, indent=2, default=str), flush=True)


def _setup_torch(n: int) -> None:
    import torch

    torch.set_num_threads(max(1, n))
    # Subnormal floats are 10-100x slower on x86 CPUs. They appear late in training, in
    # AdamW's second moments of tiny gradients: a DDSPO run slowed from 4 to 1.6 steps/s.
    # Flushing them to zero (no effect on GPUs) changes values below 1e-38 only.
    torch.set_flush_denormal(True)


@command
def toy_world(args: argparse.Namespace) -> None:
    """Write the toy world's pairs, prompt sets and a preview of sample pairs."""
    from dspo.data import toy

    out = Path(args.out)
    stats = toy.build_world(toy.ToyWorldConfig.from_dict(args.params), out)
    toy.preview_pairs(next((out / "pairs").glob("*.parquet")), out / "preview.png")
    _report(stats)


@command
def pretrain_base(args: argparse.Namespace) -> None:
    """Pre-train the toy world's base model (a tiny SD-shaped pipeline)."""
    _setup_torch(args.threads)
    from dspo.pretrain import pretrain_toy_base

    _report(pretrain_toy_base(args.world, args.params, Path(args.out), Path(args.metrics)))


@command
def pairs_part(args: argparse.Namespace) -> None:
    """Screen part --part of pairs.shards of the pair source (winner first, ties dropped)."""
    from dspo.data.pairs import PairSettings, normalise_part

    source = dict(args.params["source"])
    if source["kind"] == "toy":
        source = {"kind": "parquet", "path": args.input}
    settings = PairSettings.from_params(args.params, source)
    record = normalise_part(settings, args.part, args.params.get("shards", 1), Path(args.out))
    unreadable = len(record["unreadable_keys"])
    _report({"units": record["blocks"], **record["counts"], "unreadable_visited": unreadable})


@command
def pairs_gather(args: argparse.Namespace) -> None:
    """Join the pairs parts into the canonical pair table; report what was dropped and why."""
    from dspo.data.pairs import gather_pairs

    _report(gather_pairs([Path(p) for p in args.inputs], Path(args.out)))


@command
def nodup_part(args: argparse.Namespace) -> None:
    """Copy one pair per prompt (seeded) of part --part of pairs.shards of a pair table."""
    from dspo.data.pairs import nodup_part as copy_part

    parts = args.params.get("shards", 1)
    record = copy_part(Path(args.input), args.part, parts, args.params["seed"], Path(args.out))
    _report({"row_groups": record["blocks"], "kept": record["kept"]})


@command
def nodup_gather(args: argparse.Namespace) -> None:
    """Join the nodup parts into the pair table of the nodup ablation."""
    from dspo.data.pairs import gather_nodup

    _report(gather_nodup([Path(p) for p in args.inputs], Path(args.out)))


@command
def ddspo_part(args: argparse.Namespace) -> None:
    """Generate part --part of ddspo.shards of DDSPO's pairs (reference model, degraded prompts)."""
    _setup_torch(args.threads)
    from dspo.data.ddspo import make_ddspo_part
    from dspo.data.pairs import read_pair_texts

    captions = read_pair_texts(Path(args.input))["caption"].tolist()
    _report(
        make_ddspo_part(
            captions,
            args.base,
            args.params,
            Path(args.out),
            part=args.part,
            parts=args.params.get("shards", 1),
            device=args.device,
        )
    )


@command
def ddspo_gather(args: argparse.Namespace) -> None:
    """Join the DDSPO parts into the pair table of the ddspo method."""
    from dspo.data.ddspo import gather_ddspo

    _report(gather_ddspo([Path(p) for p in args.inputs], Path(args.out)))


@command
def cache_part(args: argparse.Namespace) -> None:
    """Encode part --part of cache.shards of a pair table into latents and text embeddings."""
    _setup_torch(args.threads)
    from dspo.data.cache import CacheSettings, encode_part
    from dspo.data.pairs import read_pair_rows, read_pair_texts

    _report(
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


@command
def cache_gather(args: argparse.Namespace) -> None:
    """Join the cache parts into one cache folder; report its bytes per pair."""
    from dspo.data.cache import gather_cache

    _report(gather_cache([Path(p) for p in args.inputs], Path(args.out)))


@command
def train(args: argparse.Namespace) -> None:
    """Fine-tune the base model with one method."""
    _setup_torch(args.threads)
    from dspo.train import train as run_training

    _report(
        run_training(
            args.params,
            cache_dir=Path(args.input),
            base_model=args.base,
            out_dir=Path(args.out),
            run_dir=Path(args.run_dir),
            reference_dir=Path(args.reference) if args.reference else None,
        )
    )


@command
def reference_part(args: argparse.Namespace) -> None:
    """Compute part --part of reference.shards of a method's reference outputs (no autograd)."""
    _setup_torch(args.threads)
    from dspo.reference import compute_part

    p = args.params
    _report(
        compute_part(
            p,
            Path(args.input),
            args.base,
            Path(args.out),
            part=args.part,
            parts=p.get("shards", 1),
            batch_factor=p.get("batch_factor", 1),
            device=args.device,
        )
    )


@command
def reference_gather(args: argparse.Namespace) -> None:
    """Join the reference parts of a method into one folder; report its bytes per pair-visit."""
    from dspo.reference import gather

    _report(gather([Path(p) for p in args.inputs], Path(args.out)))


@command
def prompts(args: argparse.Namespace) -> None:
    """Write one prompt set as a table (prompt_set, prompt_id, prompt)."""
    from dspo.data.prompts import load_prompt_set

    table = load_prompt_set(args.name, args.params, toy_prompts=args.input)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(args.out, index=False)
    _report({"prompt_set": args.name, "prompts": len(table)})


@command
def editing_set(args: argparse.Namespace) -> None:
    """Write the editing set as a table (prompt_set, prompt_id, prompt, image)."""
    from dspo.data.prompts import load_editing_set

    table = load_editing_set(args.params, toy_editing=args.input)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(args.out, index=False)
    _report({"prompt_set": "editing", "images": len(table)})


@command
def edit(args: argparse.Namespace) -> None:
    """Edit the editing set's images with a model at every configured seed and guidance."""
    from dspo.edit import edit as run_editing

    _make_images(args, run_editing, strength=args.params["strength"])


@command
def generate(args: argparse.Namespace) -> None:
    """Sample a model on a prompt set at every configured seed and guidance scale."""
    from dspo.sample import generate as run_generation

    _make_images(args, run_generation)


def _make_images(args: argparse.Namespace, make: Callable[..., Any], **extra: Any) -> None:
    """Load the model, make every image of the input table with ``make``, write the manifest.

    Images whose recorded key (model and base contents, settings, code) still matches are
    kept; the manifest's sidecar records the job's key.
    """
    _setup_torch(args.threads)
    import pandas as pd

    from dspo.sample import load_for_sampling, run_key, sampling_dtype, write_manifest

    p = args.params
    dtype = sampling_dtype(p.get("dtype", "float32"), args.device)
    # Seeds and guidance are in each image's own key; the batch size only groups the work.
    shared = {k: v for k, v in p.items() if k not in ("seeds", "guidance", "batch_size")}
    key = run_key(args.model, args.base, {**shared, "dtype": dtype})
    pipe = load_for_sampling(args.model, args.base, dtype=dtype, device=args.device)
    out = Path(args.out)
    manifest = make(
        pipe,
        pd.read_parquet(args.input),
        out.parent,
        seeds=p["seeds"],
        guidance=p["guidance"],
        steps=p["steps"],
        resolution=p["resolution"],
        scheduler=p["scheduler"],
        batch_size=p["batch_size"],
        key=key,
        **extra,
    )
    meta = {"model": args.model, "base": args.base, **p, "sampling_dtype": dtype, "key": key}
    write_manifest(manifest, out, meta)
    _report({"model": args.model, "images": len(manifest), "key": key})


@command
def score(args: argparse.Namespace) -> None:
    """Score a model's generated images with every reward model."""
    import pandas as pd

    from dspo.rewards import score_manifest

    manifest_path = Path(args.input)
    scores = score_manifest(
        pd.read_parquet(manifest_path),
        manifest_path.parent,
        args.params,
        model_name=args.name,
        device=args.device,
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    scores.to_parquet(args.out, index=False)
    _report({"model": args.name, "rows": len(scores)})


@command
def tables(args: argparse.Namespace) -> None:
    """Win rates against the base model and mean scores: tables and plots."""
    from dspo.evaluation.plots import plot_mean_scores, plot_win_rates
    from dspo.evaluation.statistics import load_scores
    from dspo.evaluation.tables import write_tables

    p = args.params
    scores = load_scores([Path(f) for f in args.inputs])
    out = Path(args.out)
    written = write_tables(
        scores,
        out,
        methods=p["methods"],
        rewards=p["rewards"],
        prompt_sets=p["prompt_sets"],
        labels=p["labels"],
        n_boot=p["bootstrap"]["samples"],
        seed=p["bootstrap"]["seed"],
        paper_tables=p.get("paper_tables"),
    )
    import pandas as pd

    plots = Path(args.plots)
    plot_win_rates(
        pd.read_csv(out / "win_rates.csv"),
        plots / "win_rates.png",
        p["methods"],
        p["rewards"],
        p["prompt_sets"],
        p["labels"],
    )
    plot_mean_scores(
        pd.read_csv(out / "mean_scores.csv"),
        plots / "mean_scores.png",
        p["methods"],
        p["rewards"],
        p["prompt_sets"],
        p["labels"],
    )
    _report({"written": [str(w) for w in written]})


@command
def grid(args: argparse.Namespace) -> None:
    """An image grid of the first prompts at one seed, one column per model."""
    import pandas as pd

    from dspo.evaluation.plots import image_grid

    p = args.params
    manifests = dict(zip(p["models"], map(Path, args.inputs), strict=True))
    # For edits, --input is the editing set: its source images become the first column.
    sources = pd.read_parquet(args.input) if args.input else None
    image_grid(
        manifests, Path(args.out), p.get("labels"), n_prompts=p.get("prompts", 6), sources=sources
    )
    _report({"grid": args.out, "models": p["models"]})


@command
def summary(args: argparse.Namespace) -> None:
    """The run's summary: headline win rates with intervals, the machine, time per stage."""
    from dspo.evaluation.summary import build_summary

    p = args.params
    benchmarks = sorted(Path(p.get("benchmarks", "results/benchmarks")).glob("*/*.tsv"))
    result = build_summary(
        Path(args.input),
        preset=p["preset"],
        method=p["method"],
        reward=p["reward"],
        labels=p.get("labels", {}),
        benchmarks=benchmarks,
    )
    Path(args.out).write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    _report({"summary": args.out, "stages": len(result["stages"])})


@command
def readme_results(args: argparse.Namespace) -> None:
    """Write the README's results block from a run summary (--input) into --out."""
    from dspo.evaluation.summary import write_readme

    changed = write_readme(Path(args.input), Path(args.out))
    _report({"readme": args.out, "changed": changed})


@command
def push(args: argparse.Namespace) -> None:
    """Upload a saved model (--model) with its card to the hub repo --name; --input adds the
    run's win rates (results/tables/win_rates.csv) to the card first."""
    from dspo.model_card import push as push_model

    url = push_model(
        Path(args.model),
        args.name,
        win_rates_csv=Path(args.input) if args.input else None,
        private=not args.params.get("public", False),
    )
    Path(args.out).write_text(url + "\n")
    _report({"pushed": args.model, "to": args.name, "commit": url})


def _bench(args: argparse.Namespace) -> None:
    """Training throughput and peak memory (train); each job's peak memory in a run (memory)."""
    if args.what == "memory":
        from dspo.bench_memory import main as run_memory

        sys.exit(run_memory(args.options))
    from dspo.bench import main as run_bench

    run_bench(args.options)


def _standins(args: argparse.Namespace) -> None:
    """Random-weight checkpoints and data in the exact layouts the sd15/sdxl presets download."""
    from dspo.standins import write_standins

    _setup_torch(args.threads)
    _report(
        write_standins(
            Path(args.out),
            args.only,
            tiny=args.tiny,
            seed=args.seed,
            pairs=args.pairs,
            prompts=args.prompts,
            skip_existing=args.skip_existing,
        )
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dspo", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func in COMMANDS.items():
        p = sub.add_parser(name, help=func.__doc__, description=func.__doc__)
        p.add_argument("--params", type=json.loads, default={}, help="config slice as JSON")
        p.add_argument("--input", help="main input path")
        p.add_argument("--inputs", nargs="*", default=[], help="several input paths")
        p.add_argument("--out", required=True, help="output path")
        p.add_argument("--base", help="base model: hub id or local folder")
        p.add_argument("--model", help="model to sample: hub id, local folder or LoRA folder")
        p.add_argument("--name", help="name of the model or prompt set")
        p.add_argument("--world", type=json.loads, default={}, help="toy world config as JSON")
        p.add_argument("--metrics", help="metrics file (JSONL)")
        p.add_argument("--run-dir", help="folder for checkpoints and metrics")
        p.add_argument("--reference", help="precomputed reference outputs (dspo reference-part)")
        p.add_argument("--plots", help="folder for plots")
        p.add_argument("--part", type=int, default=0, help="which part of a sharded step")
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--device", default="cpu")
        p.set_defaults(func=func)
    bench = sub.add_parser("bench", help=_bench.__doc__, description=_bench.__doc__)
    bench.add_argument("what", choices=["train", "memory"], help="what to benchmark")
    bench.add_argument(
        "options",
        nargs=argparse.REMAINDER,
        help="see `dspo bench train -h`, `dspo bench memory -h`",
    )
    bench.set_defaults(func=_bench)
    from dspo.standins import COMPONENTS, DEFAULT_COMPONENTS

    standins = sub.add_parser("standins", help=_standins.__doc__, description=_standins.__doc__)
    standins.add_argument("--out", required=True, help="folder to write into")
    standins.add_argument(
        "--only",
        nargs="+",
        choices=COMPONENTS,
        default=list(DEFAULT_COMPONENTS),
        help="components to write (default: all but sdxl)",
    )
    standins.add_argument("--tiny", action="store_true", help="same formats, tiny widths")
    standins.add_argument("--seed", type=int, default=0)
    standins.add_argument("--pairs", type=int, default=96, help="Pick-a-Pic train rows")
    standins.add_argument("--prompts", type=int, default=64, help="prompts per prompt set")
    standins.add_argument(
        "--skip-existing", action="store_true", help="keep components already written"
    )
    standins.add_argument("--threads", type=int, default=2)
    standins.set_defaults(func=_standins)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as err:
        # Bad input is the user's to fix: say what is wrong without a traceback.
        sys.exit(f"dspo {args.command}: error: {err}")
    except RuntimeError as err:
        # A training job stopped by a signal has saved a checkpoint: exit non-zero, so the
        # workflow's retry resumes it, with no traceback.
        from dspo.guards import Preempted

        if not isinstance(err, Preempted):
            raise
        sys.exit(f"dspo {args.command}: stopped: {err}")


if __name__ == "__main__":
    main()
