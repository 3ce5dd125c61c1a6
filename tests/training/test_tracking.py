"""A named tracker must be installed (else accelerate logs nowhere), and W&B runs resume."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from dspo.config.check import config_problems
from dspo.training.settings import TrainSettings
from dspo.training.tracking import start_trackers
from tests.training.test_train import BASE_CONFIG, DSPO

REPO = Path(__file__).resolve().parents[2]
NO_WANDB = pytest.mark.skipif(
    importlib.util.find_spec("wandb") is not None, reason="wandb is installed here"
)


@NO_WANDB
def test_wandb_without_its_package_is_a_plan_time_error() -> None:
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config["training"]["report_to"] = "wandb"
    config["methods"]["dspo"]["training"] = {"report_to": "wandb"}
    problems = [p for p in config_problems(config, REPO) if "report_to" in p]
    assert len(problems) == 2
    assert problems[0].startswith("training.report_to: 'wandb' needs the wandb package")
    assert problems[1].startswith("methods.dspo.training.report_to: 'wandb' needs")
    config["training"]["report_to"] = "all"  # whichever trackers are installed
    config["methods"]["dspo"]["training"] = {"report_to": "tensorboard"}
    assert not [p for p in config_problems(config, REPO) if "report_to" in p]


@NO_WANDB
def test_dspo_train_refuses_wandb_without_its_package() -> None:
    with pytest.raises(ValueError, match="training.report_to: 'wandb' needs the wandb package"):
        TrainSettings.from_config({**BASE_CONFIG, **DSPO, "report_to": "wandb"})


def test_the_wandb_run_is_opened_under_the_kept_id() -> None:
    class FakeAccelerator:
        def init_trackers(self, project: str, config: dict, init_kwargs: dict) -> None:
            self.init_kwargs = init_kwargs

    accelerator = FakeAccelerator()
    start_trackers(accelerator, {"report_to": "wandb"}, "dspo", 200, "ab12cd34")
    assert accelerator.init_kwargs["wandb"] == {"name": "dspo", "id": "ab12cd34", "resume": "allow"}
    assert accelerator.init_kwargs["tensorboard"] == {"purge_step": 201}
