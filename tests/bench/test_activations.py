"""`dspo bench activations`: the activation memory per training image, measured."""

from __future__ import annotations

import json
from pathlib import Path

from dspo.cli.commands import main

REPO = Path(__file__).resolve().parents[2]


def test_activations_grow_with_the_batch_and_checkpointing_holds_less(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(REPO)  # --arch toy reads the default preset's architecture
    out = tmp_path / "activations.json"
    argv = ["--arch", "toy", "--latent", "48", "--images", "2", "6", "--threads", "1"]
    main(["bench", "activations", *argv, "--json", str(out)])
    result = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert "activation memory per image" in printed
    runs = {(r["checkpointing"], r["images"]): r for r in result["runs"]}
    assert len(runs) == 4
    for checkpointing in (False, True):
        assert runs[checkpointing, 6]["held_mib"] > runs[checkpointing, 2]["held_mib"]
        assert runs[checkpointing, 6]["peak_mib"] >= runs[checkpointing, 6]["held_mib"]
    # The toy UNet's images hold tens of MiB each at 48 x 48; checkpointing keeps less.
    assert result["plain_mib_per_image"] > 10
    assert result["checkpointing_mib_per_image"] < 0.8 * result["plain_mib_per_image"]
