"""The public Pick-a-Pic layouts, split-only hub reads and the plan-time source checks.

Layouts, with where they come from:

- the webdataset copy ``sayakpaul/pickapic_v2_webdataset``: tars ``00000.tar`` ...
  ``00644.tar`` at the repo's root (its hub file listing), each sample the members
  ``KEY.original_prompt.txt``, ``KEY.jpg_0.jpg``, ``KEY.jpg_1.jpg``, ``KEY.label_0.txt``,
  ``KEY.label_1.txt`` with labels as text (diffusers'
  ``examples/research_projects/diffusion_orpo/train_diffusion_orpo_sdxl_lora_wds.py`` renames
  exactly these members);
- the hub's parquet layout of the Pick-a-Pic repos: ``data/<split>-00000-of-0000N-<16 hex>
  .parquet`` (the names below are those of ``yuvalkirstain/pickapic_v2_no_images/data``), with
  every Pick-a-Pic v2 column and dtype (the stand-in rows of ``dspo.standins.data``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from dspo.cli.commands import main as dspo_main
from dspo.config.check import config_problems
from dspo.data import prompts
from dspo.data import sources as S
from dspo.data.pair_table import read_pairs
from dspo.data.split_files import split_patterns
from dspo.standins.data import pickapic_rows
from tests.data.test_pairs import BLUE, RED, colour_of, jpeg
from tests.workflow_run import REPO, snakemake

# Data file names of the hub's parquet layout (yuvalkirstain/pickapic_v2_no_images, data/).
HUB_FILES = {
    "train": ["train-00000-of-00002-c261d1ef2a61d087", "train-00001-of-00002-4fc6e0b8b7258189"],
    "validation": ["validation-00000-of-00001-95e05a21bb84ccab"],
    "validation_unique": ["validation_unique-00000-of-00001-c2396290184ff49d"],
    "test": ["test-00000-of-00001-7e933a600b5af2c0"],
    "test_unique": ["test_unique-00000-of-00001-e852c19ead276a89"],
}
PUBLIC_MEMBERS = ("original_prompt.txt", "jpg_0.jpg", "jpg_1.jpg", "label_0.txt", "label_1.txt")


def write_members(path: Path, samples: list[dict[str, bytes]]) -> None:
    """A tar of samples, each a {suffix: bytes} written as KEY.suffix in the given order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for key, members in enumerate(samples):
            for suffix, data in members.items():
                info = tarfile.TarInfo(f"{key:09d}.{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def public_sample(caption: str, red_first: bool, labels: tuple[str, str]) -> dict[str, bytes]:
    first, second = (jpeg(RED), jpeg(BLUE)) if red_first else (jpeg(BLUE), jpeg(RED))
    values = (caption.encode(), first, second, labels[0].encode(), labels[1].encode())
    return dict(zip(PUBLIC_MEMBERS, values, strict=True))


def public_copy(folder: Path) -> Path:
    """A miniature of the public webdataset copy: 00000.tar and 00001.tar, 5 samples."""
    write_members(
        folder / "00000.tar",
        [
            public_sample("a red cat", True, ("1", "0")),
            public_sample("a red dog", False, ("0", "1")),
            public_sample("a tie", True, ("0.5", "0.5")),
        ],
    )
    write_members(
        folder / "00001.tar",
        [
            public_sample("a red owl", False, ("0", "1")),
            public_sample("a red car", True, ("1", "0")),
        ],
    )
    return folder


def run_pair_rules(source: dict, workdir: Path, parts: int = 2) -> pd.DataFrame:
    """The pair rules' commands (rules/data.smk: pairs_part per part, then pairs)."""
    params = json.dumps({"source": source, "drop_ties": True, "shards": parts, "nodup_seed": 0})
    outs = [str(workdir / f"parts/{part}") for part in range(parts)]
    for part, out in enumerate(outs):
        dspo_main(
            ["pairs-part", "--part", str(part), "--params", params, "--input", "x"] + ["--out", out]
        )
    table = workdir / "pairs.parquet"
    dspo_main(["pairs-gather", "--inputs", *outs, "--out", str(table)])
    return read_pairs(table)


def test_public_webdataset_copy_reads_with_its_path_alone(tmp_path: Path) -> None:
    copy = public_copy(tmp_path / "pickapic_v2_webdataset")
    pairs = run_pair_rules({"kind": "webdataset", "path": str(copy)}, tmp_path)
    assert sorted(pairs["caption"]) == ["a red car", "a red cat", "a red dog", "a red owl"]
    assert all(colour_of(image) == RED for image in pairs["jpg_w"])  # the image labelled 1
    assert set(pairs["label_w"]) == {1.0}
    assert S.layout_problems({"kind": "webdataset", "path": str(copy)}) == []


def test_other_member_names_read_through_a_mapping(tmp_path: Path) -> None:
    names = {"caption": "prompt.txt", "jpg_0": "left.png", "jpg_1": "right.png"}
    names |= {"label_0": "cls_left", "label_1": "cls_right"}
    samples = [
        {names["caption"]: b"a cat", names["jpg_0"]: jpeg(BLUE), names["jpg_1"]: jpeg(RED)}
        | {names["label_0"]: b"0", names["label_1"]: b"1", "extra.json": b"{}"}
    ]
    write_members(tmp_path / "wds" / "shard-0.tar", samples)
    source = {"kind": "webdataset", "path": str(tmp_path / "wds"), "members": names}
    frame = S.load_source(source)
    assert frame.loc[0, "caption"] == "a cat" and frame.loc[0, "label_1"] == 1.0
    assert colour_of(frame.loc[0, "jpg_1"]) == RED
    unmapped = {"kind": "webdataset", "path": str(tmp_path / "wds")}
    with pytest.raises(ValueError, match=r"match no known layout.*`members`"):
        S.load_source(unmapped)


@pytest.mark.parametrize(
    ("members", "named"),
    [
        ({"jpg_0": "a", "jpg_1": "b", "caption": "c"}, "'label_0' (or a 'json' member"),
        ({"jpg_0": "a", "jpg_1": "b", "json": "j", "prompt": "p"}, "unknown column 'prompt'"),
        ({"jpg_1": "b", "json": "j"}, "needs 'jpg_0'"),
        ({"jpg_0": "jpg", "jpg_1": "jpg", "json": "j"}, "'jpg' is named for more than one"),
    ],
)
def test_a_bad_member_mapping_is_refused_naming_the_column(members, named) -> None:
    problems = S.key_problems({"kind": "webdataset", "path": "x", "members": members})
    assert any(named in problem for problem in problems), problems


def test_a_split_the_public_copy_does_not_name_is_refused_naming_its_tars(tmp_path) -> None:
    copy = public_copy(tmp_path / "copy")
    problems = S.layout_problems({"kind": "webdataset", "path": str(copy), "split": "train"})
    assert len(problems) == 1 and "split 'train'" in problems[0]
    assert "found 2 files (00000.tar, 00001.tar)" in problems[0]


def test_a_file_that_is_no_tar_is_named(tmp_path: Path) -> None:
    public_copy(tmp_path / "copy")
    (tmp_path / "copy" / "00000.tar").write_bytes(b"an interrupted download")
    problems = S.layout_problems({"kind": "webdataset", "path": str(tmp_path / "copy")})
    bad = tmp_path / "copy" / "00000.tar"
    assert len(problems) == 1 and problems[0].startswith(f"{bad}: not a readable tar file")


def write_hub_layout(folder: Path, corrupt: tuple[str, ...] = ()) -> Path:
    """A Pick-a-Pic v2 repo in the hub's parquet layout (train and test_unique): every column
    and dtype of the original; the files of the ``corrupt`` splits are not parquet at all."""
    for k, split in enumerate(("train", "test_unique")):
        names = HUB_FILES[split]
        frame, _ = pickapic_rows(6 * len(names), seed=k, split=split)
        for i, name in enumerate(names):
            path = folder / "data" / f"{name}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            if split in corrupt:
                path.write_bytes(b"not parquet: a read of this split's files fails")
                continue
            block = pa.Table.from_pandas(frame.iloc[6 * i : 6 * (i + 1)], preserve_index=False)
            pq.write_table(block, path, row_group_size=4)
    return folder


def test_hub_parquet_layout_reads_as_a_local_folder_by_split(tmp_path: Path) -> None:
    copy = write_hub_layout(tmp_path / "pickapic_v2", corrupt=("test_unique",))
    # `hf download --local-dir` leaves its bookkeeping beside the files.
    bookkeeping = copy / ".cache/huggingface/download/data"
    bookkeeping.mkdir(parents=True)
    (bookkeeping / f"{HUB_FILES['train'][0]}.parquet.metadata").write_text("0123\n")
    schema = pq.read_schema(copy / "data" / f"{HUB_FILES['train'][0]}.parquet")
    assert (
        schema.field("jpg_0").type == pa.binary() and schema.field("label_0").type == pa.float64()
    )
    source = {"kind": "parquet", "path": str(copy), "split": "train"}
    pairs = run_pair_rules(source, tmp_path)
    assert len(pairs) > 0 and set(pairs["label_w"]) == {1.0}
    assert S.layout_problems(source) == []
    bad = S.layout_problems({**source, "split": "validation"})
    assert "split 'validation'" in bad[0] and f"{HUB_FILES['test_unique'][0]}.parquet" in bad[0]


def test_split_patterns_select_exactly_one_splits_hub_files() -> None:
    from huggingface_hub.utils import filter_repo_objects

    listing = [f"data/{name}.parquet" for names in HUB_FILES.values() for name in names]
    listing += [".gitattributes", "README.md"]
    for split, names in HUB_FILES.items():
        chosen = filter_repo_objects(listing, allow_patterns=split_patterns(split, (".parquet",)))
        assert sorted(chosen) == [f"data/{name}.parquet" for name in names]


def cached_repo(tmp_path: Path, monkeypatch, repo_id: str) -> Path:
    """The snapshot folder of a dataset in an offline hub cache, laid out as a download
    (huggingface_hub's cache: datasets--owner--name/refs/main and snapshots/<commit>/)."""
    import huggingface_hub.constants as constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / f"datasets--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return repo / "snapshots" / commit


def as_blobs(snapshot: Path) -> None:
    """Each file of a snapshot moved to the cache's blobs/ and linked back, as the hub cache
    stores them."""
    blobs = snapshot.parent.parent / "blobs"
    blobs.mkdir(exist_ok=True)
    for file in sorted(f for f in snapshot.rglob("*") if f.is_file()):
        blob = blobs / hashlib.sha256(file.read_bytes()).hexdigest()
        file.rename(blob)
        file.symlink_to(os.path.relpath(blob, file.parent))


def hub_cache(tmp_path: Path, monkeypatch, corrupt: tuple[str, ...]) -> None:
    """An offline hub cache holding the dataset me/pickapic_v2 (train and test_unique)."""
    snapshot = cached_repo(tmp_path, monkeypatch, "me/pickapic_v2")
    write_hub_layout(snapshot, corrupt=corrupt)
    as_blobs(snapshot)


def test_a_repo_whose_files_name_no_split_is_its_train_split(tmp_path, monkeypatch) -> None:
    # nateraw/parti-prompts keeps one table at the repo's root; the hub reads it as "train".
    snapshot = cached_repo(tmp_path, monkeypatch, "me/parti-prompts")
    snapshot.mkdir(parents=True)
    (snapshot / "PartiPrompts.tsv").write_text("Prompt\tCategory\na red cube\tArtifacts\n")
    as_blobs(snapshot)
    source = {"kind": "hub", "id": "me/parti-prompts", "split": "train", "column": "Prompt"}
    assert prompts.load_prompt_set("parti", {"source": source})["prompt"].tolist() == ["a red cube"]
    with pytest.raises(FileNotFoundError, match=r"'me/parti-prompts'.*split 'test'.*1 file \("):
        prompts.load_prompt_set("parti", {"source": {**source, "split": "test"}})


def test_a_hub_source_reads_only_its_splits_files(tmp_path: Path, monkeypatch) -> None:
    # Reading either split through the real download code never opens the other's files:
    # they are not parquet, so any read of them would fail.
    hub_cache(tmp_path, monkeypatch, corrupt=("test_unique",))
    source = {"kind": "hub", "id": "me/pickapic_v2", "split": "train"}
    assert len(S.load_source(source)) == 12
    monkeypatch.undo()
    hub_cache(tmp_path / "other", monkeypatch, corrupt=("train",))
    spec = {"source": {"kind": "hub", "id": "me/pickapic_v2", "split": "test_unique"}}
    spec["source"]["column"] = "caption"
    assert len(prompts.load_prompt_set("pickv2", spec)) > 0
    with pytest.raises((OSError, ValueError)):  # the check: asked for, those files are read
        S.load_source(source)


# --- plan time -------------------------------------------------------------------------


def pair_config(source: dict) -> dict:
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config["pairs"]["source"] = source
    return config


@pytest.mark.parametrize(
    ("source", "named"),
    [
        ({"kind": "parquet", "path": "p", "streaming": True}, "pairs.source.streaming: unknown"),
        ({"kind": "webdataset", "path": "w", "revision": "x"}, "pairs.source.revision: unknown"),
        ({"kind": "parquet", "path": "p", "members": {"jpg_0": "a"}}, "pairs.source.members"),
        ({"kind": "webdataset", "path": "w", "members": {"jpg_0": "a"}}, "needs 'jpg_1'"),
    ],
)
def test_every_key_the_loader_refuses_is_refused_at_plan_time(tmp_path, source, named) -> None:
    write_hub_layout(tmp_path / "p")
    public_copy(tmp_path / "w")
    problems = config_problems(pair_config(source), tmp_path)
    assert any(problem.startswith(named) or named in problem for problem in problems), problems
    with pytest.raises(ValueError):
        S.source_units({**source, "path": str(tmp_path / source["path"])})


def test_pair_only_keys_on_a_prompt_set_are_refused_at_plan_time(tmp_path: Path) -> None:
    config = pair_config({"kind": "toy"})
    config["evaluation"]["prompt_sets"]["pickv2"]["source"] = {
        "kind": "hub",
        "id": "me/pickapic_v2",
        "split": "test_unique",
        "streaming": True,
        "members": None,  # null: dropped, as a preset may
    }
    problems = config_problems(config, tmp_path)
    assert problems == [
        "evaluation.prompt_sets.pickv2.source.streaming: only a pair source reads it"
    ]


def test_streaming_without_datasets_is_refused_at_plan_time(monkeypatch, tmp_path) -> None:
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "datasets" else find_spec(name, *a),
    )
    source = {"kind": "hub", "id": "me/pickapic_v2", "split": "train"}
    assert config_problems(pair_config(source), tmp_path) == []
    problems = config_problems(pair_config({**source, "streaming": True}), tmp_path)
    assert len(problems) == 1 and problems[0].startswith("pairs.source.streaming:")
    assert "pip install dspo[hub]" in problems[0]


