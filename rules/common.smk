# Helpers shared by the workflow: artefact paths and the config slice of each step.
# Steps receive their config slice as a param, so editing a slice reruns that step and what
# depends on it, and nothing else.
import glob
import json
import os
import re
import shlex

from dspo.config.names import entries
from dspo.config import experiments
from dspo.data.generated_config import generated_settings, is_generated, label_name
from dspo.data.degrader_config import degrader_settings
from dspo.evaluation.intervals import caption_sentences
from dspo.hub.fetch import hub_artefacts
from dspo.objectives import get_objective
from dspo.training.validation import validation_set

EVALUATION = config["evaluation"]
METHOD_ENTRIES = entries(config["methods"])
PROMPT_SET_ENTRIES = entries(EVALUATION["prompt_sets"])
REWARD_ENTRIES = entries(EVALUATION["rewards"])
# Every trained model: each method, its replicates and the sweeps' points (dspo/config/experiments.py).
TRAINED = experiments.trained_models(config)
METHODS = list(TRAINED)
# Method entries naming an existing model (`model:`): imported, never trained (rule import_model).
RELEASED = experiments.released_models(config)
# Kept training steps (training.evaluate_steps), sampled and scored as models of their own:
# `dspo@100` -> ("dspo", 100) (dspo/config/experiments.py).
STEP_MODELS = experiments.step_models(config, TRAINED)
MODELS = ["base", *METHODS, *RELEASED, *STEP_MODELS]
SWEEPS = list(entries(config.get("sweeps")))
# The models the image grids show: the base model and the first replicate of each method.
GRID_MODELS = ["base", *METHOD_ENTRIES]
PROMPT_SETS = list(PROMPT_SET_ENTRIES)
EDITING = EVALUATION.get("editing")
# Sets of generated images: the prompt sets, and the edits of the editing set when enabled.
EVAL_SETS = [*PROMPT_SETS, "editing"] if EDITING else PROMPT_SETS
# Attribute binding: its prompt sets are sampled like the others, but scored by B-VQA alone.
BINDING = EVALUATION.get("attribute_binding") or {}
BINDING_ENTRIES = entries(BINDING.get("prompt_sets"))
BINDING_SETS = list(BINDING_ENTRIES)
# Its table (rule binding_table), whose B-VQA columns the ddspo table shows too.
BINDING_TABLE = "results/tables/attribute_binding.csv"
# Every prompt set a model samples, and its config entry.
SAMPLED_ENTRIES = {**PROMPT_SET_ENTRIES, **BINDING_ENTRIES}
SAMPLED_SETS = list(SAMPLED_ENTRIES)
# Choosing each trained model's step on a validation prompt set (dspo/evaluation/step_selection.py).
STEP_SELECTION = EVALUATION.get("step_selection")
# The sets the tables report: all but the one that validates the step choice.
TEST_SETS = [s for s in EVAL_SETS if not STEP_SELECTION or s != STEP_SELECTION["prompt_set"]]


# Each later round of a method is a row of its own ({method}@round{r}), after the method's.
ROUND_GROUPS = {
    m.group: (m.method, m.round) for m in TRAINED.values() if m.round > 1 and m.replicate == 0
}
TABLE_METHODS = [
    row
    for method in METHOD_ENTRIES
    for row in [method, *(g for g, (m, _) in ROUND_GROUPS.items() if m == method)]
]


def kept_tables(tables):
    """The paper-layout tables with only the methods and prompt sets this preset runs; a
    table left with none of either is dropped (its output file is not declared)."""
    kept = {}
    for name, spec in entries(tables).items():
        methods = [m for m in spec["methods"] if m in TABLE_METHODS]
        sets = [p for p in spec.get("prompt_sets", PROMPT_SETS) if p in TEST_SETS]
        if methods and sets:
            kept[name] = {**spec, "methods": methods, "prompt_sets": sets}
    return kept


PAPER_TABLES = kept_tables(EVALUATION.get("tables", {}))
# Image quality (Inception Score, FID) of the prompt sets' images; None when not configured.
QUALITY = EVALUATION.get("quality")
# Measured on the test prompt sets (not the edits, nor the step choice's validation set).
QUALITY_SETS = [p for p in PROMPT_SETS if p in TEST_SETS]
# Tables beside the paper's: DDSPO's comparison layout, and image quality when measured.
EXTRA_TABLES = ["ddspo", "image_quality"] if QUALITY else ["ddspo"]
BASE = config["base_model"]
BUILD_TOY_BASE = BASE.get("build") == "toy"
DEVICE = config["resources"]["device"]
# Training and the data steps it waits on run before sampling and scoring when cores are
# scarce: sampling fills the gaps, and no long training job is left to run alone at the end.
TRAINING_CHAIN_PRIORITY = 1
# The nodup table's slice: its seed, and as many parts as the normalisation.
NODUP = {"seed": config["pairs"]["nodup_seed"], "shards": config["pairs"]["shards"]}


