"""`dspo fetch` through huggingface_hub's real download code, against a local hub server.

The hub folder holds stand-ins under the public repo ids, file names and formats:
``stable-diffusion-v1-5/stable-diffusion-v1-5`` (a diffusers pipeline, with a safety checker,
fp16 variants and a single-file checkpoint beside it, as the real repo has),
``zhwang/HPDv2`` (``benchmark/{anime,concept-art,paintings,photo}.json``, JSON lists of
strings, plus training data), ``trl-lib/ddpo-aesthetic-predictor`` (``aesthetic-model.pth``),
``openai/clip-vit-large-patch14`` (a CLIPModel folder with safetensors and bin weights),
``yuvalkirstain/pickapic_v2`` (``data/<split>-0000i-of-0000n.parquet``, two splits) and
``sayakpaul/pickapic_v2_webdataset`` (``00000.tar`` ... with members
``KEY.original_prompt.txt``, ``KEY.jpg_0.jpg``, ``KEY.jpg_1.jpg``, ``KEY.label_0.txt``,
``KEY.label_1.txt``, as diffusers' ``train_diffusion_orpo_sdxl_lora_wds.py`` reads them).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from dspo.config.step import workflow_config
from dspo.hub.fetch import (
    Artefact,
    folder_files,
    hub_artefacts,
    hub_source_files,
    pipeline_files,
    released_files,
)
from dspo.standins import AESTHETIC_FILE, HPSV2_BENCHMARK, OPENAI_CLIP_L, PICKAPIC, write_standins
from tests.conftest import jpeg
from tests.hub_server import commit_of, serve_hub
from tests.workflow_run import REPO, snakemake

SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
WDS = "sayakpaul/pickapic_v2_webdataset"
PICKAPIC_ID = "yuvalkirstain/pickapic_v2"
HPDV2 = "zhwang/HPDv2"
AESTHETIC_REPO = "trl-lib/ddpo-aesthetic-predictor"
CLIP_L = "openai/clip-vit-large-patch14"


def write_webdataset_tar(path: Path, keys: list[str]) -> None:
    with tarfile.open(path, "w") as tar:
        for i, key in enumerate(keys):
            members = {
                "original_prompt.txt": f"a red circle {i}".encode(),
                "jpg_0.jpg": jpeg((200, 0, 0)),
                "jpg_1.jpg": jpeg((0, 0, 200)),
                "label_0.txt": b"1",
                "label_1.txt": b"0",
            }
            for member, data in members.items():
                info = tarfile.TarInfo(f"{key}.{member}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """ROOT/{models,datasets}/OWNER/NAME: the stand-ins under the public repo ids."""
    standins = tmp_path_factory.mktemp("standins")
    write_standins(standins, ["aesthetics", "pickapic", "prompts"], tiny=True, pairs=8, prompts=8)
    root = tmp_path_factory.mktemp("hub")
    models, datasets = root / "models", root / "datasets"
    shutil.copytree(tiny_model, models / SD15)
    index = json.loads((models / SD15 / "model_index.json").read_text())
    index["safety_checker"] = ["stable_diffusion", "StableDiffusionSafetyChecker"]
    (models / SD15 / "model_index.json").write_text(json.dumps(index))
    for extra in (
        "safety_checker/model.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors",
    ):
        (models / SD15 / extra).parent.mkdir(exist_ok=True)
        (models / SD15 / extra).write_bytes(b"not read")
    (models / SD15 / "v1-5-pruned.ckpt").write_bytes(b"not read")
    shutil.copytree(standins / Path(AESTHETIC_FILE).parent, models / AESTHETIC_REPO)
    shutil.copytree(standins / OPENAI_CLIP_L, models / CLIP_L)
    (models / CLIP_L / "pytorch_model.bin").write_bytes(b"the safetensors are read instead")
    shutil.copytree(standins / HPSV2_BENCHMARK, datasets / HPDV2)
    (datasets / HPDV2 / "train.tar").write_bytes(b"HPDv2's training images: not read")
    shutil.copytree(standins / PICKAPIC, datasets / PICKAPIC_ID)
    (datasets / WDS).mkdir(parents=True)
    (datasets / WDS / "README.md").write_text("# Pick-a-Pic v2 as webdataset\n")
    for shard in range(2):
        keys = [f"{shard:05d}{i:04d}" for i in range(3)]
        write_webdataset_tar(datasets / WDS / f"{shard:05d}.tar", keys)
    return root


def fetch_config(path: Path) -> Path:
    """A config over the default naming every kind of hub artefact, with local-only rewards
    left out except the aesthetic one (its head and CLIP from the hub)."""
    config = {
        "base_model": {"path": SD15, "build": None},
        "pairs": {"source": {"kind": "hub", "id": WDS, "split": "train"}},
        "evaluation": {
            "prompt_sets": {
                "pickv2": {
                    "source": {
                        "kind": "hub",
                        "id": PICKAPIC_ID,
                        "split": "test_unique",
                        "column": "caption",
                    }
                },
                "hpsv2": {"source": {"kind": "hpsv2", "id": HPDV2}},
            },
            "rewards": {
                "aesthetics": {
                    "kind": "laion_aesthetics",
                    "checkpoint": "aesthetic-model.pth",
                    "repo": AESTHETIC_REPO,
                    "clip_model": CLIP_L,
                }
            },
            "editing": None,
        },
    }
    path.write_text(yaml.safe_dump(config))
    return path


def hub_env(endpoint: str, cache: Path, offline: bool) -> dict[str, str]:
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_CACHE": str(cache)}
    env.update(HF_HUB_OFFLINE="1" if offline else "0", HF_HUB_DISABLE_TELEMETRY="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def fetched(hub: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str]]:
    """`dspo fetch --configfile` run against the server: (out folder, hub cache, requests)."""
    work = tmp_path_factory.mktemp("fetch")
    config = fetch_config(work / "fetch.yaml")
    with serve_hub(hub) as (endpoint, requests):
        result = subprocess.run(
            [sys.executable, "-m", "dspo.cli.commands", "fetch", "--configfile", str(config)]
            + ["--out", str(work / "out")],
            env=hub_env(endpoint, work / "cache", offline=False),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    assert result.returncode == 0, result.stdout
    return work / "out", work / "cache", list(requests)


def test_fetch_downloads_what_the_config_names_and_records_it(hub: Path, fetched) -> None:
    out, _, requests = fetched
    manifest = json.loads((out / "manifest.json").read_text())
    records = {r["item"]: r for r in manifest["artefacts"]}
    assert set(records) == {
        "base_model",
        "pairs",
        "prompt_set.pickv2",
        "prompt_set.hpsv2",
        "reward.aesthetics.clip_model",
        "reward.aesthetics.checkpoint",
    }
    for record in records.values():
        kind = "datasets" if record["repo_type"] == "dataset" else "models"
        folder = hub / kind / record["repo"]
        # Pinned: the commit the default branch pointed at, and each file as served.
        assert record["revision"] == commit_of(folder) and record["requested_revision"] is None
        for entry in record["files"]:
            assert entry["size"] == (folder / entry["file"]).stat().st_size
            assert entry["sha256"] == sha256(folder / entry["file"])
    files = {item: {f["file"] for f in r["files"]} for item, r in records.items()}
    assert files["pairs"] == {"00000.tar", "00001.tar"}
    assert files["prompt_set.pickv2"] == {"data/test_unique-00000-of-00001.parquet"}
    assert files["prompt_set.hpsv2"] == {
        f"benchmark/{s}.json" for s in ("anime", "concept-art", "paintings", "photo")
    }
    assert files["reward.aesthetics.checkpoint"] == {"aesthetic-model.pth"}
    assert "model.safetensors" in files["reward.aesthetics.clip_model"]
    assert "pytorch_model.bin" not in files["reward.aesthetics.clip_model"]
    pipeline = files["base_model"]
    assert {"model_index.json", "unet/diffusion_pytorch_model.safetensors"} <= pipeline
    assert not any("safety_checker" in f or "fp16" in f or f.endswith(".ckpt") for f in pipeline)
    # Nothing else was downloaded: the other split, HPDv2's training data.
    downloads = [r for r in requests if r.startswith("GET") and "/resolve/" in r]
    assert not any("train-" in r or "train.tar" in r or "README" in r for r in downloads)
    assert manifest["bytes"] == sum(f["size"] for r in records.values() for f in r["files"])


# Run offline in a fresh process (huggingface_hub reads HF_HUB_OFFLINE at import): the HPSv2
# prompts, the aesthetic head and the pipeline, by hub id (argv: HPDv2, head repo, pipeline).
OFFLINE_READS = """
import json, sys
from dspo.data.prompts import load_prompt_set
from dspo.families.sd_pipeline import load_pipeline
from dspo.rewards.common import resolve_file
hpsv2_id, head_repo, pipeline_id = sys.argv[1:]
hpsv2 = load_prompt_set("hpsv2", {"source": {"kind": "hpsv2", "id": hpsv2_id}})
spec = {"kind": "laion_aesthetics", "checkpoint": "aesthetic-model.pth"}
head = resolve_file(spec, "checkpoint", None, head_repo)
pipe = load_pipeline(pipeline_id)
print(json.dumps({"hpsv2": hpsv2["prompt"].tolist(), "head": str(head),
                  "unet": type(pipe.unet).__name__}))
