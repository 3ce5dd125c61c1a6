# Helpers shared by the workflow: artefact paths and the config slice of each step.
# Steps receive their config slice as a param, so editing a slice reruns that step and what
# depends on it, and nothing else.
import json


def entries(mapping):
    """The entries of a config mapping that a preset has not dropped by setting them to null."""
    return {name: value for name, value in mapping.items() if value is not None}


EVALUATION = config["evaluation"]
METHOD_ENTRIES = entries(config["methods"])
PROMPT_SET_ENTRIES = entries(EVALUATION["prompt_sets"])
REWARD_ENTRIES = entries(EVALUATION["rewards"])
METHODS = list(METHOD_ENTRIES)
MODELS = ["base", *METHODS]
PROMPT_SETS = list(PROMPT_SET_ENTRIES)
BASE = config["base_model"]
BUILD_TOY_BASE = BASE.get("build") == "toy"
DEVICE = config["resources"]["device"]



def as_json(value):
    """A config slice as canonical JSON: equal configs give equal params."""
    return json.dumps(value, sort_keys=True)


def toy_world_used():
    sources = [config["pairs"]["source"]]
    sources += [s["source"] for s in PROMPT_SET_ENTRIES.values()]
    return BUILD_TOY_BASE or any(s["kind"] == "toy" for s in sources)


def base_model_input(wildcards=None):
    """The base model folder when the workflow builds it; nothing for a hub id or a local model."""
    return [BASE["path"]] if BUILD_TOY_BASE else []


def pairs_source_input(wildcards):
    return ["results/data/toy/pairs"] if config["pairs"]["source"]["kind"] == "toy" else []


def prompt_source_input(wildcards):
    kind = PROMPT_SET_ENTRIES[wildcards.prompt_set]["source"]["kind"]
    return ["results/data/toy/prompts.parquet"] if kind == "toy" else []


def method_config(method):
    """One method's resolved training config: shared defaults, then the method's overrides."""
    entry = METHOD_ENTRIES[method]
    return {
        **config["training"],
        **entry.get("training", {}),
        "name": method,
        "objective": entry["objective"],
        "data": entry.get("data", "pairs"),
        "params": entry.get("params", {}),
        "lora": entry.get("lora"),
    }


def method_cache(wildcards):
    return f"results/cache/{method_config(wildcards.method)['data']}"


def model_path(wildcards):
    return BASE["path"] if wildcards.model == "base" else f"results/models/{wildcards.model}"


def model_input(wildcards):
    if wildcards.model == "base":
        return base_model_input()
    return [f"results/models/{wildcards.model}"]


def sampling_config():
    keys = ("seeds", "guidance", "steps", "scheduler", "resolution", "batch_size")
    return {k: EVALUATION[k] for k in keys}


def reward_config():
    return {
        name: {k: v for k, v in spec.items() if k != "label"}
        for name, spec in REWARD_ENTRIES.items()
    }


def tables_config():
    labels = dict(EVALUATION.get("labels", {}))
    for spec in (PROMPT_SET_ENTRIES, REWARD_ENTRIES):
        labels.update({name: s["label"] for name, s in spec.items() if "label" in s})
    return {
        "methods": METHODS,
        "rewards": list(REWARD_ENTRIES),
        "prompt_sets": PROMPT_SETS,
        "labels": labels,
        "bootstrap": EVALUATION["bootstrap"],
    }


def score_files(wildcards=None):
    return expand("results/scores/{model}/{prompt_set}.parquet", model=MODELS, prompt_set=PROMPT_SETS)
