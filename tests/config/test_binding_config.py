"""The attribute-binding config: checked names and sources, and what `dspo fetch` downloads."""

from __future__ import annotations

from pathlib import Path

import pytest

from dspo.config.check import ConfigError, check_config
from dspo.config.step import workflow_config
from dspo.hub.fetch import hub_artefacts

REPO = Path(__file__).resolve().parents[2]


def test_sd15_fetches_the_pinned_compbench_files_and_the_blip_model() -> None:
    config = workflow_config([REPO / "config/presets/sd15.yaml"])
    found = {a.item: a for a in hub_artefacts(config, REPO)}
    for name in ("color", "shape", "texture"):
        artefact = found[f"prompt_set.{name}"]
        # The hub copy's layout: a folder per benchmark file, <name>_val/val-00000-of-00001.parquet
        assert (artefact.repo, artefact.split) == ("NinaKarine/t2i-compbench", f"{name}_val")
        assert artefact.revision == "00d6512f2e822b7b6d2e14fb5c82be22c541f092"
    assert found["binding.model"].repo == "Salesforce/blip-vqa-base"
    assert "prompt_set.color" not in {a.item for a in hub_artefacts(workflow_config([]), REPO)}


def test_a_binding_set_may_not_reuse_a_prompt_set_name(tmp_path: Path) -> None:
    config = workflow_config([])
    binding = config["evaluation"]["attribute_binding"]
    binding["prompt_sets"]["parti"] = {"source": {"kind": "file", "path": "missing.txt"}}
    with pytest.raises(ConfigError) as error:
        check_config(config, tmp_path)
    assert "evaluation.attribute_binding.prompt_sets.parti: the name is taken" in str(error.value)
    assert "evaluation.attribute_binding.prompt_sets.parti.source" in str(error.value)