def as_json(value):
    """A config slice as canonical JSON: equal configs give equal params."""
    return json.dumps(value, sort_keys=True)


# The hub artefacts the config names, by item (dspo/hub/fetch.py): rule fetch_item downloads
# each on the login node; the jobs that read one wait for its record and then run offline.
FETCH_ITEMS = {artefact.item: artefact.as_dict() for artefact in hub_artefacts(config)}


def fetched(*items):
    """The fetch records of those of ``items`` that come from the hub."""
    return [f"results/fetch/items/{item}.json" for item in items if item in FETCH_ITEMS]


def base_model_input(wildcards=None):
    """The base model folder when the workflow builds it, the fetch record of a hub id;
    nothing for a local model."""
    return [BASE["path"]] if BUILD_TOY_BASE else fetched("base_model")


def source_inputs(source, toy_output):
    """What a data source reads from disk, as the step's inputs: the toy world's output, a
    generated source's labelled parts, or the local file, folder or glob's files (so that
    replacing them reruns the step); nothing for a hub id, which the step fetches itself."""
    kind = source["kind"]
    if kind == "toy":
        return [toy_output]
    if kind == "generated":
        return generated_label_parts(GENERATED["model"])
    path = source.get("path") if kind != "hub" else None
    if path is None:
        return []
    return sorted(glob.glob(path, recursive=True)) if glob.has_magic(path) else [path]


def source_arg(source, toy_output):
    """The `--input` of a data step: the toy world's output, the local path or the hub id.
    Always one word, so the command line is well formed for every kind of source; the step
    reads a non-toy source's details from its --params."""
    kind = source["kind"]
    if kind == "toy":
        return toy_output
    if kind == "generated":
        return generated_labels_dir(GENERATED["model"])
    return source["id"] if kind == "hub" else source.get("path") or source["id"]


PAIRS_SOURCE = config["pairs"]["source"]
# A generated pair source (pairs.source.kind: generated, dspo/data/generated_config.py), resolved.
GENERATED = generated_settings(PAIRS_SOURCE, EVALUATION) if is_generated(PAIRS_SOURCE) else None
GENERATED_PROMPTS = "results/data/generated/prompts.parquet"
# The models later rounds sample their pairs from (dspo/config/experiments.py), and every model
# whose images a generated pair set is labelled from.
ROUND_SOURCES = [m.previous for m in TRAINED.values() if m.previous]
SAMPLED = list(dict.fromkeys([GENERATED["model"], *ROUND_SOURCES])) if GENERATED else []
# The pair sets of later rounds, generated_<model each samples>, as alternatives of the
# `dataset` wildcard constraint.
ROUND_DATASETS = "".join(
    f"|{re.escape(experiments.generated_dataset(model))}" for model in ROUND_SOURCES
)


def generated_parts():
    return range(GENERATED["shards"])


def generated_labels_dir(model):
    """The folder of the Pick-a-Pic parts labelled from ``model``'s images (a parquet source)."""
    return f"results/data/generated/{model}/labels"


def generated_label_parts(model):
    return [f"{generated_labels_dir(model)}/part{part}.parquet" for part in generated_parts()]


def generated_images_config():
    """The generation job's slice: the source's sampling keys, evaluation's sampling rules."""
    keys = ("images_per_prompt", "seed", "guidance", "shards")
    shared = {k: v for k, v in sampling_config().items() if k not in ("seeds", "guidance")}
    return {**shared, **{k: GENERATED[k] for k in keys}}


def generated_labels_config():
    """The labelling job's slice: the labelling reward and the pairing rule."""
    return {k: GENERATED[k] for k in ("weights", "rule", "margin")}


def generated_rewards():
    """The config entries of the rewards that label."""
    return {name: reward_config()[name] for name in GENERATED["weights"]}


def generated_prompts_inputs(wildcards):
    prompts = GENERATED["prompts"]
    if prompts["kind"] == "toy":
        return [TOY_PAIRS if prompts.get("split") is None else TOY_PROMPTS]
    return source_inputs(prompts, TOY_PROMPTS) + fetched("generated.prompts")


