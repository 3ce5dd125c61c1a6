"""Editing evaluation: the toy editing set, loading editing sets, image-to-image edits."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dspo.cli import commands as cli
from dspo.data.prompts import load_editing_set
from dspo.families.sd_pipeline import load_pipeline
from dspo.generation.edit import edit
from dspo.toy.oracle import oracle_scores
from dspo.toy.scenes import ATTRIBUTES, parse_caption, split_scenes
from dspo.toy.world import editing_set


def png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buffer, "PNG")
    return buffer.getvalue()


def test_toy_editing_set_changes_one_attribute() -> None:
    scenes = split_scenes(0)["heldout_captions"]
    table = editing_set(scenes, 12, 16, np.random.default_rng(0))
    assert len(table) == 12 and list(table.columns) == ["source_prompt", "prompt", "image"]
    for row in table.itertuples():
        source, target = parse_caption(row.source_prompt), parse_caption(row.prompt)
        changed = [a for a in ATTRIBUTES if getattr(source, a) != getattr(target, a)]
        assert changed in (["colour"], ["background"])
        image = np.asarray(Image.open(io.BytesIO(row.image)))
        # The source is a clean render: the oracle rates it highly against its own caption.
        assert oracle_scores(image[None], [row.source_prompt])["total"][0] > 0.8
    again = editing_set(scenes, 12, 16, np.random.default_rng(0))
    assert table.equals(again)


def test_load_editing_set_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "edits.parquet"
    frame = pd.DataFrame(
        {
            "edit_prompt": ["make it red", "make it blue"],
            "input_image": [png((0, 0, 0)), png((9, 9, 9))],
        }
    )
    frame.to_parquet(path)
    source = {
        "kind": "file",
        "path": str(path),
        "column": "edit_prompt",
        "image_column": "input_image",
    }
    table = load_editing_set({"source": source})
    assert table["prompt_id"].tolist() == [0, 1] and table["prompt_set"].unique().tolist() == [
        "editing"
    ]
    assert Image.open(io.BytesIO(table["image"][1])).getpixel((0, 0)) == (9, 9, 9)
    with pytest.raises(ValueError, match="no column 'image'"):
        load_editing_set({"source": {**source, "image_column": "image"}})
    frame.assign(input_image=[b"not an image", png((0, 0, 0))]).to_parquet(path)
    with pytest.raises(ValueError, match="row 0: not a readable image"):
        load_editing_set({"source": source})


def test_edit_is_deterministic_and_resumable(tiny_model: Path, tmp_path: Path) -> None:
    pipe = load_pipeline(str(tiny_model))
    editing = pd.DataFrame(
        {
            "prompt_set": "editing",
            "prompt_id": [0, 1],
            "prompt": ["a red circle", "a blue square"],
            "image": [png((200, 30, 30)), png((30, 30, 200))],
        }
    )

    def run(out: Path, strength: float) -> pd.DataFrame:
        return edit(
            pipe,
            editing,
            out,
            seeds=[0, 1],
            guidance=[3.0],
            steps=4,
            strength=strength,
            resolution=16,
            batch_size=3,
        )

    manifest = run(tmp_path / "a", 0.75)
    assert len(manifest) == 4 and manifest["path"].is_unique
    again = run(tmp_path / "b", 0.75)
    pixels = [np.asarray(Image.open(tmp_path / "a" / p)) for p in manifest["path"]]
    assert all(
        np.array_equal(a, np.asarray(Image.open(tmp_path / "b" / p)))
        for a, p in zip(pixels, again["path"], strict=True)
    )
    assert not np.array_equal(pixels[0], pixels[2])  # seed 0 and seed 1 of prompt 0
    # Nothing is redone for images already on disk.
    first = tmp_path / "a" / manifest["path"][0]
    stamp = first.stat().st_mtime_ns
    run(tmp_path / "a", 0.75)
    assert first.stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="strength"):
        run(tmp_path / "c", 0.0)


def test_edits_are_remade_when_their_inputs_change_or_break(tiny_model: Path, tmp_path: Path):
    pipe = load_pipeline(str(tiny_model))
    editing = pd.DataFrame(
        {"prompt_set": "editing", "prompt_id": [0], "prompt": ["a red circle"]}
    ).assign(image=[png((200, 30, 30))])

    def run(table: pd.DataFrame, key: str = "model-a", strength: float = 0.75) -> np.ndarray:
        manifest = edit(
            pipe,
            table,
            tmp_path,
            seeds=[0],
            guidance=[3.0],
            steps=4,
            strength=strength,
            resolution=16,
            key=key,
        )
        return np.asarray(Image.open(tmp_path / manifest["path"][0]))

    first = run(editing)
    image = next(tmp_path.rglob("*.png"))
    stamp = image.stat().st_mtime_ns
    assert np.array_equal(run(editing), first) and image.stat().st_mtime_ns == stamp
    # Another model key (weights, base or code): remade, even at the same path.
    run(editing, key="model-b")
    assert image.stat().st_mtime_ns != stamp
    # Another source image under the same prompt id: new pixels.
    assert not np.array_equal(run(editing.assign(image=[png((30, 30, 200))])), first)
    assert not np.array_equal(run(editing, strength=0.5), first)
    # A truncated PNG is detected and remade, identical to the original.
    run(editing)
    image.write_bytes(image.read_bytes()[:60])
    assert np.array_equal(run(editing), first)


def test_one_generate_job_samples_and_edits(tiny_model: Path, tmp_path: Path) -> None:
    """The workflow's generate job also edits; a new strength remakes the edits, not the samples."""
    prompts, editing = tmp_path / "prompts.parquet", tmp_path / "editing.parquet"
    pd.DataFrame({"prompt_set": "p", "prompt_id": [0, 1], "prompt": ["a", "b"]}).to_parquet(prompts)
    pd.DataFrame(
        {
            "prompt_set": "editing",
            "prompt_id": [0],
            "prompt": ["a red circle"],
            "image": [png((30, 30, 200))],
        }
    ).to_parquet(editing)
    samples, edits = tmp_path / "images/p/manifest.parquet", tmp_path / "images/e/manifest.parquet"

    def run(strength: float, *extra: str) -> dict[str, tuple[bytes, int]]:
        params = {"seeds": [0], "guidance": [2.0], "steps": 4, "scheduler": "ddim"}
        params |= {"resolution": 16, "batch_size": 4, "strength": strength}
        cli.main(
            ["generate", "--params", json.dumps(params), "--model", str(tiny_model)]
            + ["--base", str(tiny_model), "--prompts", str(prompts), "--out", str(samples), *extra]
        )
        files = {}
        for manifest in (samples, edits):
            for path in pd.read_parquet(manifest)["path"]:
                image = manifest.parent / path
                files[str(image)] = (image.read_bytes(), image.stat().st_mtime_ns)
        return files

    flags = ("--editing-set", str(editing), "--editing-out", str(edits))
    first = run(0.5, *flags)
    assert len(first) == 3
    second = run(0.9, *flags)
    for path, (pixels, stamp) in first.items():
        if "/e/" in path:
            assert second[path][0] != pixels
        else:
            assert second[path] == (pixels, stamp)
    with pytest.raises(SystemExit, match="go together"):
        run(0.5, "--editing-set", str(editing))
