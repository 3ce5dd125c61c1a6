"""Checkpoint fingerprints cover the code the training step runs, and nothing else; a
checkpoint of another run moves aside, the log naming what changed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from dspo.core import content
from dspo.training.checkpoints import STATE, resumable_checkpoint, save_checkpoint
from dspo.training.fingerprint import fingerprint_details, fingerprint_parts, training_code
from tests.conftest import edit_source as edit

# Packages and modules that do not shape the trained weights: their edits never stop a resume.
NOT_TRAINING = (
    "dspo.evaluation",
    "dspo.rewards",
    "dspo.bench.throughput",
    "dspo.cli.commands",
    "dspo.toy",
    "dspo.core.progress",
    "dspo.standins",
    "dspo.config.doc",
    "dspo.bench.gpucheck",
    "dspo.generation.edit",
    "dspo.config.experiments",
)
CONFIG = {"objective": "dspo", "lr": 1e-3, "steps": 4, "seed": 0}
MANIFEST = {"shards": [{"sha256": "0" * 64}], "resolution": 16}


def covered() -> set[str]:
    return {str(p.relative_to(content.PACKAGE.parent)) for p in training_code()}


def test_every_module_the_training_step_imports_is_covered_and_no_evaluation() -> None:
    # What a training process really imports: the trainer, and every registered family
    # (imported by name when first used).
    script = (
        "import sys, dspo.training.train\n"
        "from dspo.families import REGISTRY, family_class\n"
        "for name in REGISTRY: family_class(name)\n"
        "print('\\n'.join(m.__file__ for n, m in sys.modules.items()"
        " if n.split('.')[0] == 'dspo' and getattr(m, '__file__', None)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    imported = {str(Path(f).relative_to(content.PACKAGE.parent)) for f in out.split()}
    assert "dspo/objectives/losses.py" in imported and "dspo/families/sdxl.py" in imported
    assert imported <= covered(), sorted(imported - covered())
    modules = content.imported_modules("dspo.training.train")
    for excluded in NOT_TRAINING:
        assert not [m for m in modules if m == excluded or m.startswith(f"{excluded}.")]
        assert not [f for f in covered() if f.startswith(excluded.replace(".", "/"))]


class OneProcess:
    """What save_checkpoint asks of an accelerator, on one process."""

    is_main_process = True

    def wait_for_everyone(self) -> None:
        pass

    def save_state(self, folder: str) -> None:
        (Path(folder) / "model.safetensors").write_bytes(b"weights")


def run(cfg: dict) -> SimpleNamespace:
    """What the fingerprint reads of a run's settings: its recorded config (``resolved``)."""
    return SimpleNamespace(resolved=cfg)


def checkpoint(root: Path, cfg: dict, base: Path) -> Path:
    parts = fingerprint_parts(run(cfg), str(base), MANIFEST)
    extra = {"details": fingerprint_details(run(cfg))}
    return save_checkpoint(OneProcess(), root / "checkpoints", 2, 2, parts, extra)


def resume(root: Path, cfg: dict, base: Path, across: bool = False) -> tuple[object, list[str]]:
    said: list[str] = []
    found = resumable_checkpoint(
        root / "checkpoints",
        fingerprint_parts(run(cfg), str(base), MANIFEST),
        4,
        said.append,
        settings=run(cfg),
        across_code_change=across,
    )
    return found, said


@pytest.fixture
def base(tmp_path: Path) -> Path:
    folder = tmp_path / "base"
    folder.mkdir()
    (folder / "model_index.json").write_text("{}")
    content.write_content_record(folder)
    return folder


def test_an_evaluation_edit_keeps_the_fingerprint(package: Path, base: Path, tmp_path: Path):
    saved = checkpoint(tmp_path, CONFIG, base)
    edit(package, "evaluation/tables.py")
    edit(package, "rewards/common.py")
    found, said = resume(tmp_path, CONFIG, base)
    assert found is not None and found[0] == saved and not said


def test_an_objective_edit_moves_the_checkpoints_aside(package: Path, base: Path, tmp_path):
    saved = checkpoint(tmp_path, CONFIG, base)
    edit(package, "objectives/losses.py")
    found, said = resume(tmp_path, CONFIG, base)
    assert found is None and not saved.exists()
    (stale,) = tmp_path.glob("checkpoints.stale-*")
    state = json.loads((stale / saved.name / STATE).read_text())
    assert state["step"] == 2 and (stale / saved.name / "model.safetensors").read_bytes()
    assert "training code (dspo/objectives/losses.py)" in said[0]
    assert f"moved 1 checkpoint(s) to {stale}; starting afresh" in said[-1]


def test_the_setting_resumes_across_a_code_change(package: Path, base: Path, tmp_path: Path):
    saved = checkpoint(tmp_path, CONFIG, base)
    edit(package, "objectives/losses.py")
    found, said = resume(tmp_path, CONFIG, base, across=True)
    assert found is not None and found[0] == saved
    assert "resuming" in said[0] and "across a code change" in said[0]
    assert "dspo/objectives/losses.py" in said[0]
    # Only the code: another learning rate moves it aside even with the setting on.
    found, said = resume(tmp_path, {**CONFIG, "lr": 2e-3}, base, across=True)
    assert found is None and "config keys lr" in said[0]
    assert list(tmp_path.glob("checkpoints.stale-*/step-000002"))


def test_a_base_model_change_is_named(base: Path, tmp_path: Path) -> None:
    checkpoint(tmp_path, CONFIG, base)
    (base / "model_index.json").write_text('{"other": 1}')
    found, said = resume(tmp_path, CONFIG, base, across=True)
    assert found is None and "changed since it was written: the base model's contents" in said[0]


# A resolved config as a run records it; ``prompt_dropout`` an integer, as YAML reads ``0``.
RECORDED = {
    "adam_betas": [0.9, 0.999],
    "adam_eps": 1e-08,
    "checkpoint_every": 2,
    "checkpoints_kept": 2,
    "family_settings": {},
    "gradient_checkpointing": False,
    "keep_checkpoints": True,
    "local_pairs": 2,
    "log_every": 1,
    "lora": None,
    "lr": 0.001,
    "lr_schedule": "constant",
    "max_grad_norm": 1.0,
    "mixed_precision": "no",
    "objective": "dspo",
    "optimizer": "adamw",
    "pairs_per_step": 4,
    "params": {"kappa": 100.0, "lam": 0.5},
    "prompt_dropout": 0,
    "report_to": None,
    "seed": 0,
    "steps": 4,
    "warmup_steps": 1,
    "weight_decay": 0.01,
}


def test_config_keys_from_typed_settings_are_those_of_checkpoints_already_written(
    base: Path,
) -> None:
    # The config parts that the code before typed settings computed for RECORDED, from the
    # raw mapping: checkpoints and precomputed references written then must still match.
    from dspo.objectives import get_objective
    from dspo.training.reference import reference_parts
    from dspo.training.settings import TrainSettings

    settings = TrainSettings.from_config(RECORDED)
    assert fingerprint_parts(settings, str(base), MANIFEST)["config"] == "4fa02588f4991193"
    reference = reference_parts(settings, get_objective("dspo"), str(base), MANIFEST)
    assert reference["config"] == "fdc9bdfdee3c3500"
