"""The models a workflow trains: each method, its training replicates and its sweep points.

A config's ``methods`` name what the paper's tables compare. Two entries turn one method into
several trained models, each trained, sampled and scored like a method of its own:

- ``training.replicates: R`` (shared, or in a method's own ``training``) trains the method R
  times with training seeds ``seed, seed + 1, ..., seed + R - 1`` (data order, noise,
  timesteps, dropout). Replicate 0 keeps the method's name, so adding replicates reruns
  nothing already trained; replicate r is ``{method}-r{r}``.
- ``sweeps: {name: {method, keys, values, replicates}}`` trains ``method`` once per value,
  with every dotted key of ``keys`` (``params.lam``, ``training.learning_rate``) set to that
  value: model ``{name}-{value}`` (``-r{r}`` appended for its replicates).

- ``rounds: N`` on a method (with a generated pair source, ``dspo.data.generated_config``)
  trains it N times in a row: round 1 on the source's pairs (sampled from the base model),
  round r on pairs sampled from round r-1's model, starting from round r-1's weights. Round 1
  keeps the method's name; round r of each replicate is ``{replicate}@round{r}``, its group
  ``{method}@round{r}``. ``round_reference`` says whether round r's reference is the base
  model or round r-1's model (``previous``, the default).

Tables report each *group* (a method, a round of one, or a sweep point) as the mean over its
replicates; the scores of a model carry its group and replicate (``group_of``).

A method entry with ``model: SOURCE`` (a hub id or a local folder) names a *released* model:
it is imported (``dspo.hub.released``), sampled and scored like the others, but never trained, so
it has no objective, hyper-parameters, training settings or replicates (``released_models``).

``training.evaluate_steps`` keeps a trained model's earlier steps as models of their own,
``{model}@{step}`` (``dspo@100``, ``dspo-r1@100``; ``step_models``), sampled and scored like
the others; ``evaluation.step_selection`` then picks each trained model's step among them and
its last (``step_candidates``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dspo.config.names import entries


@dataclass(frozen=True)
class TrainedModel:
    """One training run of the workflow and the table row it reports under."""

    name: str
    method: str
    group: str
    replicate: int = 0
    sweep: str | None = None
    value: float | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    round: int = 1
    # The model round ``round`` samples its pairs from and starts from (round 1: none).
    previous: str | None = None


def value_name(value: float) -> str:
    """A sweep value as it appears in model names and paths: 0.001, 1, 1e-05, 2.5."""
    return format(float(value), "g")


def _replicate_name(group: str, replicate: int) -> str:
    return group if replicate == 0 else f"{group}-r{replicate}"


def round_name(name: str, round_: int) -> str:
    """Round ``round_`` of the model ``name`` (round 1 is the model itself)."""
    return name if round_ == 1 else f"{name}@round{round_}"


def rounds(config: Mapping[str, Any], method: str) -> int:
    """How many rounds a method trains (1 without ``rounds``)."""
    return int(config["methods"][method].get("rounds") or 1)


# methods.<name>.round_reference: the reference from round 2 on (the first is the default).
ROUND_REFERENCES = ("previous", "base")


def round_reference(config: Mapping[str, Any], method: str) -> str:
    """A method's reference from round 2 on: ``previous`` (round r-1's model) or ``base``."""
    return str(config["methods"][method].get("round_reference") or ROUND_REFERENCES[0])


def round_rows(config: Mapping[str, Any]) -> list[str]:
    """The table rows of the methods' later rounds (``{method}@round{r}``), which tables name."""
    return [
        round_name(method, r)
        for method, entry in entries(config["methods"]).items()
        for r in range(2, int(entry.get("rounds") or 1) + 1)
    ]


def generated_dataset(model: str) -> str:
    """The pair set sampled from ``model`` for the next round (``generated_<model>``)."""
    return f"generated_{model}"