def generated_prompts_options(wildcards, input):
    """Where a toy prompt source's prompts are read: the toy pairs' captions, or a split."""
    prompts = GENERATED["prompts"]
    if prompts["kind"] != "toy":
        return ""
    flag = "--toy-pairs" if prompts.get("split") is None else "--toy-prompts"
    return f"{flag} {shlex.quote(input[0])}"


def generated_pairs_parts(wildcards):
    parts = range(config["pairs"]["shards"])
    return expand(
        "results/data/generated_{sampled}.parts/{part}", sampled=wildcards.sampled, part=parts
    )


def round_pairs_config(sampled):
    """A round's normalisation slice: the pairs slice, its source the labelled parts."""
    return {
        **config["pairs"],
        "source": {"kind": "generated", "model": sampled, **generated_labels_config()},
    }


TOY_PAIRS = "results/data/toy/pairs"
TOY_PROMPTS = "results/data/toy/prompts.parquet"
TOY_EDITING = "results/data/toy/editing.parquet"
# What the pairs and nodup gathers dropped and why (dspo/data/pairs.py).
PAIRS_REPORT = "results/data/pairs_report.json"
NODUP_REPORT = "results/data/pairs_nodup_report.json"
# The LLM degrader's prompts and counts; its answers are cached in DDSPO_DEGRADER_CACHE,
# which no rule declares, so a rerun keeps it and decodes only what it lacks.
DDSPO_DEGRADED = "results/data/ddspo_degraded.parquet"
DDSPO_DEGRADED_REPORT = "results/data/ddspo_degraded.json"
DDSPO_DEGRADER_CACHE = "results/data/ddspo_degraded.cache"
# The editing set every model edits (rule editing_set).
EDITING_TABLE = "results/data/editing.parquet"


def pairs_source_input(wildcards):
    return source_inputs(PAIRS_SOURCE, TOY_PAIRS) + fetched("pairs")


def nodup_report_input(wildcards):
    """The nodup report, when a trained model learns from the one pair per prompt set."""
    used = any(method_config(model)["data"] == "pairs_nodup" for model in TRAINED)
    return [NODUP_REPORT] if used else []


def nodup_report_option(wildcards, input):
    return f"--nodup-report {shlex.quote(input.nodup_report[0])}" if input.nodup_report else ""


def excluded_prompt_tables(wildcards):
    """The evaluation prompt tables whose prompts the training pairs must not hold."""
    if not config["pairs"]["exclude_eval_prompts"]:
        return []
    return expand("results/data/prompts/{prompt_set}.parquet", prompt_set=PROMPT_SETS)


def pairs_parts(wildcards):
    """The folders of the pairs.shards parts that make up the canonical pair table."""
    return expand("results/data/pairs.parts/{part}", part=range(config["pairs"]["shards"]))


def nodup_parts(wildcards):
    """The folders of the parts that make up the nodup pair table."""
    return expand("results/data/pairs_nodup.parts/{part}", part=range(NODUP["shards"]))


def ddspo_parts(wildcards):
    """The folders of the ddspo.shards parts that make up DDSPO's pair table."""
    return expand("results/data/pairs_ddspo.parts/{part}", part=range(config["ddspo"]["shards"]))


def ddspo_settings(*keys):
    """The ddspo settings (those of ``keys``, or all; of the degrader, those its kind reads)
    as a params function: a function, since Snakemake would read the instructions'
    ``{prompt}`` in a params string as a wildcard."""
    chosen = {k: v for k, v in config["ddspo"].items() if not keys or k in keys}
    chosen["degrader"] = degrader_settings(chosen["degrader"])
    return lambda wildcards: as_json(chosen)


def ddspo_degrader_input(wildcards=None):
    """The LLM degrader's local folder (so replacing it reruns the degradation), or the
    fetch record of a hub id; nothing when the degrader is not an LLM."""
    degrader = config["ddspo"]["degrader"]
    if degrader["kind"] != "llm":
        return []
    return [degrader["model"]] if os.path.exists(degrader["model"]) else fetched("ddspo.degrader")


def ddspo_degraded_input(wildcards):
    """The LLM's degraded prompts (rule ddspo_degrade), when the degrader is an LLM."""
    return [DDSPO_DEGRADED] if config["ddspo"]["degrader"]["kind"] == "llm" else []


def ddspo_degraded_option(wildcards, input):
    return f"--degraded {shlex.quote(input.degraded[0])}" if input.degraded else ""


