# dspo: preference alignment of text-to-image diffusion models, from pairs to paper tables.
# The rules only wire paths and config slices to `dspo` sub-commands; see README.md.
import os
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

min_version("9.0")

# This checkout's package checks the config, whichever `dspo` is installed.
sys.path.insert(0, workflow.basedir)
from dspo.config.check import ConfigError, check_config, validate_schema

# environment.yml names the package through DSPO_ROOT: Snakemake builds rule environments
# from a copy of it, where a relative path would not reach the repository.
os.environ.setdefault("DSPO_ROOT", workflow.basedir)


# Anchored to this file so that `--directory` elsewhere still finds the default preset.
configfile: os.path.join(workflow.basedir, "config", "config.yaml")


# The schema, then what it cannot express (objective hyper-parameters, source paths, table
# names), checked before any job runs; paths are relative to the working directory, as the rules'.
try:
    validate_schema(config, os.path.join(workflow.basedir, "config", "schema.yaml"))
    check_config(config, os.getcwd())
except ConfigError as err:
    raise WorkflowError(str(err)) from None


report: "workflow/report/workflow.rst"


include: "rules/common.smk"


# Every job but the downloads reads the local hub cache only (rules/fetch.smk); jobs run
# this file again, under any executor, so they inherit this.
if FETCH_ITEMS:
    os.environ.update(HF_HUB_OFFLINE="1")


wildcard_constraints:
    item=one_of(FETCH_ITEMS),
    method=one_of(METHODS),
    model=one_of(MODELS),
    prompt_set=one_of([*EVAL_SETS, *BINDING_SETS]),
    # The configured pair sets, and later rounds' (generated_<model>, dspo/config/experiments.py).
    dataset=f"pairs|pairs_nodup|pairs_ddspo{ROUND_DATASETS}",


# Light steps run in the Snakemake process itself, on a cluster too: a SLURM job each would
# queue for minutes to run seconds. (The gathers move the whole pair table or cache, and stay
# jobs.) The downloads of hub artefacts need the network, which often only the login node has.
localrules:
    all,
    fetch_item,
    fetch,
    tables,
    binding_table,
    grid,
    training_view,
    summary,
    prompt_set,
    editing_set,


include: "rules/fetch.smk"
include: "rules/data.smk"


if GENERATED:

    include: "rules/generated.smk"


include: "rules/model.smk"
include: "rules/train.smk"
include: "rules/generate.smk"
include: "rules/score.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        rules.tables.output,
        expand("results/plots/grid_{prompt_set}.png", prompt_set=TEST_SETS),
        expand("results/plots/training/{method}.png", method=METHODS),
        "results/summary.json",
        rules.binding_table.output if BINDING_SETS else [],
        rules.fetch.output if FETCH_ITEMS else [],


onstart:
    # Jobs write to their logs, not the console: say where to look while a long job runs.
    print(
        "dspo: each job logs to results/logs/<step>/... (e.g. `tail -f results/logs/train/dspo.log`);"
        " training metrics: results/train/<method>/metrics.jsonl; each running job's progress:"
        " `python -m dspo.core.progress --watch 10` (or `make watch`) in another terminal"
    )
