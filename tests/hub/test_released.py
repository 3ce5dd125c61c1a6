"""Released models as method entries: imported without training, sampled, scored, tabled.

The stand-ins follow the layouts of the released checkpoints the paper's Table 1 scores:
`mhdang/dpo-sd1.5-text2image-v1` and `jacklishufan/diffusion-kto` hold only `unet/`
(config.json, diffusion_pytorch_model.safetensors), loaded with
`UNet2DConditionModel.from_pretrained(id, subfolder="unet")` into the SD1.5 pipeline, as their
model cards on huggingface.co show; a whole pipeline has `model_index.json` (save_pretrained).
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from dspo.config.check import config_problems
from dspo.config.experiments import group_of, released_models, trained_models
from dspo.evaluation.sweeps import relabel_groups
from dspo.evaluation.tables import write_tables
from dspo.families.sd_pipeline import load_pipeline
from dspo.hub.released import RECORD, import_model, layout
from tests.config.test_experiments import DEFAULT, scores_of
from tests.workflow_run import SMOKE, planned_jobs, snakemake


def shifted_unet_folder(tiny_model: Path, out: Path) -> Path:
    """A UNet-only release: the tiny pipeline's UNet with every weight shifted by 0.5."""
    pipe = load_pipeline(tiny_model)
    with torch.no_grad():
        for weight in pipe.unet.parameters():
            weight.add_(0.5)
    pipe.unet.save_pretrained(out / "unet")
    return out


def state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_equal_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = state(a), state(b)
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_unet_only_release_is_combined_with_the_base(tiny_model: Path, tmp_path: Path) -> None:
    release = shifted_unet_folder(tiny_model, tmp_path / "release")
    assert layout(release) == "denoiser"
    record = import_model(str(release), str(tiny_model), tmp_path / "models" / "dpo_released")
    assert record["layout"] == "denoiser" and record["source"] == str(release)
    out = load_pipeline(tmp_path / "models" / "dpo_released")
    base = load_pipeline(tiny_model)
    released_unet = type(base.unet).from_pretrained(release / "unet")
    assert_equal_weights(out.unet, released_unet)
    assert not torch.equal(
        next(iter(state(out.unet).values())), next(iter(state(base.unet).values()))
    )
    # Every other part is the base pipeline's.
    assert_equal_weights(out.vae, base.vae)
    assert_equal_weights(out.text_encoder, base.text_encoder)
    assert (tmp_path / "models" / "dpo_released" / RECORD).is_file()


def test_a_whole_pipeline_is_imported_as_it_is(tiny_model: Path, tmp_path: Path) -> None:
    record = import_model(str(tiny_model), "unused/base", tmp_path / "m")
    assert record["layout"] == "pipeline"
    assert_equal_weights(load_pipeline(tmp_path / "m").unet, load_pipeline(tiny_model).unet)


def test_an_import_never_overwrites_and_an_unknown_layout_is_named(
    tiny_model: Path, tmp_path: Path
) -> None:
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError, match="move it aside"):
        import_model(str(tiny_model), str(tiny_model), tmp_path / "taken")
    odd = tmp_path / "odd"
    (odd / "weights").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"found: \['weights'\]"):
        import_model(str(odd), str(tiny_model), tmp_path / "m")
    assert not (tmp_path / "m").exists()


def released_config(**entry) -> dict:
    config = copy.deepcopy(DEFAULT)
    config["methods"]["dpo_released"] = entry
    return config


def test_released_models_are_not_trained_and_report_as_their_own_group() -> None:
    config = released_config(model="mhdang/dpo-sd1.5-text2image-v1")
    config["training"]["replicates"] = 2
    assert released_models(config) == {"dpo_released": "mhdang/dpo-sd1.5-text2image-v1"}
    models = trained_models(config)
    assert "dpo_released" not in models and "dpo_released-r1" not in models
    groups = group_of(models, ["dpo_released"])
    assert groups["dpo_released"] == ["dpo_released", 0]
    assert config_problems(config) == []