def _replicates(config: Mapping[str, Any], method: str) -> int:
    entry = config["methods"][method]
    own = (entry.get("training") or {}).get("replicates")
    return int(own if own is not None else config["training"].get("replicates", 1))


def released_models(config: Mapping[str, Any]) -> dict[str, str]:
    """The method entries naming an existing model, by name: the model's hub id or folder."""
    return {
        name: str(entry["model"])
        for name, entry in entries(config["methods"]).items()
        if entry.get("model") is not None
    }


def trained_models(config: Mapping[str, Any]) -> dict[str, TrainedModel]:
    """Every model the config trains, by name: methods first (replicates after the first),
    then the sweeps' points in the order of their values. Released models are not trained."""
    models: dict[str, TrainedModel] = {}
    released = released_models(config)
    for method in entries(config["methods"]):
        if method in released:
            continue
        for r in range(_replicates(config, method)):
            name = _replicate_name(method, r)
            models[name] = TrainedModel(name, method, method, r)
        for round_ in range(2, rounds(config, method) + 1):
            for r in range(_replicates(config, method)):
                first = _replicate_name(method, r)
                name = round_name(first, round_)
                group = round_name(method, round_)
                previous = round_name(first, round_ - 1)
                models[name] = TrainedModel(name, method, group, r, round=round_, previous=previous)
    for sweep, spec in entries(config.get("sweeps")).items():
        for value in spec["values"]:
            group = f"{sweep}-{value_name(value)}"
            overrides = dict.fromkeys(spec["keys"], value)
            for r in range(int(spec.get("replicates", 1))):
                name = _replicate_name(group, r)
                models[name] = TrainedModel(
                    name, spec["method"], group, r, sweep, float(value), overrides
                )
    clashes = sorted(set(models) & {"base", *released})
    if clashes:
        raise ValueError(f"trained model names clash with the base model: {clashes}")
    return models


def step_name(model: str, step: int) -> str:
    """The name of a trained model's kept step: ``dspo@100``."""
    return f"{model}@{step}"


def step_models(
    config: Mapping[str, Any], models: Mapping[str, TrainedModel]
) -> dict[str, tuple[str, int]]:
    """The kept steps to sample and score, by name: (trained model, step), for each step of
    its ``training.evaluate_steps`` short of its last (which is the trained model itself)."""
    kept = {}
    for name, model in models.items():
        cfg = method_config(config, model)
        for step in sorted({int(s) for s in cfg.get("evaluate_steps") or []}):
            if step < int(cfg["steps"]):
                kept[step_name(name, step)] = (name, step)
    return kept


def step_candidates(
    config: Mapping[str, Any], models: Mapping[str, TrainedModel]
) -> dict[str, dict[int, str]]:
    """For the tables step: each trained model's candidate steps, step: row (its kept steps,
    and its last step, whose row is the model itself)."""
    candidates = {
        name: {int(method_config(config, m)["steps"]): name} for name, m in models.items()
    }
    for row, (name, step) in step_models(config, models).items():
        candidates[name][step] = row
    return {name: dict(sorted(steps.items())) for name, steps in candidates.items()}


def _set_dotted(entry: dict[str, Any], key: str, value: Any) -> None:
    section, _, leaf = key.partition(".")
    entry[section] = {**(entry.get(section) or {}), leaf: value}


def method_config(config: Mapping[str, Any], model: TrainedModel) -> dict[str, Any]:
    """A trained model's resolved training config: shared defaults, the method's overrides,
    then the sweep's value; the replicate shifts the training seed.

    ``replicates`` is not part of it: how many replicates a method has is no property of one
    run, and changing it must not retrain the runs that already exist.
    """
    entry = copy.deepcopy(dict(config["methods"][model.method]))
    for key, value in model.overrides.items():
        _set_dotted(entry, key, value)
    training = {**config["training"], **(entry.get("training") or {})}
    training.pop("replicates", None)
    training["seed"] = training["seed"] + model.replicate
    return {
        **training,
        "name": model.name,
        "objective": entry["objective"],
        "data": generated_dataset(model.previous) if model.previous else entry.get("data", "pairs"),
        # A param set to null is absent: a preset can drop one that deep-merge would keep.
        "params": entries(entry.get("params") or {}),
        "lora": entry.get("lora"),
    }


