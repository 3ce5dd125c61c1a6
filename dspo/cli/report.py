"""The ``dspo`` sub-commands of the report stage (tables, grid, summary) and the tools."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dspo.cli.registry import (
    OUT,
    PARAMS,
    Option,
    arg,
    command,
    json_mapping,
    report,
    setup_torch,
    threads,
)


def configfile_arg(help: str) -> Option:
    """``--configfile``: presets deep-merged over config/config.yaml, as the workflow does."""
    return arg("--configfile", nargs="*", type=Path, default=[], metavar="FILE.yaml", help=help)


@command(
    "report",
    arg("--scores", nargs="+", required=True, help="score tables (`dspo score`)"),
    arg("--out", required=True, help="folder for the tables"),
    arg("--plots", help="folder for the plots (default: --out)"),
    arg("--pairs-report", help="the pairs report (pairs-gather --report), noted in the tables"),
    arg("--nodup-report", help="the nodup report (nodup-gather --report), noted in the tables"),
    arg("--quality", nargs="+", default=[], help="image quality tables (`dspo quality`)"),
    arg("--binding", help="the attribute-binding table (`dspo binding-table` CSV): B-VQA columns"),
    config="tables",
)
def tables(args: argparse.Namespace) -> None:
    """Win rates against the base model and mean scores, image quality and the DDSPO table:
    tables and plots."""
    from dspo.data.dedup import data_note
    from dspo.evaluation.plots import plot_mean_scores, plot_win_rates
    from dspo.evaluation.quality_tables import extra_tables
    from dspo.evaluation.statistics import load_scores
    from dspo.evaluation.sweeps import relabel_groups, reward_of, write_sweep
    from dspo.evaluation.tables import build_tables, labeller, save_tables

    p = args.params
    raw = load_scores([Path(f) for f in args.scores])
    selected, paper_raw = _selected_steps(raw, p)
    # Replicates and sweep points are scored as models of their own: rows go to their group.
    scores = relabel_groups(raw, p.get("groups") or {})
    out = Path(args.out)
    tables = build_tables(
        scores,
        methods=p["methods"],
        rewards=p["rewards"],
        prompt_sets=p["prompt_sets"],
        labels=p["labels"],
        n_boot=p["bootstrap"]["samples"],
        seed=p["bootstrap"]["seed"],
        paper_tables=p.get("paper_tables"),
        data_note="\n\n".join(
            filter(None, [data_note(args.pairs_report, args.nodup_report), *p.get("notes", [])])
        ),
        paper_scores=relabel_groups(paper_raw, p.get("groups") or {}),
        paper_note=selected.get("note", ""),
    )
    if "table" in selected:
        tables["step_selection"] = selected["table"]
    tables.update(
        extra_tables(
            tables["win_rates"][0],
            tables["mean_scores"][0],
            args.quality,
            p.get("groups") or {},
            p["methods"],
            p["rewards"],
            p["prompt_sets"],
            labeller(p["labels"]),
            binding_file=args.binding,
            n_boot=p["bootstrap"]["samples"],
        )
    )
    written = save_tables(tables, out)
    plots = Path(args.plots or args.out)
    layout = (p["methods"], p["rewards"], p["prompt_sets"], p["labels"])
    # The frames just written, not the CSVs read back.
    plot_win_rates(tables["win_rates"][0], plots / "win_rates.png", *layout)
    plot_mean_scores(tables["mean_scores"][0], plots / "mean_scores.png", *layout)
    for name, spec in (p.get("sweeps") or {}).items():
        reward = reward_of(spec, p["rewards"])
        boot = p["bootstrap"]
        written += write_sweep(
            scores, name, spec, out, plots, reward, p["labels"], boot["samples"], boot["seed"]
        )
    report({"written": [str(w) for w in written]})


def _selected_steps(raw: Any, p: Mapping[str, Any]) -> tuple[dict[str, Any], Any]:
    """With ``step_selection`` set: the step-selection table and the note (under "table" and
    "note"), and the scores with each trained model's picked step; else nothing and ``raw``."""
    from dspo.evaluation.step_selection import (
        overlap_sentence,
        pick_steps,
        picked_rows,
        selection_markdown,
        selection_note,
        shared_prompts,
        use_picked,
    )
    from dspo.evaluation.tables import labeller

    spec = p.get("step_selection")
    if not spec:
        return {}, raw
    # JSON keys are strings; the steps are numbers.
    candidates = {m: {int(s): row for s, row in c.items()} for m, c in spec["candidates"].items()}
    chosen = pick_steps(raw, candidates, spec["prompt_set"], spec["reward"])
    name = labeller(p["labels"])
    overlap = overlap_sentence(*shared_prompts(raw, spec["prompt_set"], p["prompt_sets"]), name)
    table = (chosen, f"{selection_markdown(chosen, name)}\n{overlap}\n")
    note = selection_note(chosen, name)
    return {"table": table, "note": note}, use_picked(raw, picked_rows(chosen))