@pytest.mark.parametrize(
    ("entry", "named"),
    [
        ({"model": "no/such/folder"}, "methods.dpo_released.model: local model"),
        ({"model": "m/x", "objective": "dspo"}, "methods.dpo_released.objective: a released"),
        ({"model": "m/x", "training": {"replicates": 3}}, "methods.dpo_released.training.rep"),
        ({"model": "m/x", "training": {"lr": 1e-3}}, "methods.dpo_released.training: a released"),
        ({"params": {"beta": 1}}, "methods.dpo_released: give an objective"),
    ],
)
def test_bad_released_entries_are_config_errors_naming_the_key(entry: dict, named: str) -> None:
    problems = config_problems(released_config(**entry), Path.cwd())
    assert any(p.startswith(named) for p in problems), problems


def test_a_released_model_gets_its_rows_in_the_tables(tmp_path: Path) -> None:
    config = released_config(model="mhdang/dpo-sd1.5-text2image-v1")
    groups = group_of(trained_models(config), ["dpo_released"])
    scores = relabel_groups(scores_of({"dspo": 0.5, "dpo_released": 3.0}), groups)
    methods = ["dpo_released", "dspo"]
    write_tables(scores, tmp_path, methods, ["oracle"], ["held", "new"], n_boot=50)
    wins = pd.read_csv(tmp_path / "win_rates.csv")
    released = wins[wins["method"] == "dpo_released"]
    assert len(released) == 4 and (released["win_rate"] > 0.9).all()
    matrix = pd.read_csv(tmp_path / "head_to_head.csv")
    row = matrix[(matrix["model"] == "dpo_released") & (matrix["opponent"] == "dspo")]
    assert len(row) == 4 and (row["win_rate"] > 0.5).all()


def test_a_released_row_shows_the_figure_the_paper_published_for_its_method(
    tmp_path: Path,
) -> None:
    scores = scores_of({"diffusion_dpo_released": 1.0})
    scores = scores[(scores["prompt_set"] == "held") & (scores["guidance"] == 2.0)]
    scores = scores.assign(prompt_set="pickv2", reward="pickscore")
    spec = {
        "title": "Table 1",
        "methods": ["diffusion_dpo_released"],
        "paper": "table1",
        "paper_rows": {"diffusion_dpo_released": "diffusion_dpo"},
    }
    args = (["diffusion_dpo_released"], ["pickscore"], ["pickv2"])
    write_tables(scores, tmp_path, *args, n_boot=50, paper_tables={"table1": spec})
    table = pd.read_csv(tmp_path / "table1.csv")
    # dspo/resources/paper_results.csv: table1, pickv2, diffusion_dpo, pickscore: 71.60
    assert table["paper_win_rate"].tolist() == [pytest.approx(0.716)]
    assert "(71.6)" in (tmp_path / "table1.md").read_text()


@pytest.mark.parametrize("kind", ["pipeline", "unet"])
def test_the_workflow_imports_samples_and_scores_a_released_model_without_training(
    kind: str, tiny_model: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "release"
    if kind == "pipeline":
        shutil.copytree(tiny_model, folder)
    else:
        shifted_unet_folder(tiny_model, folder)
    extra = tmp_path / "released.yaml"
    extra.write_text(yaml.safe_dump({"methods": {"dpo_released": {"model": str(folder)}}}))
    result = snakemake("-n", "all", "--configfile", str(SMOKE), str(extra), cwd=tmp_path)
    jobs = planned_jobs(result.stdout)
    plain = planned_jobs(snakemake("-n", "all", "--configfile", str(SMOKE), cwd=tmp_path).stdout)
    assert jobs["import_model"] == 1
    assert jobs["train"] == plain["train"]
    assert jobs["generate"] == plain["generate"] + 1 and jobs["score"] > plain["score"]
    assert "results/models/dpo_released" in result.stdout
    assert "results/train/dpo_released" not in result.stdout
