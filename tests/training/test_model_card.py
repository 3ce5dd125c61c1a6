"""Model cards and `dspo push` against a local stand-in of the hub's upload calls."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from dspo.evaluation.publish import push, win_rates_section
from dspo.training.model_card import write_model_card

CFG = {
    "name": "dspo_lora",
    "objective": "dspo",
    "params": {"lam": 0.001},
    "lora": {"rank": 8},
    "steps": 300,
    "lr": 1e-4,
    "seed": 0,
}


class FakeHub:
    """Records the calls `push` makes and what the folder held at upload time."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.uploaded: dict[str, str] = {}

    def create_repo(self, repo_id: str, **kwargs) -> None:
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))

    def upload_folder(self, *, repo_id: str, folder_path: str, commit_message: str):
        self.calls.append(("upload_folder", {"repo_id": repo_id, "folder_path": folder_path}))
        self.uploaded = {p.name: p.read_text() for p in Path(folder_path).iterdir()}
        return type("Info", (), {"commit_url": f"https://hub.invalid/{repo_id}/commit/1"})()


def _win_rates(path: Path) -> Path:
    pd.DataFrame(
        {
            "prompt_set": ["pickv2", "pickv2"],
            "guidance": [7.5, 7.5],
            "reward": ["pickscore", "hpsv2"],
            "method": ["dspo_lora", "dspo_lora"],
            "win_rate": [0.612, 0.55],
            "ci_low": [0.55, 0.5],
            "ci_high": [0.67, 0.6],
        }
    ).to_csv(path, index=False)
    return path


def test_card_has_diffusers_metadata_and_the_recipe(tmp_path: Path) -> None:
    card = write_model_card(tmp_path, CFG, "org/base", "results/cache/pairs").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["library_name"] == "diffusers" and meta["base_model"] == "org/base"
    assert {"lora", "dspo", "text-to-image"} <= set(meta["tags"])
    assert "| lam | `0.001` |" in card and "| steps | `300` |" in card
    assert "load_lora_weights" in card


def test_push_adds_win_rates_and_uploads_the_folder(tmp_path: Path) -> None:
    model = tmp_path / "dspo_lora"
    model.mkdir()
    (model / "pytorch_lora_weights.safetensors").write_text("weights")
    write_model_card(model, CFG, "org/base", "pairs")
    hub = FakeHub()
    url = push(
        model,
        "me/dspo-lora",
        win_rates_csv=_win_rates(tmp_path / "w.csv"),
        api=hub,
        on_progress=lambda _: None,
    )
    assert url.endswith("/me/dspo-lora/commit/1")
    assert [c[0] for c in hub.calls] == ["create_repo", "upload_folder"]
    assert hub.calls[0][1]["private"] is True
    assert "| pickv2 | 7.5 | pickscore | 61.2 [55.0, 67.0] |" in hub.uploaded["README.md"]
    assert hub.uploaded["pytorch_lora_weights.safetensors"] == "weights"
    # Pushing again replaces the section instead of appending a second one.
    push(
        model, "me/dspo-lora", win_rates_csv=tmp_path / "w.csv", api=hub, on_progress=lambda _: None
    )
    assert hub.uploaded["README.md"].count("## Win rates") == 1


def test_push_refuses_a_folder_without_a_card(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="README.md is missing"):
        push(tmp_path, "me/x", api=FakeHub())
    with pytest.raises(ValueError, match="no win rates for 'sft'"):
        win_rates_section(_win_rates(tmp_path / "w.csv"), "sft")
