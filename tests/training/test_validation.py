"""The validation prompts: the fixed ones, then the first of a prompt set's table; checked at
plan time and when training starts, each error naming its key; and the strips sample them."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from dspo.config.check import config_problems
from dspo.data.prompts import load_prompt_set
from dspo.training.train import train
from dspo.training.validation import validation_problems, validation_prompts, validation_set
from tests.training.test_train import BASE_CONFIG, DSPO, run

REPO = Path(__file__).resolve().parents[2]
FIXED = ["a red circle on white background"]
CAPTIONS = ["a cat on a sofa", "a dog in the snow", "a red car", "a bowl of soup"]
BLOCK = {
    "prompts": FIXED,
    "from_prompt_set": {"name": "pick", "count": 2},
    "seeds": [0],
    "steps": 2,
    "guidance": 3.0,
}


def prompt_table(folder: Path, name: str = "pick", captions: list[str] = CAPTIONS) -> Path:
    """A prompt set's table as `dspo prompts` writes it, from a text file of captions."""
    source = folder / f"{name}.txt"
    source.write_text("\n".join(captions) + "\n")
    path = folder / f"{name}.parquet"
    load_prompt_set(name, {"source": {"kind": "file", "path": str(source)}}).to_parquet(path)
    return path


def test_the_fixed_prompts_come_first_then_the_sets_first_in_stored_order(
    tmp_path: Path,
) -> None:
    table = prompt_table(tmp_path)
    assert validation_prompts(BLOCK, table) == (*FIXED, *CAPTIONS[:2])
    only_the_set = {**BLOCK, "prompts": [], "from_prompt_set": {"name": "pick", "count": 4}}
    assert validation_prompts(only_the_set, table) == tuple(CAPTIONS)
    assert validation_prompts({**BLOCK, "from_prompt_set": None}, None) == tuple(FIXED)


@pytest.mark.parametrize(
    ("block", "table", "message"),
    [
        (BLOCK, None, "from_prompt_set names 'pick', but no table"),
        ({**BLOCK, "from_prompt_set": None}, "pick", "names no set"),
        ({**BLOCK, "from_prompt_set": {"name": "parti", "count": 2}}, "pick", "holds the prompt"),
        ({**BLOCK, "from_prompt_set": {"name": "pick", "count": 5}}, "pick", "count 5: .* 4"),
        ({**BLOCK, "prompts": [], "from_prompt_set": None}, None, "no validation prompt"),
    ],
)
def test_a_wrong_table_or_no_prompt_is_an_error_naming_the_key(
    block: dict, table: str | None, message: str, tmp_path: Path
) -> None:
    path = prompt_table(tmp_path, table) if table else None
    with pytest.raises(ValueError, match=f"training.validation.*{message}"):
        validation_prompts(block, path)


def test_only_a_run_that_validates_reads_the_set() -> None:
    assert validation_set({"validate_every": 10, "validation": BLOCK}) == "pick"
    assert validation_set({"validate_every": 0, "validation": BLOCK}) is None
    unnamed = {**BLOCK, "from_prompt_set": None}
    assert validation_set({"validate_every": 10, "validation": unnamed}) is None
    assert validation_set({"validate_every": 10, "validation": {"prompts": FIXED}}) is None


def test_plan_time_problems_name_the_key() -> None:
    sets = {"pick": {"source": {"kind": "file", "path": "p.txt", "limit": 3}}}
    where = "training.validation"
    assert validation_problems(BLOCK, sets, where) == []
    unknown = {**BLOCK, "from_prompt_set": {"name": "pickv9", "count": 2}}
    [problem] = validation_problems(unknown, sets, where)
    assert problem.startswith("training.validation.from_prompt_set.name: 'pickv9' is not")
    assert "(evaluation.prompt_sets: pick)" in problem
    too_many = {**BLOCK, "from_prompt_set": {"name": "pick", "count": 4}}
    [problem] = validation_problems(too_many, sets, where)
    assert problem.startswith("training.validation.from_prompt_set.count: 4 prompts of 'pick'")
    neither = {**BLOCK, "prompts": [], "from_prompt_set": None}
    [problem] = validation_problems(neither, sets, where)
    assert problem.startswith("training.validation: no validation prompt")


def test_the_config_check_refuses_an_unconfigured_set_in_any_training_block() -> None:
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config["training"]["validation"]["from_prompt_set"] = {"name": "pickv2", "count": 2}
    assert not [p for p in config_problems(config, REPO) if "validation" in p]
    config["methods"]["dspo"]["training"] = {
        "validation": {**copy.deepcopy(BLOCK), "from_prompt_set": {"name": "pick", "count": 1}}
    }
    problems = [p for p in config_problems(config, REPO) if "validation" in p]
    assert len(problems) == 1
    assert problems[0].startswith("methods.dspo.training.validation.from_prompt_set.name: 'pick'")


def test_the_strips_sample_the_sets_prompts(
    cache_dir: Path, tiny_model: Path, tmp_path: Path
) -> None:
    """A run validating on the set's first two prompts draws the strips a run with those
    prompts written out draws; a set named without its table stops before any model loads."""
    table = prompt_table(tmp_path)
    short = {**DSPO, "steps": 2, "checkpoint_every": 0, "validate_every": 2}
    with pytest.raises(ValueError, match="from_prompt_set names 'pick', but no table"):
        run({**short, "validation": BLOCK}, cache_dir, tiny_model, tmp_path / "none")
    assert not (tmp_path / "none").exists()
    train(
        {**BASE_CONFIG, **short, "validation": BLOCK},
        cache_dir=cache_dir,
        base_model=str(tiny_model),
        out_dir=tmp_path / "set/model",
        run_dir=tmp_path / "set/run",
        validation_table=table,
    )
    written = {**BLOCK, "prompts": [*FIXED, *CAPTIONS[:2]], "from_prompt_set": None}
    run({**short, "validation": written}, cache_dir, tiny_model, tmp_path / "written")

    folders = [tmp_path / name / "run/validation" for name in ("set", "written")]
    index = json.loads((folders[0] / "index.json").read_text())
    assert index["settings"]["prompts"] == [*FIXED, *CAPTIONS[:2]]
    assert [c["prompt"] for c in index["columns"]] == [*FIXED, *CAPTIONS[:2]]
    strips = [np.asarray(Image.open(folder / "step_000002.png")) for folder in folders]
    assert strips[0].shape == (16, 3 * 16, 3)
    assert np.array_equal(strips[0], strips[1])