def group_of(
    models: Mapping[str, TrainedModel], released: Sequence[str] = ()
) -> dict[str, list[Any]]:
    """For the tables step: each trained model's [group, replicate] (JSON-friendly); a
    released model is a group of its own with one replicate."""
    groups = {name: [m.group, m.replicate] for name, m in models.items()}
    return {**groups, **{name: [name, 0] for name in released}}


# What a released model's entry may hold besides `model`: none of it trains anything.
_TRAINING_KEYS = ("objective", "params", "data", "lora")


def released_problems(config: Mapping[str, Any], root: Any) -> list[str]:
    """Config errors of the method entries: one that names neither a model nor an objective,
    a released model with training settings or replicates, a sweep of a released model, and
    a released model that is neither an existing local folder nor a hub id (relative to
    ``root``), each naming its key."""
    from dspo.config.names import is_hub_id

    problems = []
    released = released_models(config)
    for name, entry in entries(config["methods"]).items():
        where = f"methods.{name}"
        if name not in released:
            if entry.get("objective") is None:
                problems.append(f"{where}: give an objective to train, or a model to import")
            continue
        for key in _TRAINING_KEYS:
            if entry.get(key) is not None:
                problems.append(
                    f"{where}.{key}: a released model ({where}.model) is not trained; remove {key}"
                )
        training = dict(entry.get("training") or {})
        replicates = training.pop("replicates", None)
        if training:
            problems.append(
                f"{where}.training: a released model ({where}.model) is not trained; "
                f"remove {sorted(training)}"
            )
        if replicates is not None and int(replicates) > 1:
            problems.append(
                f"{where}.training.replicates: a released model is one model, not {replicates}"
            )
        source = released[name]
        if not (root / source).exists() and not is_hub_id(source, root):
            problems.append(
                f"{where}.model: local model {source!r} does not exist (relative to {root}); "
                "a hub id has the form owner/name"
            )
    for sweep, spec in entries(config.get("sweeps")).items():
        if spec["method"] in released:
            problems.append(
                f"sweeps.{sweep}.method: {spec['method']!r} is a released model, not trained"
            )
    return problems


def sweep_points(
    config: Mapping[str, Any], models: Mapping[str, TrainedModel]
) -> dict[str, dict[str, Any]]:
    """For the tables step: each sweep's method, keys, and its groups with their values."""
    sweeps = {}
    for sweep, spec in entries(config.get("sweeps")).items():
        points = {m.group: m.value for m in models.values() if m.sweep == sweep}
        sweeps[sweep] = {
            "method": spec["method"],
            "keys": list(spec["keys"]),
            "points": points,
            "compare": list(spec.get("compare") or []),
            "reward": spec.get("reward"),
        }
    return sweeps


def sweep_problems(config: Mapping[str, Any], objective_params: Any) -> list[str]:
    """Config errors of the sweeps, each naming its key. ``objective_params(objective)`` gives
    the hyper-parameter names an objective accepts."""
    problems = []
    methods = entries(config["methods"])
    training_keys = set(config["training"])
    for sweep, spec in entries(config.get("sweeps")).items():
        where = f"sweeps.{sweep}"
        method = spec["method"]
        if method not in methods:
            problems.append(f"{where}.method: {method!r} is not a configured method")
            continue
        for key in spec["keys"]:
            section, _, leaf = key.partition(".")
            if section == "params":
                known: Sequence[str] = objective_params(methods[method]["objective"])
            elif section == "training":
                known = sorted(training_keys - {"replicates", "seed"})
            else:
                problems.append(f"{where}.keys: {key!r} must start with 'params.' or 'training.'")
                continue
            if leaf not in known:
                problems.append(f"{where}.keys: {key!r} is not one of {sorted(known)}")
        for other in spec.get("compare") or []:
            if other not in methods:
                problems.append(f"{where}.compare: {other!r} is not a configured method")
        reward = spec.get("reward")
        if reward is not None and reward not in entries(config["evaluation"]["rewards"]):
            problems.append(f"{where}.reward: {reward!r} is not a configured reward")
        if len({value_name(v) for v in spec["values"]}) != len(spec["values"]):
            problems.append(f"{where}.values: values repeat: {spec['values']}")
    return problems


