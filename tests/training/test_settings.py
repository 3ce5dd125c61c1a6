"""A training config is typed and checked before any model loads; bad keys are named."""

from __future__ import annotations

import pytest

from dspo.training.optimisation import OptimiserSettings
from dspo.training.settings import LoraSettings, TrainSettings
from tests.training.test_train import BASE_CONFIG, DSPO, LORA


def test_the_settings_read_every_key_of_a_resolved_config() -> None:
    cfg = {**BASE_CONFIG, **DSPO, "lora": LORA, "name": "dspo_lora"}
    settings = TrainSettings.from_config(cfg)
    assert settings.name == "dspo_lora" and settings.objective == "dspo"
    assert settings.optimiser == OptimiserSettings(
        name=cfg["optimizer"],
        lr=cfg["lr"],
        betas=tuple(cfg["adam_betas"]),
        eps=cfg["adam_eps"],
        weight_decay=cfg["weight_decay"],
        lr_schedule=cfg["lr_schedule"],
        warmup_steps=cfg["warmup_steps"],
        max_grad_norm=cfg["max_grad_norm"],
    )
    assert settings.lora == LoraSettings(
        LORA["rank"], float(LORA["alpha"]), tuple(LORA["target_modules"])
    )
    assert settings.steps == cfg["steps"] and settings.prompt_dropout == cfg["prompt_dropout"]
    # The mapping itself is kept: checkpoint fingerprints and model records are made of it.
    assert settings.resolved is cfg


def test_a_config_without_a_name_is_named_after_its_objective() -> None:
    settings = TrainSettings.from_config({**BASE_CONFIG, **DSPO})
    assert settings.name == "dspo" and settings.lora is None and settings.family_settings == {}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"steps": None}, "lacks steps"),
        ({"stpes": 3}, "unknown key.* stpes"),
        ({"steps": 0}, "training.steps must be at least 1"),
        ({"local_pairs": 3}, "pairs_per_step 4 is not a multiple of training.local_pairs 3"),
        ({"prompt_dropout": 1.5}, "training.prompt_dropout must be in"),
        ({"optimizer": "sgd"}, "training.optimizer 'sgd'"),
        ({"lr_schedule": "cosine"}, "training.lr_schedule 'cosine'"),
        ({"mixed_precision": "fp8"}, "training.mixed_precision 'fp8'"),
        ({"report_to": "mlflow"}, "training.report_to 'mlflow'"),
        ({"reference_storage": "int8"}, "training.reference_storage 'int8'"),
        ({"validate_every": 5, "validation": None}, "validate_every is set"),
    ],
)
def test_a_bad_key_is_named_before_any_model_loads(change: dict, message: str) -> None:
    cfg = {**BASE_CONFIG, **DSPO, **change}
    if change.get("steps", 1) is None:
        del cfg["steps"]
    with pytest.raises(ValueError, match=message):
        TrainSettings.from_config(cfg)


def test_every_training_key_of_the_schema_is_a_setting() -> None:
    """A key added to the schema's training block must be read here, or configs using it
    would be refused as unknown; the method's own keys come from its entry."""
    from pathlib import Path

    import yaml

    from dspo.training.settings import OPTIONAL, REQUIRED

    schema = yaml.safe_load((Path(__file__).parents[2] / "config/schema.yaml").read_text())
    training = set(schema["$defs"]["training"]["properties"])
    method_keys = {"name", "objective", "params", "data", "lora"}
    assert set(REQUIRED) | set(OPTIONAL) == training | method_keys