def cache_parts(wildcards):
    """The folders of the cache.shards parts that make up one dataset's cache."""
    parts = range(config["cache"].get("shards", 1))
    return expand("results/cache/{dataset}.parts/{part}", dataset=wildcards.dataset, part=parts)


def prompt_source_input(wildcards):
    source = SAMPLED_ENTRIES[wildcards.prompt_set]["source"]
    return source_inputs(source, TOY_PROMPTS) + fetched(f"prompt_set.{wildcards.prompt_set}")


def prompt_source_arg(wildcards):
    return source_arg(SAMPLED_ENTRIES[wildcards.prompt_set]["source"], TOY_PROMPTS)


def one_of(names):
    """A wildcard constraint matching exactly one of ``names`` (sweep values hold dots)."""
    return "|".join(map(re.escape, names))


def method_config(model):
    """One trained model's resolved training config: shared defaults, the method's overrides,
    a sweep point's value, and its replicate's seed; one tracker project per workflow run,
    one tracker run per model. A later round whose reference is the base starts from the
    previous round's folder (``init``)."""
    project = config["training"].get("tracker_project") or f"dspo-{config['name']}"
    cfg = {**experiments.method_config(config, TRAINED[model]), "tracker_project": project}
    trained = TRAINED[model]
    if trained.previous and experiments.round_reference(config, trained.method) == "base":
        cfg["init"] = f"results/models/{trained.previous}"
    return cfg


def train_base(wildcards):
    """The model a training job starts from and holds as its reference: the base model, or
    a later round's previous model when that is its reference."""
    trained = TRAINED[wildcards.method]
    if trained.previous and experiments.round_reference(config, trained.method) == "previous":
        return f"results/models/{trained.previous}"
    return BASE["path"]


def previous_round_input(wildcards):
    previous = TRAINED[wildcards.method].previous
    return [f"results/models/{previous}"] if previous else []


def training_view_caption(model):
    """What the training view's caption states of one trained model: its resolved settings,
    and where it comes from (a method, a replicate of one, or a sweep point of one)."""
    trained, cfg = TRAINED[model], method_config(model)
    return {
        "method": trained.method,
        "replicate": trained.replicate,
        "sweep": trained.sweep,
        "value": trained.value,
        "keys": list(trained.overrides),
        **{
            key: cfg.get(key)
            for key in ("objective", "steps", "log_every", "validate_every", "seed")
        },
    }


def precomputes_reference(method):
    """Whether the method's reference runs in jobs before training: asked for, and possible
    for its objective (one with a reference that is not its target)."""
    cfg = method_config(method)
    return (
        bool(cfg.get("precompute_reference"))
        and get_objective(cfg["objective"]).reference_precomputable
    )


def reference_input(wildcards):
    if precomputes_reference(wildcards.method):
        return [f"results/reference/{wildcards.method}"]
    return []


def reference_option(wildcards, input):
    return f"--reference {shlex.quote(input.reference[0])}" if input.reference else ""


def reference_parts(wildcards):
    """The folders of the reference.shards parts of one method's precomputed reference."""
    parts = range(config["reference"]["shards"])
    return expand("results/reference/{method}.parts/{part}", method=wildcards.method, part=parts)


def reference_config(method):
    return {**method_config(method), **config["reference"]}


def method_cache(wildcards):
    return f"results/cache/{method_config(wildcards.method)['data']}"


def validation_prompts_input(wildcards):
    """The table of the prompt set whose first prompts a method's validation images add
    (training.validation.from_prompt_set), when it names one and the method validates.
    Ancient: validation images are for watching and do not shape the weights, so a rebuilt
    prompt table (its file newer) never retrains a model; a changed count does (params)."""
    name = validation_set(method_config(wildcards.method))
    return [ancient(f"results/data/prompts/{name}.parquet")] if name else []


def validation_prompts_option(wildcards, input):
    prompts = input.validation_prompts
    return f"--validation-prompts {shlex.quote(prompts[0])}" if prompts else ""


