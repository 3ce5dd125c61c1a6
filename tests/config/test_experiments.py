"""Training replicates and sensitivity sweeps: which models a config trains, with which
settings, how their scores reach the tables, and the sweep's table and plot."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from dspo.config.check import config_problems
from dspo.config.experiments import (
    group_of,
    method_config,
    step_candidates,
    step_models,
    sweep_points,
    trained_models,
)
from dspo.evaluation.sweeps import relabel_groups, sweep_table, write_sweep
from dspo.evaluation.tables import write_tables

REPO = Path(__file__).resolve().parents[2]
SHIPPED = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def _one_replicate(config: dict) -> dict:
    """``config`` with every method trained once: the tests add replicates themselves."""
    config = copy.deepcopy(config)
    config["training"]["replicates"] = 1
    for entry in config["methods"].values():
        if entry and "training" in entry:
            entry["training"].pop("replicates", None)
    return config


DEFAULT = _one_replicate(SHIPPED)
SWEEP = {"method": "dspo", "keys": ["params.lam", "params.kappa"], "values": [0.01, 1, 10]}


def config_with(**changes) -> dict:
    config = copy.deepcopy(DEFAULT)
    for key, value in changes.items():
        config[key] = value
    return config


def test_replicates_are_models_with_shifted_seeds_and_replicate_zero_unchanged() -> None:
    plain = config_with()
    config = config_with(training={**DEFAULT["training"], "replicates": 3})
    models = trained_models(config)
    assert [n for n in models if n.startswith("dspo")][:4] == [
        "dspo",
        "dspo-r1",
        "dspo-r2",
        "dspo_ref",
    ]
    assert len(models) == 3 * len(trained_models(plain))
    # Replicate 0 keeps its name and its whole config: adding replicates retrains nothing.
    assert method_config(config, models["dspo"]) == method_config(
        plain, trained_models(plain)["dspo"]
    )
    seeds = [method_config(config, models[n])["seed"] for n in ("dspo", "dspo-r1", "dspo-r2")]
    assert seeds == [DEFAULT["training"]["seed"] + r for r in range(3)]
    assert "replicates" not in method_config(config, models["dspo-r2"])
    assert group_of(models)["dspo-r2"] == ["dspo", 2]


def test_the_default_trains_three_replicates_of_table_1_and_one_of_each_ablation() -> None:
    models = trained_models(SHIPPED)
    for method in ("sft", "diffusion_dpo", "diffusion_kto", "mapo", "dspo", "ddspo"):
        assert [n for n in models if n.split("-r")[0] == method] == [
            method,
            f"{method}-r1",
            f"{method}-r2",
        ]
    for ablation in ("dspo_ref", "dspo_e", "dspo_nodup", "dspo_lora"):
        assert ablation in models and f"{ablation}-r1" not in models


def test_a_method_can_have_its_own_replicate_count() -> None:
    methods = copy.deepcopy(DEFAULT["methods"])
    methods["sft"]["training"] = {"replicates": 2}
    models = trained_models(config_with(methods=methods))
    assert "sft-r1" in models and "dspo-r1" not in models


def test_sweep_points_set_every_key_and_report_under_their_own_group() -> None:
    config = config_with(sweeps={"lam": {**SWEEP, "replicates": 2, "compare": ["sft"]}})
    models = trained_models(config)
    assert [n for n in models if n.startswith("lam")] == [
        "lam-0.01",
        "lam-0.01-r1",
        "lam-1",
        "lam-1-r1",
        "lam-10",
        "lam-10-r1",
    ]
    cfg = method_config(config, models["lam-10-r1"])
    assert cfg["params"] == {**DEFAULT["methods"]["dspo"].get("params", {}), "lam": 10, "kappa": 10}
    assert cfg["seed"] == DEFAULT["training"]["seed"] + 1 and cfg["name"] == "lam-10-r1"
    # The swept method itself is untouched.
    assert method_config(config, models["dspo"])["params"] == DEFAULT["methods"]["dspo"].get(
        "params", {}
    )
    points = sweep_points(config, models)["lam"]
    assert points["points"] == {"lam-0.01": 0.01, "lam-1": 1.0, "lam-10": 10.0}
    assert points["compare"] == ["sft"]


@pytest.mark.parametrize(
    ("sweep", "named"),
    [
        ({**SWEEP, "method": "dpso"}, "sweeps.s.method: 'dpso'"),
        ({**SWEEP, "keys": ["params.lamb"]}, "sweeps.s.keys: 'params.lamb'"),
        ({**SWEEP, "keys": ["training.lr_typo"]}, "sweeps.s.keys: 'training.lr_typo'"),
        ({**SWEEP, "keys": ["lora.rank"]}, "sweeps.s.keys: 'lora.rank'"),
        ({**SWEEP, "compare": ["sfft"]}, "sweeps.s.compare: 'sfft'"),
        ({**SWEEP, "reward": "nope"}, "sweeps.s.reward: 'nope'"),
        ({**SWEEP, "values": [1, 1.0]}, "sweeps.s.values"),
    ],
)
def test_bad_sweeps_are_config_errors_naming_the_key(sweep: dict, named: str) -> None:
    problems = config_problems(config_with(sweeps={"s": sweep}), REPO)
    assert any(p.startswith(named) for p in problems), problems


def with_steps(shared: list[int], dspo: list[int] | None = None, selection: bool = True) -> dict:
    """The default config keeping ``shared`` steps of every method (``dspo``: DSPO's own),
    two DSPO replicates and, with ``selection``, a validation set that picks among them."""
    config = copy.deepcopy(DEFAULT)
    config["training"]["evaluate_steps"] = shared
    config["methods"]["dspo"]["training"] = {"replicates": 2}
    if dspo is not None:
        config["methods"]["dspo"]["training"]["evaluate_steps"] = dspo
    if selection:
        toy = {"kind": "toy", "split": "validation"}
        config["evaluation"]["prompt_sets"]["validation"] = {"source": toy}
        config["evaluation"]["step_selection"] = {"prompt_set": "validation", "reward": "oracle"}
    return config


def test_kept_steps_are_models_of_their_own_and_the_last_step_a_candidate() -> None:
    config = with_steps([], dspo=[50, 100, 150])
    models = trained_models(config)
    # Step 150 is the last: the model itself, no extra row.
    assert step_models(config, models) == {
        "dspo@50": ("dspo", 50),
        "dspo@100": ("dspo", 100),
        "dspo-r1@50": ("dspo-r1", 50),
        "dspo-r1@100": ("dspo-r1", 100),
    }
    candidates = step_candidates(config, models)
    assert candidates["dspo-r1"] == {50: "dspo-r1@50", 100: "dspo-r1@100", 150: "dspo-r1"}
    assert candidates["sft"] == {150: "sft"}
    assert not config_problems(config, REPO)
    # Kept steps do not change what the run trains: the same checkpoints, the same model.
    assert "evaluate_steps" in method_config(config, models["dspo"])


@pytest.mark.parametrize(
    ("config", "named"),
    [
        (with_steps([50], selection=False), "training.evaluate_steps: kept steps need"),
        (with_steps([], dspo=[200]), "methods.dspo.training.evaluate_steps: [200] past"),
        (with_steps([160]), "training.evaluate_steps: [160] past the 150 steps of sft"),
    ],
)
def test_bad_step_choices_are_config_errors_naming_the_key(config: dict, named: str) -> None:
    problems = config_problems(config, REPO)
    assert any(p.startswith(named) for p in problems), problems


def test_the_validation_set_is_no_table_s_test_set() -> None:
    config = with_steps([50])
    config["evaluation"]["tables"]["table6"]["prompt_sets"] = ["pickv2", "validation"]
    config["evaluation"]["step_selection"]["reward"] = "pickscore"
    problems = config_problems(config, REPO)
    assert any(p.startswith("evaluation.tables.table6.prompt_sets: 'validation'") for p in problems)
    assert any(p.startswith("evaluation.step_selection.reward: 'pickscore'") for p in problems)


def scores_of(models: dict[str, float], n_prompts: int = 16, seeds: int = 2) -> pd.DataFrame:
    """Scores of a base model and trained models, each shifted by its value's effect."""
    rng = np.random.default_rng(0)
    prompt_id = np.repeat(np.arange(n_prompts), seeds)
    seed = np.tile(np.arange(seeds), n_prompts)
    effect = rng.normal(0, 1, n_prompts)[prompt_id]
    frames = []
    for set_name in ("held", "new"):
        for guidance in (2.0, 4.0):
            common = {"prompt_set": set_name, "prompt_id": prompt_id, "prompt": "x", "seed": seed}
            common |= {"guidance": guidance, "reward": "oracle"}
            frames.append(pd.DataFrame({"model": "base", **common, "score": effect}))
            for model, shift in models.items():
                score = effect + rng.normal(0, 1, len(prompt_id)) + shift
                frames.append(pd.DataFrame({"model": model, **common, "score": score}))
    return pd.concat(frames, ignore_index=True)


def test_replicate_models_become_one_row_with_their_spread(tmp_path: Path) -> None:
    config = config_with(training={**DEFAULT["training"], "replicates": 3})
    groups = group_of(trained_models(config))
    scores = relabel_groups(scores_of({"dspo": 0.0, "dspo-r1": 1.0, "dspo-r2": 2.0}), groups)
    assert sorted(scores["model"].unique()) == ["base", "dspo"]
    assert sorted(scores["replicate"].unique()) == [0, 1, 2]
    write_tables(scores, tmp_path, ["dspo"], ["oracle"], ["held", "new"], n_boot=50)
    wins = pd.read_csv(tmp_path / "win_rates.csv")
    assert (wins["n_replicates"] == 3).all() and (wins["replicate_sd"] > 0).all()
    # Two replicated methods meet in the head-to-head matrix replicate by replicate.
    both = relabel_groups(
        scores_of({"dspo": 0.0, "dspo-r1": 1.0, "sft": 0.5, "sft-r1": 0.5}),
        group_of(trained_models(config_with(training={**DEFAULT["training"], "replicates": 2}))),
    )
    write_tables(both, tmp_path, ["sft", "dspo"], ["oracle"], ["held", "new"], n_boot=50)
    matrix = pd.read_csv(tmp_path / "head_to_head.csv")
    row = matrix[(matrix["model"] == "dspo") & (matrix["opponent"] == "sft")]
    assert len(row) == 4 and row["win_rate"].between(0, 1).all()


def test_sweep_table_and_plot(tmp_path: Path) -> None:
    config = config_with(sweeps={"lam": {**SWEEP, "compare": ["sft"]}})
    models = trained_models(config)
    spec = sweep_points(config, models)["lam"]
    # The win rate grows with the value: the table must keep each point's value beside it.
    scores = relabel_groups(
        scores_of({"sft": 0.3, "lam-0.01": 0.0, "lam-1": 1.0, "lam-10": 3.0}), group_of(models)
    )
    table = sweep_table(scores, spec, n_boot=50)
    held = table[(table["prompt_set"] == "held") & (table["guidance"] == 2.0)]
    assert held["method"].tolist() == ["lam-0.01", "lam-1", "lam-10", "sft"]
    assert held["value"].tolist()[:3] == [0.01, 1.0, 10.0] and np.isnan(held["value"].iloc[3])
    assert held["win_rate"].iloc[2] > held["win_rate"].iloc[0]
    assert table["p_holm"].ge(table["p_value"]).all()
    written = write_sweep(scores, "lam", spec, tmp_path / "tables", tmp_path / "plots", "oracle")
    assert [p.name for p in written] == ["sweep_lam.csv", "sweep_lam.md", "sweep_lam.png"]
    assert "| held | 2 | oracle | lam-10 | 10 |" in written[1].read_text()
    width, height = Image.open(written[2]).size
    assert width > 600 and height > 300