@command(
    "report",
    PARAMS,
    arg("--manifests", nargs="+", required=True, help="image manifests, one per model in order"),
    arg("--editing-set", help="the editing set: its source images become the first column"),
    OUT,
)
def grid(args: argparse.Namespace) -> None:
    """An image grid of the first prompts at one seed, one column per model."""
    import pandas as pd

    from dspo.evaluation.plots import image_grid

    p = args.params
    manifests = dict(zip(p["models"], map(Path, args.manifests), strict=True))
    sources = pd.read_parquet(args.editing_set) if args.editing_set else None
    image_grid(
        manifests, Path(args.out), p.get("labels"), n_prompts=p.get("prompts", 6), sources=sources
    )
    report({"grid": args.out, "models": p["models"]})


@command(
    "report",
    PARAMS,
    arg("--input", required=True, help="the method's run folder (results/train/{method})"),
    OUT,
)
def training_view(args: argparse.Namespace) -> None:
    """One method's curves and validation images over steps, from its run folder."""
    from dspo.evaluation.training_view import plot_training_view

    report(plot_training_view(Path(args.input), Path(args.out), args.params.get("title", "")))


@command(
    "report",
    PARAMS,
    arg("--scores", nargs="+", required=True, help="B-VQA score tables (`dspo score`)"),
    arg("--out", required=True, help="the table's CSV; its Markdown is written beside (.md)"),
)
def binding_table(args: argparse.Namespace) -> None:
    """The attribute-binding table: mean B-VQA per model and prompt set, beside win rates."""
    from dspo.evaluation.binding import binding_markdown
    from dspo.evaluation.binding import binding_table as build
    from dspo.evaluation.statistics import load_scores
    from dspo.evaluation.sweeps import relabel_groups

    p = args.params
    boot = p["bootstrap"]
    scores = relabel_groups(load_scores([Path(f) for f in args.scores]), p.get("groups") or {})
    table = build(scores, p["methods"], p["prompt_sets"], n_boot=boot["samples"], seed=boot["seed"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False, lineterminator="\n")
    markdown = binding_markdown(table, p.get("labels"), p.get("title"), n_boot=boot["samples"])
    out.with_suffix(".md").write_text(markdown)
    report({"written": [str(out), str(out.with_suffix(".md"))], "rows": len(table)})


@command(
    "report",
    PARAMS,
    arg("--input", required=True, help="the run's win rates (results/tables/win_rates.csv)"),
    arg("--head-to-head", help="the run's results/tables/head_to_head.csv (rounds' summary)"),
    OUT,
)
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
    if p.get("rounds"):
        import pandas as pd

        from dspo.evaluation.rounds import rounds_summary

        if not args.head_to_head:
            raise ValueError("a summary of rounds needs --head-to-head")
        result["rounds"] = rounds_summary(
            pd.read_csv(args.head_to_head),
            p["rounds"],
            p["rounds_reward"],
            p.get("labelling", []),
            p.get("replicates", [1]),
        )
    Path(args.out).write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    report({"summary": args.out, "stages": len(result["stages"])})


@command(
    "report",
    arg("--input", required=True, help="a run summary (`dspo summary`)"),
    arg("--out", required=True, help="the README to update"),
    arg("--rerun", help="the summary of the same config run another way, kept in --input"),
    arg("--rerun-label", default="", help='how the rerun differed, e.g. "with 2 threads"'),
    arg("--rounds", action="store_true", help="write the AI-feedback block (a run with rounds)"),
)
def readme_results(args: argparse.Namespace) -> None:
    """Write the README's results block from a run summary (--input) into --out."""
    from dspo.evaluation.summary import write_readme

    if args.rounds:
        from dspo.evaluation.rounds import write_readme as write_rounds

        changed = write_rounds(json.loads(Path(args.input).read_text()), Path(args.out))
        report({"readme": args.out, "changed": changed, "block": "ai-feedback"})
        return
    rerun = Path(args.rerun) if args.rerun else None
    changed = write_readme(Path(args.input), Path(args.out), rerun, args.rerun_label)
    report({"readme": args.out, "changed": changed})


@command(
    "tools",
    arg("--model", required=True, help="saved model folder (`dspo train`)"),
    arg("--name", required=True, help="hub repo id, owner/name"),
    arg("--input", help="the run's results/tables/win_rates.csv, added to the card"),
    arg("--params", type=json_mapping, default={}, help='JSON; {"public": true} for a public repo'),
    arg("--out", required=True, help="file the commit URL is written to"),
)
def push(args: argparse.Namespace) -> None:
    """Upload a saved model with its card to a hub repo (the run's win rates added first)."""
    from dspo.evaluation.publish import push as push_model

    url = push_model(
        Path(args.model),
        args.name,
        win_rates_csv=Path(args.input) if args.input else None,
        private=not args.params.get("public", False),
    )
    Path(args.out).write_text(url + "\n")
    report({"pushed": args.model, "to": args.name, "commit": url})


@command(
    "tools",
    arg("what", choices=["train", "memory", "activations", "flip"], help="what to benchmark"),
    arg(
        "options",
        nargs=argparse.REMAINDER,
        help="see `dspo bench train -h` (or memory, activations, flip)",
    ),
)
def bench(args: argparse.Namespace) -> None:
    """Training throughput and peak memory (train); each job's peak memory in a run (memory);
    a training step's memory per image (activations); whether a VAE's latents mirror as its
    images do (flip)."""
    if args.what == "memory":
        from dspo.bench.memory import main as run_memory

        sys.exit(run_memory(args.options))
    if args.what == "activations":
        from dspo.bench.activations import main as run_activations

        run_activations(args.options)
        return
    if args.what == "flip":
        from dspo.bench.flip import main as run_flip

        run_flip(args.options)
        return
    from dspo.bench.throughput import main as run_bench

    run_bench(args.options)


@command(
    "tools",
    configfile_arg(
        "presets deep-merged over config/config.yaml in order, as the workflow merges them"
    ),
    arg("--gpu", default="a100", help="GPU whose dense bf16 peak sets the hours (default a100)"),
    arg("--utilisation", type=float, default=0.4, help="fraction of the peak (default 0.4)"),
    arg("--json", action="store_true", help="print JSON instead of the Markdown table"),
)
def budget(args: argparse.Namespace) -> None:
    """Disk and GPU-hours per stage of a config (source, tables, caches, checkpoints, models,
    images, scores), from counted FLOPs and per-item sizes, before anything runs; with a
    generated pair source, also each round's cost."""
    from dspo.bench.budget import budget as compute_budget
    from dspo.bench.budget import format_budget
    from dspo.bench.budget_rounds import format_rounds, round_costs
    from dspo.config.step import workflow_config

    config = workflow_config(args.configfile)
    result = compute_budget(config, args.gpu, args.utilisation)
    result["rounds"] = round_costs(config, result["peak_tflops"], args.utilisation)
    text = "\n\n".join(filter(None, [format_budget(result), format_rounds(result["rounds"])]))
    print(json.dumps(result, indent=2) if args.json else text, flush=True)


@command(
    "tools",
    configfile_arg("the presets the run used, deep-merged over config/config.yaml in order"),
    arg("--out", required=True, type=Path, help="CSV to write (stage, bytes, paths)"),
)
def disk(args: argparse.Namespace) -> None:
    """Measure the disk each stage of a finished run holds in the working directory, under
    the stage names of `dspo budget` (make rehearse writes results/bench/disk_rehearsal.csv)."""
    from dspo.bench.disk import measure, write_disk_csv
    from dspo.config.step import workflow_config

    rows = measure(workflow_config(args.configfile))
    write_disk_csv(rows, args.out)
    report({row["stage"]: row["bytes"] for row in rows})


def _standins_options() -> list:
    from dspo.standins import COMPONENTS, DEFAULT_COMPONENTS

    return [
        arg("--out", required=True, help="folder to write into"),
        arg(
            "--only",
            nargs="+",
            choices=COMPONENTS,
            default=list(DEFAULT_COMPONENTS),
            help="components to write (default: all but sdxl)",
        ),
        arg("--tiny", action="store_true", help="same formats, tiny widths"),
        arg("--seed", type=int, default=0, help="seed of the random weights and data"),
        arg("--pairs", type=int, default=96, help="Pick-a-Pic train rows"),
        arg("--prompts", type=int, default=64, help="prompts per prompt set"),
        arg("--skip-existing", action="store_true", help="keep components already written"),
        threads(2),
    ]


@command("tools", *_standins_options())
def standins(args: argparse.Namespace) -> None:
    """Random-weight checkpoints and data in the exact layouts the sd15/sdxl presets download."""
    from dspo.standins import write_standins

    setup_torch(args.threads)
    report(
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