"""


def test_after_fetch_the_jobs_read_offline(hub: Path, fetched) -> None:
    """With HF_HUB_OFFLINE=1 and no server at all, the loaders find every fetched file."""
    _, cache, _ = fetched
    env = hub_env("http://127.0.0.1:9", cache, offline=True)
    result = subprocess.run(
        [sys.executable, "-c", OFFLINE_READS, HPDV2, AESTHETIC_REPO, SD15],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert result.returncode == 0
    read = json.loads(result.stdout.strip().splitlines()[-1])
    styles = ("anime", "concept-art", "paintings", "photo")
    expected = [
        p
        for s in styles
        for p in json.loads((hub / "datasets" / HPDV2 / f"benchmark/{s}.json").read_text())
    ]
    assert read["hpsv2"] == list(dict.fromkeys(expected))  # each prompt once, in file order
    assert sha256(Path(read["head"])) == sha256(
        hub / "models" / AESTHETIC_REPO / "aesthetic-model.pth"
    )
    assert read["unet"] == "UNet2DConditionModel"


def test_snakemake_fetch_runs_the_downloads_as_localrules(
    hub: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = fetch_config(tmp_path / "fetch.yaml")
    with serve_hub(hub) as (endpoint, _):
        # HF_HUB_OFFLINE=1 as every job has it: the download rule turns it off for itself.
        for key, value in hub_env(endpoint, tmp_path / "cache", offline=True).items():
            monkeypatch.setenv(key, value)
        snakemake("--cores", "1", "fetch", "--configfile", str(config), cwd=tmp_path)
    manifest = json.loads((tmp_path / "results/fetch/manifest.json").read_text())
    assert len(manifest["artefacts"]) == 6
    # The plan of `all` now waits for nothing to download.
    plan = snakemake("-n", "all", "--configfile", str(config), cwd=tmp_path).stdout
    assert "rule fetch_item" not in plan


def test_the_sd15_preset_names_the_public_hub_files() -> None:
    config = workflow_config([REPO / "config/presets/sd15.yaml"])
    found = {a.item: a for a in hub_artefacts(config, REPO)}
    assert found["pairs"] == Artefact("pairs", WDS, "split", "dataset", split="train")
    assert found["prompt_set.hpsv2"].repo == HPDV2
    # Pick-a-Pic v2's repo is gone: the 500 test_unique captions of v1 are the public set.
    assert found["prompt_set.pickv2"] == Artefact(
        "prompt_set.pickv2", "yuvalkirstain/pickapic_v1", "split", "dataset", split="test_unique"
    )
    # The step choice's validation set: v1's validation_unique captions, one small file.
    assert found["prompt_set.pickapic_validation"] == Artefact(
        "prompt_set.pickapic_validation",
        "yuvalkirstain/pickapic_v1_no_images",
        "split",
        "dataset",
        split="validation_unique",
    )
    assert found["reward.aesthetics.checkpoint"] == Artefact(
        "reward.aesthetics.checkpoint", AESTHETIC_REPO, "files", files=("aesthetic-model.pth",)
    )
    assert found["reward.image_reward.tokenizer"].what == "processor"
    assert found["base_model"].what == "pipeline"
    # The released checkpoints the sd15 preset scores as rows (methods.<name>.model).
    assert found["released.diffusion_dpo_released"] == Artefact(
        "released.diffusion_dpo_released", "mhdang/dpo-sd1.5-text2image-v1", "released"
    )
    assert found["released.diffusion_kto_released"].repo == "jacklishufan/diffusion-kto"


def test_the_llm_degrader_is_fetched_when_ddspo_pairs_are_made_with_it() -> None:
    presets = [REPO / f"config/presets/{n}.yaml" for n in ("sd15", "ddspo-llm")]
    config = workflow_config(presets)
    found = {a.item: a for a in hub_artefacts(config, REPO)}
    llama = "meta-llama/Meta-Llama-3-8B-Instruct"
    assert found["ddspo.degrader"] == Artefact("ddspo.degrader", llama, "model")
    items = {a.item for a in hub_artefacts(workflow_config(presets[:1]), REPO)}
    assert "ddspo.degrader" not in items  # word dropping
    config["methods"]["ddspo"] = None  # no method trains on DDSPO's pairs
    assert "ddspo.degrader" not in {a.item for a in hub_artefacts(config, REPO)}


def test_the_rehearsal_reads_every_hub_file_from_the_stand_ins(tmp_path: Path) -> None:
    (tmp_path / "standins").mkdir()
    rehearsal = workflow_config([REPO / f"config/presets/{n}.yaml" for n in ("sd15", "rehearsal")])
    assert hub_artefacts(rehearsal, tmp_path) == []


def test_split_files_of_the_public_layouts() -> None:
    wds = ["README.md", *(f"{i:05d}.tar" for i in range(645))]
    assert hub_source_files(wds, "train") == wds[1:]
    parquet = [
        "README.md",
        "data/train-00000-of-00002.parquet",
        "data/train-00001-of-00002.parquet",
        "data/validation-00000-of-00001.parquet",
        "data/validation_unique-00000-of-00001.parquet",
    ]
    assert hub_source_files(parquet, "validation") == ["data/validation-00000-of-00001.parquet"]
    assert hub_source_files(parquet, "train") == parquet[1:3]
    with pytest.raises(ValueError, match="split 'test'.*validation_unique"):
        hub_source_files(parquet, "test")


def test_the_validation_split_is_one_file_of_the_captions_only_pickapic_v1() -> None:
    """The file listing of huggingface.co/datasets/yuvalkirstain/pickapic_v1_no_images
    (tree/main/data): sd15's validation set downloads its validation_unique file only."""
    listing = [
        ".gitattributes",
        "data/test-00000-of-00001-75d003ad32a6ef60.parquet",
        "data/test_unique-00000-of-00001-73a51cbb6488571d.parquet",
        "data/train-00000-of-00001-b138676ed2d1f52a.parquet",
        "data/validation-00000-of-00001-19b75fb98b49bb93.parquet",
        "data/validation_unique-00000-of-00001-847ed34b90bbafc3.parquet",
    ]
    assert hub_source_files(listing, "validation_unique") == listing[-1:]


