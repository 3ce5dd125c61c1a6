"""`dspo train` by hand: the documented config file and command, on a tiny cache."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.cli.test_commands import DEFAULTS, REPO, dspo


def documented_train_yaml() -> str:
    """The train.yaml that docs/cli.md shows."""
    text = (REPO / "docs" / "cli.md").read_text()
    section = text.split("## Training by hand", 1)[1]
    return re.search(r"```yaml\n(.*?)```", section, flags=re.DOTALL).group(1)


def test_train_by_hand_with_the_documented_config(
    cache_dir: Path, tiny_model: Path, tmp_path: Path
) -> None:
    (tmp_path / "train.yaml").write_text(documented_train_yaml())
    done = dspo(
        "train", "--config", "train.yaml", "--cache", str(cache_dir), "--base", str(tiny_model),
        "--out", "my_model", "--steps", "3", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    saved = json.loads((tmp_path / "my_model" / "dspo_config.json").read_text())["config"]
    assert saved["objective"] == "dspo" and saved["steps"] == 3  # the flag over the file
    assert saved["params"] == {"lam": 0.5, "kappa": 100.0} and saved["lr"] == 1.0e-3
    assert saved["adam_betas"] == DEFAULTS["training"]["adam_betas"]  # filled in
    assert (tmp_path / "my_model" / "unet" / "config.json").exists()
    records = (tmp_path / "my_model.run" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(records[-1])["step"] == 3
