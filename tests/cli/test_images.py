"""`dspo score` checks every image against its manifest before scoring, and keeps old tables.

Images are laid out as `dspo generate` writes them: ``results/images/MODEL/SET/`` holding
``manifest.parquet`` (a ``key`` column) and PNGs that store the same key in their text chunk.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dspo.cli.commands import main
from dspo.core.files import png_bytes
from dspo.core.image_keys import KEY_CHUNK

CAPTION = "a large red circle at the center on a white background"
REWARDS = json.dumps({"oracle": {"kind": "toy_oracle"}})


def make_set(images: Path, model: str, prompt_set: str, count: int = 3) -> Path:
    """A generated image set of `model`: PNGs with their keys, and the manifest listing them."""
    folder = images / model / prompt_set
    rows = []
    for i in range(count):
        key = f"{model}-{prompt_set}-{i}"
        path = f"g7.5/p{i}-s0.png"
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        pixels = np.random.default_rng([i, len(model)]).random((16, 16, 3))
        (folder / path).write_bytes(png_bytes(pixels, {KEY_CHUNK: key}))
        rows.append(
            {"prompt_set": prompt_set, "prompt_id": i, "prompt": CAPTION, "seed": 0}
            | {"guidance": 7.5, "path": path, "key": key}
        )
    manifest = folder / "manifest.parquet"
    pd.DataFrame(rows).to_parquet(manifest, index=False)
    return manifest


def score(manifest: Path, out: Path, model: str = "dspo") -> None:
    main(["score", "--name", model, "--params", REWARDS, "--manifest", str(manifest)]
         + ["--out", str(out)])  # fmt: skip


def score_error(manifest: Path, out: Path) -> str:
    """The message `dspo score` exits with (no traceback: the CLI's clean error)."""
    with pytest.raises(SystemExit) as stopped:
        score(manifest, out)
    return str(stopped.value.code)


@pytest.fixture
def sets(tmp_path: Path) -> dict[str, Path]:
    images = tmp_path / "results" / "images"
    return {model: make_set(images, model, "parti") for model in ("base", "dspo")}


def test_whole_images_with_their_keys_are_scored(sets: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "scores.parquet"
    score(sets["dspo"], out)
    scores = pd.read_parquet(out)
    assert len(scores) == 3 and set(scores["model"]) == {"dspo"}
    assert not list(tmp_path.glob(".scores.parquet*"))  # no temporary file left beside it


def test_an_image_copied_from_another_model_is_named_with_its_owner(
    sets: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "scores.parquet"
    score(sets["dspo"], out)
    before = out.read_bytes()
    copied = sets["dspo"].parent / "g7.5/p1-s0.png"
    copied.write_bytes((sets["base"].parent / "g7.5/p1-s0.png").read_bytes())
    error = score_error(sets["dspo"], out)
    assert f"1 of the 3 images {sets['dspo']} lists for model dspo, prompt set parti" in error
    assert f"{copied} holds key base-parti-1 where the manifest lists dspo-parti-1" in error
    assert f"it is the image of model base, prompt set parti ({sets['base']})" in error
    assert out.read_bytes() == before  # the earlier scores stay
    # A PNG made elsewhere, without any key, is not this manifest's image either.
    copied.write_bytes(png_bytes(np.ones((16, 16, 3))))
    error = score_error(sets["dspo"], out)
    assert f"{copied} holds no {KEY_CHUNK} where the manifest lists dspo-parti-1" in error


def test_a_truncated_image_is_named_before_any_scoring(
    sets: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dspo.rewards

    out = tmp_path / "scores.parquet"
    out.write_bytes(b"earlier scores")
    cut = sets["dspo"].parent / "g7.5/p2-s0.png"
    cut.write_bytes(cut.read_bytes()[:-40])
    loaded = []
    monkeypatch.setattr(dspo.rewards, "load_reward", lambda *a: loaded.append(a))
    error = score_error(sets["dspo"], out)
    assert f"{cut} cannot be read (" in error
    assert loaded == []  # no reward model was loaded
    assert out.read_bytes() == b"earlier scores"


def test_a_manifest_without_keys_is_refused(sets: dict[str, Path], tmp_path: Path) -> None:
    table = pd.read_parquet(sets["dspo"]).drop(columns=["key"])
    table.to_parquet(sets["dspo"], index=False)
    error = score_error(sets["dspo"], tmp_path / "scores.parquet")
    assert f"{sets['dspo']} has no `key` column" in error
    assert not (tmp_path / "scores.parquet").exists()


def test_an_unreadable_image_met_while_scoring_is_named(tmp_path: Path) -> None:
    from dspo.rewards import open_image

    cut = tmp_path / "cut.png"
    cut.write_bytes(png_bytes(np.random.default_rng(0).random((64, 64, 3)))[:-40])
    with pytest.raises(ValueError, match=f"cannot read image {cut}: OSError: .*truncated"):
        open_image(cut)


def test_images_as_generate_writes_them_pass_the_check(tiny_model: Path, tmp_path: Path) -> None:
    from dspo.families.sd_pipeline import load_pipeline
    from dspo.generation.sample import generate, write_manifest

    prompts = pd.DataFrame({"prompt_set": "demo", "prompt_id": [3], "prompt": [CAPTION]})
    folder = tmp_path / "results" / "images" / "tiny" / "demo"
    manifest = generate(
        load_pipeline(str(tiny_model)), prompts, folder, seeds=[0, 1], guidance=[2.0],
        steps=2, resolution=16, batch_size=2, key="run-key",
    )  # fmt: skip
    write_manifest(manifest, folder / "manifest.parquet", {})
    score(folder / "manifest.parquet", tmp_path / "scores.parquet", model="tiny")
    assert len(pd.read_parquet(tmp_path / "scores.parquet")) == 2
