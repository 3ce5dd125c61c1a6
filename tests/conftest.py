"""Shared fixtures: a tiny SD-shaped pipeline saved to disk, and small pair tables."""

from __future__ import annotations

import ast
import functools
import io
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dspo.data.pairs import prompt_id_of
from tests.parallel import build_once, on_worker, one_thread_per_worker, plan
from tests.workflow_run import SMOKE, copy_run, snakemake

if TYPE_CHECKING:
    from tests.durations import Costs

one_thread_per_worker()

TINY_ARCHITECTURE = {
    "max_length": 12,
    "text_encoder": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
    },
    "vae": {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
        "block_out_channels": [16, 32],
        "latent_channels": 4,
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "sample_size": 16,
    },
    "unet": {
        "sample_size": 8,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": [16, 32],
        "layers_per_block": 1,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
        "attention_head_dim": 8,
        "norm_num_groups": 8,
    },
    "scheduler": {"num_train_timesteps": 1000, "clip_sample": False, "steps_offset": 1},
}
# SDXL-shaped: two text encoders (the second with a projection for the pooled embedding) and a
# UNet with SDXL's added text/time embedding; build_pipeline derives the widths.
TINY_SDXL_ARCHITECTURE = {
    **TINY_ARCHITECTURE,
    "family": "sdxl",
    "text_encoder": {**TINY_ARCHITECTURE["text_encoder"], "num_hidden_layers": 2},
    "text_encoder_2": {
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "projection_dim": 8,
    },
    "addition_time_embed_dim": 4,
}
WORDS = ["a", "red", "blue", "green", "circle", "square", "on", "white", "black", "background"]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init SD-shaped pipeline saved with save_pretrained, as a hub checkpoint is."""
    from dspo.families import build_pipeline

    path = tmp_path_factory.mktemp("models") / "tiny"
    build_pipeline(TINY_ARCHITECTURE, WORDS, seed=0).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_sdxl_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init SDXL-shaped pipeline saved with save_pretrained."""
    from dspo.families import build_pipeline

    path = tmp_path_factory.mktemp("models") / "tiny-sdxl"
    build_pipeline(TINY_SDXL_ARCHITECTURE, WORDS, seed=0).save_pretrained(path)
    return path


def jpeg(colour: tuple[int, int, int], size: int | tuple[int, int] = 16) -> bytes:
    """A plain-colour JPEG; ``size`` is a side or (width, height)."""
    buffer = io.BytesIO()
    width, height = (size, size) if isinstance(size, int) else size
    Image.new("RGB", (width, height), colour).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def tiny_pairs() -> pd.DataFrame:
    """A canonical pair table: 24 pairs over 6 captions, plain-colour images."""
    rng = np.random.default_rng(0)
    captions = [f"a {c} {s}" for c in ("red", "blue", "green") for s in ("circle", "square")]
    rows = []
    for i in range(24):
        caption = captions[i % len(captions)]
        rows.append(
            {
                "pair_id": i,
                "prompt_id": prompt_id_of(caption),
                "caption": caption,
                "jpg_w": jpeg(tuple(int(v) for v in rng.integers(0, 256, 3))),
                "jpg_l": jpeg(tuple(int(v) for v in rng.integers(0, 256, 3))),
                "label_w": 1.0,
                "source_row": i,
            }
        )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def cache_dir(tiny_model: Path, tiny_pairs: pd.DataFrame, tmp_path_factory) -> Path:
    """A latent cache of :func:`tiny_pairs` at 16 px from :func:`tiny_model`, one per test
    module (the training tests read it; a module that damages a cache builds its own)."""
    from dspo.data.cache import build_cache

    path = tmp_path_factory.mktemp("cache")
    build_cache(tiny_pairs, str(tiny_model), path, resolution=16, dtype="float32")
    return path


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke preset's whole DAG, run once per gate and shared by its workers
    (tests/parallel.py): the workflow tests read it, and the tests that run more continue a
    copy of it (:func:`smoke_copy`); nothing writes to it (several minutes on 2 CPU cores)."""

    def run(workdir: Path) -> None:
        snakemake("--cores", "2", "all", "--configfile", str(SMOKE), cwd=workdir)

    return build_once(tmp_path_factory, "smoke", run)


@pytest.fixture
def smoke_copy(smoke_run: Path, tmp_path: Path) -> Path:
    """A copy of the shared smoke run for a test to run more jobs in (:func:`copy_run`)."""
    return copy_run(smoke_run, tmp_path / "smoke")


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the ``dspo`` package whose sources the content and checkpoint keys read
    (:data:`dspo.core.content.PACKAGE`), to edit."""
    from dspo.core import content

    copy = Path(shutil.copytree(content.PACKAGE, tmp_path / "src" / "dspo"))
    monkeypatch.setattr(content, "PACKAGE", copy)
    return copy