def train_launcher(wildcards, resources, threads):
    """The command that starts `dspo` as one process per GPU of each node (dspo/training/launch.py).

    One node: the launcher itself. Several (resource `nodes`): srun starts one launcher per
    node, which reads its rank and the main node from SLURM. The trainer accumulates over
    processes x local pairs, so the effective batch in pairs stays as configured. Being a
    function of `resources`, this param is no rerun trigger.
    """
    nodes = int(resources.get("nodes", 1) or 1)
    per_node = int(resources.get("gpus_per_node", 0) or resources.get("gpu", 0) or 1)
    # Without CUDA (the toy preset on a test cluster's fake GPUs), the processes join one CPU
    # (gloo) group only when told.
    cpu = " --cpu" if DEVICE == "cpu" else ""
    launch = f"python -m dspo.training.launch --procs-per-node {per_node}{cpu}"
    if nodes == 1:
        return f"{launch} --"
    # --overlap: the job step of this command already holds the first node's CPUs and GPUs.
    # --kill-on-bad-exit: a node whose processes failed ends the others, which would wait
    # for it in a collective; a stop signal's checkpoint is complete before any of them exits.
    srun = (
        f"srun --overlap --nodes {nodes} --ntasks-per-node 1 --cpus-per-task {threads}"
        " --kill-on-bad-exit=1"
    )
    return f"{srun} {launch} --slurm --"


def released_input(wildcards):
    """A released model's local folder (so replacing it reimports); the fetch record of a
    hub id (rule fetch_item downloads it)."""
    source = RELEASED[wildcards.model]
    return [source] if os.path.exists(source) else fetched(f"released.{wildcards.model}")


def model_path(wildcards):
    return BASE["path"] if wildcards.model == "base" else f"results/models/{wildcards.model}"


def model_input(wildcards):
    if wildcards.model == "base":
        return base_model_input()
    return [f"results/models/{wildcards.model}"]


def sampling_config():
    keys = ("seeds", "guidance", "steps", "scheduler", "resolution", "batch_size")
    # The compute dtype on an accelerator (the CPU samples in float32; dspo.generation.sample says why).
    return {**{k: EVALUATION[k] for k in keys}, "dtype": BASE.get("dtype", "float32")}


def generation_config():
    """The generate job's slice: sampling, and the editing strength when it edits too."""
    return {**sampling_config(), "strength": EDITING["strength"]} if EDITING else sampling_config()


def editing_table_input(wildcards):
    return [EDITING_TABLE] if EDITING else []


def editing_manifest_output():
    return ["results/images/{model}/editing/manifest.parquet"] if EDITING else []


def editing_options(wildcards, output):
    """The generate job's editing flags; none when editing is off."""
    if not EDITING:
        return ""
    table, manifest = shlex.quote(EDITING_TABLE), shlex.quote(output.editing[0])
    return f"--editing-set {table} --editing-out {manifest}"


def editing_source_input(wildcards):
    return source_inputs(EDITING["source"], TOY_EDITING) + fetched("editing")


def rewards_input(wildcards):
    """The fetch records of the reward models' hub parts."""
    return fetched(*(item for item in FETCH_ITEMS if item.startswith("reward.")))


def reward_config():
    return {
        name: {k: v for k, v in spec.items() if k != "label"}
        for name, spec in REWARD_ENTRIES.items()
    }


def tables_config():
    labels = dict(EVALUATION.get("labels", {}))
    for spec in (PROMPT_SET_ENTRIES, REWARD_ENTRIES, BINDING_ENTRIES):
        labels.update({name: s["label"] for name, s in spec.items() if "label" in s})
    if EDITING and "label" in EDITING:
        labels["editing"] = EDITING["label"]
    for group, (method, round_) in ROUND_GROUPS.items():
        labels.setdefault(group, f"{labels.get(method, method)} round {round_}")
    return {
        "methods": TABLE_METHODS,
        "groups": experiments.group_of(TRAINED, list(RELEASED)),
        "notes": feedback_notes(labels),
        "sweeps": experiments.sweep_points(config, TRAINED),
        "rewards": list(REWARD_ENTRIES),
        "prompt_sets": TEST_SETS,
        "labels": labels,
        "bootstrap": EVALUATION["bootstrap"],
        "paper_tables": PAPER_TABLES,
        "step_selection": step_selection_config(),
    }


def feedback_notes(labels):
    """The tables' sentences on AI feedback: which reward labelled the generated pairs, which
    rewards did not (held out), and each multi-round method's reference; none without a
    generated source."""
    if not GENERATED:
        return []
    name = lambda key: labels.get(key, key)
    weights = GENERATED["weights"]
    labelling = label_name({name(k): w for k, w in weights.items()})
    held_out = [name(r) for r in REWARD_ENTRIES if r not in weights]
    source = "the base model" if GENERATED["model"] == "base" else name(GENERATED["model"])
    notes = [
        f"Training pairs are AI feedback: {GENERATED['images_per_prompt']} images per prompt "
        f"sampled from {source}, labelled by {labelling} (rule {GENERATED['rule']}, "
        f"margin {GENERATED['margin']:g}). Held-out rewards (not used to label): "
        f"{', '.join(held_out) if held_out else 'none'}; a gain under the labelling reward "
        "alone may be reward hacking."
    ]
    for method in METHOD_ENTRIES:
        if experiments.rounds(config, method) > 1:
            reference = experiments.round_reference(config, method)
            what = "the previous round's model" if reference == "previous" else "the base model"
            notes.append(
                f"{name(method)}: {experiments.rounds(config, method)} rounds; round r samples "
                f"its pairs from round r-1's model and starts from its weights; reference: {what}."
            )
    return notes