def test_weights_in_one_format_and_pipeline_components_only() -> None:
    listing = [
        "config.json",
        "model.safetensors",
        "pytorch_model.bin",
        "flax_model.msgpack",
        "open_clip_pytorch_model.bin",
        "tokenizer.json",
        "merges.txt",
    ]
    assert folder_files(listing, "", weights=True) == [
        "config.json",
        "merges.txt",
        "model.safetensors",
        "tokenizer.json",
    ]
    assert folder_files(listing, "", weights=False) == [
        "config.json",
        "merges.txt",
        "tokenizer.json",
    ]
    sharded = ["unet/config.json", "unet/diffusion_pytorch_model.safetensors.index.json"]
    sharded += [f"unet/diffusion_pytorch_model-0000{i}-of-00002.safetensors" for i in (1, 2)]
    sharded += ["vae_1_0/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json"]
    index = {"_class_name": "X", "unet": ["diffusers", "U"], "scheduler": ["diffusers", "S"]}
    unet = sorted(sharded[:4])
    expected = ["model_index.json", *unet, "scheduler/scheduler_config.json"]
    assert pipeline_files(sharded, index) == expected


def test_a_released_model_fetches_what_its_import_reads() -> None:
    # jacklishufan/diffusion-kto holds unet/ and a data/ folder (hub tree); only unet/ is read.
    kto = ["README.md", "unet/config.json", "unet/diffusion_pytorch_model.safetensors"]
    kto += ["data/train-00000-of-00001.parquet"]
    assert released_files(kto, None) == kto[1:3]
    lora = ["README.md", "pytorch_lora_weights.safetensors"]
    assert released_files(lora, None) == ["pytorch_lora_weights.safetensors"]
    pipeline = ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.bin"]
    index = {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "U"]}
    assert released_files(pipeline, index) == pipeline
    with pytest.raises(ValueError, match="model_index.json, unet/config.json"):
        released_files(["README.md", "weights.ckpt"], None)