def round_problems(config: Mapping[str, Any]) -> list[str]:
    """Config errors of methods with ``rounds``, each naming its key: rounds need a generated
    pair source (``pairs.source.kind: generated``), round 1 must train on its pairs (``data``
    unset or ``pairs``), and a round starts from the previous round's whole weights, so not
    with LoRA, a released model or a precomputed reference."""
    problems = []
    generated = config["pairs"]["source"].get("kind") == "generated"
    for name, entry in entries(config["methods"]).items():
        if int(entry.get("rounds") or 1) == 1:
            continue
        where = f"methods.{name}"
        if not generated:
            problems.append(f"{where}.rounds: needs a generated pair source (pairs.source.kind)")
        if entry.get("data", "pairs") != "pairs":
            problems.append(f"{where}.data: round 1 trains on the generated pairs (data: pairs)")
        if entry.get("model") is not None:
            problems.append(f"{where}.rounds: a released model ({where}.model) is not trained")
        if entry.get("lora") is not None:
            problems.append(f"{where}.lora: rounds start from whole weights; use full fine-tuning")
        training = {**config["training"], **(entry.get("training") or {})}
        if training.get("precompute_reference"):
            problems.append(
                f"{where}.training.precompute_reference: not with rounds (the reference changes)"
            )
    return problems


def step_problems(config: Mapping[str, Any]) -> list[str]:
    """Config errors of step selection, each naming its key: a kept step past a model's last,
    kept steps with no ``evaluation.step_selection`` to use them, a selection naming a prompt
    set or reward that is not configured, and a paper table listing the validation set."""
    problems = []
    # A sweep naming an unknown method, or an entry with no objective, is reported elsewhere.
    methods = entries(config["methods"])
    models = {
        n: m
        for n, m in trained_models(config).items()
        if "objective" in (methods.get(m.method) or {})
    }
    for name, model in models.items():
        cfg = method_config(config, model)
        past = sorted(s for s in cfg.get("evaluate_steps") or [] if s > cfg["steps"])
        if past:
            own = (config["methods"][model.method].get("training") or {}).get("evaluate_steps")
            where = "training" if own is None else f"methods.{model.method}.training"
            problems.append(
                f"{where}.evaluate_steps: {past} past the {cfg['steps']} steps of {name}"
            )
    evaluation = config["evaluation"]
    selection = evaluation.get("step_selection")
    if selection is None:
        if step_models(config, models):
            problems.append(
                "training.evaluate_steps: kept steps need evaluation.step_selection "
                "(a validation prompt set and a reward) to choose among them"
            )
        return problems
    validation, reward = selection["prompt_set"], selection["reward"]
    if validation not in entries(evaluation["prompt_sets"]):
        problems.append(
            f"evaluation.step_selection.prompt_set: {validation!r} is not a configured prompt set"
        )
    if reward not in entries(evaluation["rewards"]):
        problems.append(f"evaluation.step_selection.reward: {reward!r} is not a configured reward")
    for table, spec in entries(evaluation.get("tables")).items():
        if validation in (spec.get("prompt_sets") or []):
            problems.append(
                f"evaluation.tables.{table}.prompt_sets: {validation!r} validates the step "
                "choice (evaluation.step_selection); a table reports test sets only"
            )
    return problems
