"""Rounds of AI feedback (dspo.config.experiments): each round a model of its own, trained on the
pairs sampled from the round before, and the config errors of rounds named by key."""

from __future__ import annotations

from pathlib import Path

from dspo.config.check import config_problems
from dspo.config.experiments import group_of, method_config, round_rows, trained_models
from dspo.config.step import deep_merge, workflow_config

REPO = Path(__file__).resolve().parents[2]
SHIPPED = workflow_config([])
# As snakemake --configfile gives it: the preset deep-merged over config/config.yaml.
AI_FEEDBACK = workflow_config([REPO / "config" / "presets" / "ai-feedback.yaml"])


def test_each_round_of_each_replicate_is_a_model_of_the_round_before() -> None:
    config = deep_merge(
        AI_FEEDBACK, {"training": {"replicates": 2}, "methods": {"dspo": {"rounds": 3}}}
    )
    models = trained_models(config)
    assert [m for m in models if m.startswith("dspo")] == [
        "dspo", "dspo-r1", "dspo@round2", "dspo-r1@round2", "dspo@round3", "dspo-r1@round3",
    ]  # fmt: skip
    assert models["dspo-r1@round3"].previous == "dspo-r1@round2"
    assert models["dspo-r1@round2"].previous == "dspo-r1"
    assert models["dspo"].previous is None
    assert group_of(models)["dspo-r1@round2"] == ["dspo@round2", 1]
    # Round r trains on the pairs sampled from round r-1, with the replicate's seed.
    assert method_config(config, models["dspo-r1@round2"])["data"] == "generated_dspo-r1"
    assert (
        method_config(config, models["dspo-r1@round2"])["seed"] == SHIPPED["training"]["seed"] + 1
    )
    # Round 1 is the method as it would be without rounds: adding rounds retrains nothing.
    without = deep_merge(config, {"methods": {"dspo": {"rounds": 1}}})
    assert method_config(config, models["dspo"]) == method_config(
        without, trained_models(without)["dspo"]
    )
    assert round_rows(config) == ["diffusion_dpo@round2", "dspo@round2", "dspo@round3"]


def test_the_preset_is_valid_and_round_errors_name_their_keys(tmp_path: Path) -> None:
    assert config_problems(AI_FEEDBACK, REPO) == []
    human = deep_merge(SHIPPED, {"methods": {"dspo": {"rounds": 2, "lora": {"rank": 4}}}})
    problems = "\n".join(config_problems(human, REPO))
    assert "methods.dspo.rounds: needs a generated pair source" in problems
    assert "methods.dspo.lora: rounds start from whole weights" in problems
    table = deep_merge(AI_FEEDBACK, {"evaluation": {"tables": {"t": {"methods": ["sft@round2"]}}}})
    assert "evaluation.tables.t.methods: unknown methods 'sft@round2'" in "\n".join(
        config_problems(table, REPO)
    )
