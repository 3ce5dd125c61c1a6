"""The report items a workflow declares, as files of a finished run (run as a script).

Every output flagged with ``report(...)`` in the rules, its wildcards matched against the
run's files, with its caption file and category, printed as JSON. Snakemake's API changes
the working directory and sets up its logging, hence a process of its own:

    python tests/report_items.py SNAKEFILE WORKDIR CONFIGFILE [CONFIGFILE ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from snakemake.api import SnakemakeApi
from snakemake.io import is_flagged
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings


def declared_report_items(
    snakefile: Path, workdir: Path, configfiles: list[Path]
) -> dict[str, dict]:
    """{path relative to workdir: {"caption": caption file, "category": category}}."""
    files = [str(p.relative_to(workdir)) for p in workdir.rglob("*") if p.is_file()]
    items: dict[str, dict] = {}
    with SnakemakeApi(OutputSettings()) as api:
        workflow_api = api.workflow(
            resource_settings=ResourceSettings(),
            config_settings=ConfigSettings(configfiles=configfiles),
            snakefile=snakefile,
            workdir=workdir,
        )
        # The parsed workflow: its rules with their flagged outputs (no DAG needed).
        workflow = workflow_api._workflow
        for rule in workflow.rules:
            for output in rule.output:
                if not is_flagged(output, "report"):
                    continue
                flag = output.flags["report"]
                pattern = output.regex()
                matches = [f for f in files if pattern.fullmatch(f)]
                # A path without wildcards is declared even when absent: the test says so.
                for path in matches if output.get_wildcard_names() else [str(output)]:
                    items[path] = {
                        "caption": str(Path(flag.caption).resolve()),
                        "category": flag.category,
                        "rule": rule.name,
                    }
    return items


if __name__ == "__main__":
    snakefile, workdir, *configfiles = (Path(arg).resolve() for arg in sys.argv[1:])
    print(json.dumps(declared_report_items(snakefile, workdir, configfiles)))
