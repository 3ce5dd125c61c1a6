"""The ``dspo`` sub-commands that download the hub artefacts a config names (dspo.hub.fetch)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dspo.cli.registry import INPUTS, arg, command, json_mapping, report


def _write_json(path: Path, value: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    tmp.replace(path)


@command(
    "data",
    arg(
        "--configfile",
        nargs="+",
        type=Path,
        metavar="FILE.yaml",
        help="presets deep-merged over config/config.yaml, as snakemake's --configfile",
    ),
    arg("--item", type=json_mapping, metavar="JSON", help="one artefact (the rule fetch_item)"),
    arg(
        "--out", required=True, help="the manifest (a folder with --configfile, a file with --item)"
    ),
)
def fetch(args: argparse.Namespace) -> None:
    """Download the hub artefacts a config names, pinned, and write their manifest."""
    from dspo.config.step import workflow_config
    from dspo.hub.fetch import Artefact, fetch_artefact, gather_manifest, hub_artefacts

    if (args.configfile is None) == (args.item is None):
        args.subparser.error("give one of --configfile and --item")
    out = Path(args.out)
    if args.item is not None:
        record = fetch_artefact(Artefact.from_dict(args.item))
        _write_json(out, record)
        report(
            {"item": record["item"], "revision": record["revision"], "files": len(record["files"])}
        )
        return
    records = []
    for artefact in hub_artefacts(workflow_config(args.configfile)):
        records.append(fetch_artefact(artefact))
        _write_json(out / "items" / f"{artefact.item}.json", records[-1])
    manifest = gather_manifest(records)
    _write_json(out / "manifest.json", manifest)
    report(
        {"artefacts": len(records), "bytes": manifest["bytes"], "manifest": out / "manifest.json"}
    )


@command("data", INPUTS, arg("--out", required=True, help="the manifest (JSON)"))
def fetch_manifest(args: argparse.Namespace) -> None:
    """Join the records of `dspo fetch --item` into one manifest."""
    from dspo.hub.fetch import gather_manifest

    manifest = gather_manifest(json.loads(Path(f).read_text()) for f in args.inputs)
    _write_json(Path(args.out), manifest)
    report({"artefacts": len(manifest["artefacts"]), "bytes": manifest["bytes"]})