def step_selection_config():
    """The tables step's step choice: the validation set, the reward and each trained model's
    candidates, step: row (null when not chosen)."""
    if not STEP_SELECTION:
        return None
    return {**STEP_SELECTION, "candidates": experiments.step_candidates(config, TRAINED)}


def step_selection_outputs():
    if not STEP_SELECTION:
        return []
    return expand("results/tables/step_selection.{ext}", ext=["md", "csv"])


def interval_captions():
    """What the report's captions say their intervals resample (dspo/evaluation/intervals.py)."""
    return caption_sentences(config, TRAINED)


def binding_config():
    """The binding table's slice: the tables' rows (each method, then its later rounds), its
    prompt sets, labels and bootstrap."""
    labels = tables_config()["labels"]
    return {
        "methods": TABLE_METHODS,
        "groups": experiments.group_of(TRAINED, list(RELEASED)),
        "prompt_sets": BINDING_SETS,
        "labels": labels,
        "bootstrap": EVALUATION["bootstrap"],
        "title": BINDING.get("title", "Attribute binding (B-VQA)"),
    }


def binding_scorer():
    """`dspo score`'s rewards: the B-VQA scorer alone, named bvqa."""
    return {"bvqa": BINDING["scorer"]}


def binding_score_files(wildcards=None):
    return expand(
        "results/scores_binding/{model}/{prompt_set}.parquet", model=MODELS, prompt_set=BINDING_SETS
    )


def binding_table_file(wildcards=None):
    """The attribute-binding table, for the ddspo table's B-VQA columns; none when off."""
    return [BINDING_TABLE] if BINDING_SETS else []


def binding_table_option(wildcards, input):
    return f"--binding {shlex.quote(input.binding[0])}" if input.binding else ""


def score_files(wildcards=None):
    return expand("results/scores/{model}/{prompt_set}.parquet", model=MODELS, prompt_set=EVAL_SETS)


def quality_files(wildcards=None):
    return expand("results/quality/{model}.csv", model=MODELS) if QUALITY else []


def quality_option(wildcards, input):
    return f"--quality {shlex.join(input.quality)}" if input.quality else ""


def grid_sources(wildcards):
    """The editing set, for the editing grid's source column; nothing for prompt sets."""
    return [EDITING_TABLE] if wildcards.prompt_set == "editing" else []


def grid_sources_option(wildcards, input):
    return f"--editing-set {shlex.quote(input.sources[0])}" if input.sources else ""


def summary_config():
    """The run summary's headline: DSPO (else the first method) under the first reward."""
    method = "dspo" if "dspo" in METHOD_ENTRIES else next(iter(METHOD_ENTRIES))
    return {
        "preset": config["name"],
        "method": method,
        "reward": next(iter(REWARD_ENTRIES)),
        "labels": tables_config()["labels"],
        "benchmarks": "results/benchmarks",
        **rounds_summary_config(),
    }


def rounds_summary_config():
    """The summary's rounds (dspo/evaluation/rounds.py): each multi-round method's rows in
    round order, judged by the first evaluation reward that did not label; none without."""
    if not ROUND_GROUPS:
        return {}
    weights = GENERATED["weights"]
    held_out = [r for r in REWARD_ENTRIES if r not in weights]
    rows = {
        method: [r for r in TABLE_METHODS if r == method or ROUND_GROUPS.get(r, ("",))[0] == method]
        for method in dict.fromkeys(m for m, _ in ROUND_GROUPS.values())
    }
    replicates = [
        sum(1 for m in TRAINED.values() if m.group == row) for r in rows.values() for row in r
    ]
    return {
        "rounds": rows,
        "rounds_reward": held_out[0] if held_out else next(iter(REWARD_ENTRIES)),
        "labelling": [r for r in weights if r in REWARD_ENTRIES],
        "replicates": replicates,
    }