@pytest.mark.parametrize(
    ("source", "named"),
    [
        (
            {"kind": "webdataset", "path": "wds"},
            ["pairs.source: webdataset", "has members ['jpg', 'txt']", "KEY.original_prompt.txt"],
        ),
        (
            {"kind": "parquet", "path": "pickapic_v2", "split": "train", "streaming": True},
            ["pairs.source.streaming: unknown key for a 'parquet' source"],
        ),
    ],
)
def test_a_source_the_loader_refuses_fails_the_plan(tmp_path: Path, source, named) -> None:
    write_members(tmp_path / "wds" / "00000.tar", [{"jpg": jpeg(RED), "txt": b"a cat"}])
    write_hub_layout(tmp_path / "pickapic_v2")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"pairs": {"source": source}}))
    config = str(tmp_path / "bad.yaml")
    result = snakemake("-n", "all", "--configfile", config, cwd=tmp_path, check=False)
    assert result.returncode != 0
    assert all(text in result.stdout for text in named), result.stdout


def test_the_workflow_builds_pairs_from_the_public_webdataset_copy(tmp_path: Path) -> None:
    public_copy(tmp_path / "pickapic_v2_webdataset")
    source = {"kind": "webdataset", "path": "pickapic_v2_webdataset"}
    (tmp_path / "wds.yaml").write_text(yaml.safe_dump({"pairs": {"source": source, "shards": 2}}))
    config = str(tmp_path / "wds.yaml")
    snakemake("results/data/pairs.parquet", "-c1", "--configfile", config, cwd=tmp_path)
    pairs = read_pairs(tmp_path / "results/data/pairs.parquet")
    assert sorted(pairs["caption"]) == ["a red car", "a red cat", "a red dog", "a red owl"]
    assert all(colour_of(image) == RED for image in pairs["jpg_w"])