def edit_source(package: Path, module: str) -> None:
    """Change one module of a :func:`package` copy (a comment appended)."""
    path = package / module
    path.write_text(path.read_text() + "\n# edited\n")


# Markers (registered in pyproject.toml, `--strict-markers`), applied here from where a test
# lives, what it runs and how long it took, so that no test is marked by hand
# (docs/development.md):
# - system: tests/system/ (README commands, a browser, SLURM, environments across the system);
# - workflow: runs Snakemake jobs for real: uses the shared smoke run, or its source (or a
#   fixture or helper of its module) calls Snakemake without a dry run; all of tests/workflow/
#   that is not a dry run;
# - dag: builds the DAG only (`snakemake -n`, `--lint`);
# - slow: costs over SLOW_SECONDS in the last full gate (tests/durations.json: its own time and
#   its shared fixtures' setups);
# - unit: none of the above and costs at most UNIT_SECONDS (or not measured yet).
SLOW_SECONDS = 2.0
UNIT_SECONDS = 0.1
# The plugin that reads and records the figures (`--record-durations FILE`, what `make test`
# passes); imported by pytest itself, before any use below.
pytest_plugins = ("tests.durations",)


@functools.cache
def costs() -> Costs:
    """The kept figures (tests/durations.json), read once."""
    from tests.durations import Costs

    return Costs()


SNAKEMAKE_CALL = re.compile(r"\bsnakemake\(|\bWorkflowRun\(")
REAL_RUN = re.compile(r'"(--cores|-c\d+|--report)"')
DRY_RUN = re.compile(r'"(-n|--dry-run|--lint)"')


@functools.cache
def module_functions(path: Path) -> dict[str, str]:
    """The source of each function (test, fixture, helper) defined in a test module."""
    source = path.read_text()
    return {
        node.name: ast.get_source_segment(source, node) or ""
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef)
    }


def own_runs(source: str) -> frozenset[str]:
    """The Snakemake runs one function's source starts itself: "real", "dry" or both."""
    if not SNAKEMAKE_CALL.search(source):
        return frozenset()
    return frozenset(
        kind for kind, pattern in (("real", REAL_RUN), ("dry", DRY_RUN)) if pattern.search(source)
    )


@functools.cache
def module_runs(path: Path) -> dict[str, frozenset[str]]:
    """The Snakemake runs of each function of a test module (and of conftest.py), its own and
    those of the module's functions it names (fixtures as arguments, helpers as calls)."""
    functions = {**module_functions(Path(__file__)), **module_functions(path)}
    names = {n: set(re.findall(r"\w+", s)) & functions.keys() - {n} for n, s in functions.items()}
    runs = {}
    for name in functions:
        seen, todo, found = {name}, [name], set()
        while todo:
            current = todo.pop()
            found |= own_runs(functions[current])
            todo += names[current] - seen
            seen |= names[current]
        runs[name] = frozenset(found)
    return runs


def markers_of(item: pytest.Item) -> set[str]:
    """The markers of one collected test (see the comment above)."""
    folder = item.path.parent.name
    if folder == "system":
        return {"system"}
    runs_by_function = module_runs(item.path)
    name = getattr(item, "originalname", item.name)
    runs = {r for f in (name, *item.fixturenames) for r in runs_by_function.get(f, ())}
    found = set()
    if "real" in runs or (folder == "workflow" and "dry" not in runs):
        found.add("workflow")
    elif "dry" in runs:
        found.add("dag")
    seconds = costs().of(item)
    if seconds > SLOW_SECONDS:
        found.add("slow")
    if not found and seconds <= UNIT_SECONDS:
        found.add("unit")
    return found


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for marker in sorted(markers_of(item)):
            item.add_marker(marker)
    if on_worker():  # one of several (make test)
        plan(items, costs())
