"""Stand-ins load through the project's real loaders, in the published formats and sizes."""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from dspo.config.step import workflow_config
from dspo.data.pair_table import read_pairs
from dspo.data.pairs import PairSettings, gather_pairs, normalise_part
from dspo.data.prompts import load_editing_set, load_prompt_set
from dspo.data.split_files import TABLE_SUFFIXES, repo_split_files, split_files
from dspo.families.sd_pipeline import load_pipeline
from dspo.rewards import load_reward
from dspo.standins import (
    AESTHETIC_FILE,
    EDITING,
    HPS_FILE,
    HPSV2_BENCHMARK,
    IMAGE_REWARD,
    LAION_CLIP,
    OPENAI_CLIP_L,
    PICKAPIC,
    PICKAPIC_VALIDATION,
    PICKSCORE,
    PROMPTS,
    SD15,
    SDXL,
    write_standins,
)
from dspo.standins.tokenizers import BERT_VOCAB_SIZE, CLIP_VOCAB_SIZE

PAIRS = 40
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def standins(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("standins")
    components = ["sd15", "sdxl", "pickscore", "clip", "hps", "aesthetics", "image_reward"]
    components += ["pickapic", "pickapic_validation", "prompts", "editing", "blip_vqa"]
    components += ["compbench"]
    manifest = write_standins(out, components, tiny=True, pairs=PAIRS, prompts=8)
    return out, manifest


def test_full_architectures_have_the_published_sizes() -> None:
    """Counted on the meta device (no memory): the configs the full stand-ins are built from."""
    import transformers
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from dspo.standins import architectures, rewards

    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    def text(cfg: dict, cls: type) -> torch.nn.Module:
        return cls(transformers.CLIPTextConfig(vocab_size=CLIP_VOCAB_SIZE, **cfg))

    with torch.device("meta"):
        sd15_unet = count(UNet2DConditionModel(**architectures.SD15_UNET))
        sdxl_unet = count(UNet2DConditionModel(**architectures.SDXL_UNET))
        vae = count(AutoencoderKL(**architectures.SD_VAE))
        clip_l = count(text(architectures.CLIP_L_TEXT, transformers.CLIPTextModel))
        big_g = count(text(architectures.CLIP_BIGG_TEXT, transformers.CLIPTextModelWithProjection))
        vit_h = count(rewards._clip_model(rewards.VIT_H_14, tiny=False))
        vit_l = count(rewards._clip_model(rewards.VIT_L_14, tiny=False))
    # The parameter counts published for SD1.5, SDXL base 1.0, open_clip ViT-H-14 and
    # OpenAI CLIP ViT-L/14.
    assert sd15_unet == 859_520_964 and sdxl_unet == 2_567_463_684 and vae == 83_653_863
    assert clip_l == 123_060_480 and big_g == 694_659_840
    assert vit_h == 986_109_441 and vit_l == 427_616_513


def test_pipelines_load_and_sample_through_load_pipeline(standins: tuple[Path, dict]) -> None:
    out, _ = standins
    index = json.loads((out / SD15 / "model_index.json").read_text())
    assert index["safety_checker"] == ["stable_diffusion", "StableDiffusionSafetyChecker"]
    assert sorted(p.name for p in (out / SD15 / "tokenizer").iterdir()) == [
        "merges.txt",
        "tokenizer_config.json",
        "vocab.json",
    ]
    for folder, cls, encoders in [
        (SD15, "StableDiffusionPipeline", 1),
        (SDXL, "StableDiffusionXLPipeline", 2),
    ]:
        pipe = load_pipeline(out / folder)
        assert type(pipe).__name__ == cls
        assert len(pipe.tokenizer) == CLIP_VOCAB_SIZE
        assert pipe.text_encoder.config.vocab_size == CLIP_VOCAB_SIZE
        assert len(pipe.vae.config.block_out_channels) == 4  # latents 8x smaller than pixels
        assert (getattr(pipe, "text_encoder_2", None) is not None) == (encoders == 2)
        image = pipe("a tiny cat at sunset, photo", num_inference_steps=1, height=64, width=64)
        assert image.images[0].size == (64, 64)


def test_rewards_load_from_the_published_layouts_and_score(standins: tuple[Path, dict]) -> None:
    out, _ = standins
    specs = {
        "pickscore": {"kind": "pickscore", "model": out / PICKSCORE, "processor": out / LAION_CLIP},
        "hps": {
            "kind": "hpsv2",
            "version": "v2.1",
            "checkpoint": out / HPS_FILE,
        },
        "aesthetics": {
            "kind": "laion_aesthetics",
            "checkpoint": out / AESTHETIC_FILE,
            "clip_model": out / OPENAI_CLIP_L,
        },
        "clip": {"kind": "clip_score", "model": out / LAION_CLIP},
        "image_reward": {
            "kind": "image_reward",
            "checkpoint": out / IMAGE_REWARD / "ImageReward.pt",
            "med_config": out / IMAGE_REWARD / "med_config.json",
            "tokenizer": out / "bert-base-uncased",
        },
    }
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (96, 64, 3), dtype=np.uint8)) for _ in "ab"]
    prompts = ["a giant owl in the fog, anime", "an ancient ship at sunset, photo"]
    for name, spec in specs.items():
        reward = load_reward({k: str(v) for k, v in spec.items()})
        scores = reward.score(images, prompts)
        assert scores.shape == (2,) and np.isfinite(scores).all(), name
        assert np.array_equal(scores, reward.score(images, prompts)), name
    hps = torch.load(out / HPS_FILE, weights_only=True)
    assert list(hps) == ["state_dict"]
    assert {v.dtype for v in hps["state_dict"].values()} == {torch.float16}
    aesthetic = torch.load(out / AESTHETIC_FILE, weights_only=True)
    assert sorted({k.rsplit(".", 1)[0] for k in aesthetic}) == [
        f"layers.{i}" for i in (0, 2, 4, 6, 7)
    ]
    from transformers import BertTokenizer, CLIPTokenizer

    assert len(BertTokenizer.from_pretrained(out / "bert-base-uncased")) == BERT_VOCAB_SIZE
    assert len(CLIPTokenizer.from_pretrained(out / LAION_CLIP)) == CLIP_VOCAB_SIZE


def test_pickapic_folder_goes_through_the_normaliser_with_its_counts(
    standins: tuple[Path, dict], tmp_path: Path
) -> None:
    out, manifest = standins
    counts = manifest["pickapic"]["holds"]["train"]
    assert sum(counts.values()) == PAIRS and min(counts.values()) >= 1
    source = {"kind": "parquet", "path": str(out / PICKAPIC / "data"), "split": "train"}
    settings = PairSettings.from_params({"source": source, "drop_ties": True}, source)
    parts = [tmp_path / f"part{i}" for i in range(2)]
    for i, part in enumerate(parts):
        normalise_part(settings, i, 2, part)
    stats = gather_pairs(parts, tmp_path / "pairs.parquet")
    assert stats["input"] == PAIRS
    assert stats["kept"] == counts["pair"]
    assert stats["ties_dropped"] == counts["tie"]
    assert stats["unlabelled"] == counts["unlabelled"]
    assert stats["identical"] == counts["identical"]
    assert stats["unreadable"] == counts["corrupt"]
    sizes = {
        Image.open(io.BytesIO(b)).size for b in read_pairs(tmp_path / "pairs.parquet")["jpg_w"]
    }
    assert all(min(s) >= 512 and max(s) <= 1024 for s in sizes) and len(sizes) > 3


def test_prompt_files_and_editing_set_load_as_the_preset_reads_them(
    standins: tuple[Path, dict],
) -> None:
    out, _ = standins
    sets = {
        "pickv2": {
            "kind": "file",
            "path": str(next((out / PICKAPIC / "data").glob("test_unique-*"))),
            "column": "caption",
        },
        "parti": {
            "kind": "file",
            "path": str(out / PROMPTS / "PartiPrompts.tsv"),
            "column": "Prompt",
        },
        # zhwang/HPDv2's layout: benchmark/{anime,concept-art,paintings,photo}.json.
        "hpsv2": {"kind": "hpsv2", "path": str(out / HPSV2_BENCHMARK)},
    }
    for name, source in sets.items():
        table = load_prompt_set(name, {"source": source})
        assert len(table) > 0 and table["prompt"].str.len().min() > 0, name
    editing = load_editing_set(
        {
            "source": {
                "kind": "file",
                "path": str(out / EDITING),
                "column": "edit_prompt",
                "image_column": "input_image",
            }
        }
    )
    assert len(editing) > 0
    assert Image.open(io.BytesIO(editing["image"][0])).size == (512, 512)


def test_the_validation_captions_stand_in_reads_as_the_presets_read_it(tmp_path: Path) -> None:
    """The step choice's validation set: the stand-in, in pickapic_v1_no_images's layout, is
    the file the hub source's split selects, and the rehearsal's prompt set reads it."""
    manifest = write_standins(tmp_path, ["pickapic_validation"], prompts=6)
    folder = tmp_path / PICKAPIC_VALIDATION
    file = folder / "data/validation_unique-00000-of-00001.parquet"
    assert manifest["pickapic_validation"]["holds"] == str(file)
    presets = [REPO / f"config/presets/{n}.yaml" for n in ("sd15", "rehearsal")]
    sd15 = workflow_config(presets[:1])["evaluation"]["prompt_sets"]["pickapic_validation"]
    split = sd15["source"]["split"]
    assert split_files(str(folder), split, TABLE_SUFFIXES) == [file]
    names = [str(f.relative_to(folder)) for f in folder.rglob("*.parquet")]
    assert repo_split_files(names, split, TABLE_SUFFIXES) == ["data/" + file.name]
    columns = pq.read_schema(file).names
    assert "caption" in columns and not {"jpg_0", "jpg_1"} & set(columns)
    assert pq.read_metadata(file).num_rows == 6

    spec = workflow_config(presets)["evaluation"]["prompt_sets"]["pickapic_validation"]
    source = {**spec["source"], "path": str(tmp_path / spec["source"]["path"].split("/", 1)[1])}
    table = load_prompt_set("pickapic_validation", {**spec, "source": source})
    assert len(table) == 2 and table["prompt"].is_unique  # the rehearsal's limit
    every = load_prompt_set("pickapic_validation", {"source": {**source, "limit": None}})
    assert len(every) == 6 and every["prompt"].str.len().min() > 0


def test_stand_ins_are_deterministic(standins: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = standins
    again = tmp_path / "again"
    write_standins(again, ["hps", "pickapic", "image_reward"], tiny=True, pairs=PAIRS, prompts=8)

    def digest(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    for rel in [HPS_FILE, f"{IMAGE_REWARD}/ImageReward.pt"]:
        first, second = (
            torch.load(out / rel, weights_only=True),
            torch.load(again / rel, weights_only=True),
        )
        first = first.get("state_dict", first)
        second = second.get("state_dict", second)
        assert first.keys() == second.keys()
        assert all(torch.equal(first[k], second[k]) for k in first), rel
    for file in sorted((out / PICKAPIC / "data").iterdir()):
        assert digest(file) == digest(again / PICKAPIC / "data" / file.name), file.name


def test_unknown_components_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\['sd3'\]"):
        write_standins(tmp_path, ["sd15", "sd3"], tiny=True)


def plan_on_standins(standins: tuple[Path, dict], workdir: Path, *names: str) -> str:
    """The output of `snakemake -n -p all` with these presets, in a folder whose ./standins
    is the stand-in folder, as the rehearsal runs."""
    from tests.workflow_run import REPO, snakemake

    (workdir / "standins").symlink_to(standins[0])
    presets = [str(REPO / "config/presets" / name) for name in names]
    return snakemake("-n", "-p", "all", "--configfile", *presets, cwd=workdir).stdout


def test_rehearsal_preset_plans_the_paper_dag_on_the_stand_ins(
    standins: tuple[Path, dict], tmp_path: Path
) -> None:
    from tests.workflow_run import planned_jobs

    stdout = plan_on_standins(standins, tmp_path, "sd15.yaml", "rehearsal.yaml")
    jobs = planned_jobs(stdout)
    # The base and ten trained methods, and step 1 of each (the step choice): 21 models.
    assert jobs["train"] == 10 and jobs["step_model"] == 10 and "edit" not in jobs
    assert jobs["generate"] == 21 and jobs["score"] == 21 and jobs["tables"] == 1
    assert jobs["score_binding"] == 21 and jobs["binding_table"] == 1
    assert jobs["pairs_part"] == 2 and jobs["ddspo_part"] == 2 and jobs["cache_part"] == 6
    assert "base_model" not in jobs and "toy_world" not in jobs
    assert "fetch_item" not in jobs  # every hub file of sd15 is read from the stand-ins
    # sd15's validation images add the first caption of the Pick-a-Pic validation stand-in.
    table = "results/data/prompts/pickapic_validation.parquet"
    assert len(re.findall(rf"rule train:\n    input: .*{re.escape(table)}", stdout)) == 10
    chosen = '"from_prompt_set": {"count": 1, "name": "pickapic_validation"}'
    assert stdout.count(chosen) == 10


def test_sdxl_rehearsal_plans_the_table_2_dag_on_the_stand_ins(
    standins: tuple[Path, dict], tmp_path: Path
) -> None:
    from tests.workflow_run import planned_jobs

    names = ("sd15.yaml", "sdxl.yaml", "rehearsal.yaml", "rehearsal_sdxl.yaml")
    stdout = plan_on_standins(standins, tmp_path, *names)
    jobs = planned_jobs(stdout)
    # Both of DDSPO's evaluations on every model (the base, 10 runs and their kept step 1):
    # B-VQA and the Inception Score.
    assert jobs["score_binding"] == jobs["quality"] == jobs["generate"] == 21
    assert jobs["step_model"] == 10
    assert "results/tables/table2.md" in stdout and "table1.md" not in stdout
    for table in ("ddspo", "image_quality", "attribute_binding"):
        assert f"results/tables/{table}.csv" in stdout
    assert "fetch_item" not in jobs  # every hub file is read from the stand-ins


def test_ai_feedback_rehearsal_plans_two_rounds_on_the_stand_ins(
    standins: tuple[Path, dict], tmp_path: Path
) -> None:
    from tests.workflow_run import planned_jobs

    names = ("sd15.yaml", "rehearsal.yaml", "sd15-ai-feedback.yaml", "rehearsal-ai-feedback.yaml")
    stdout = plan_on_standins(standins, tmp_path, *names)
    jobs = planned_jobs(stdout)
    # The base, then each method's round 1, sampled in 2 parts each; 2 methods x 2 rounds.
    assert jobs["generated_images"] == jobs["generated_labels"] == 3 * 2
    assert jobs["train"] == 4 and jobs["generated_pairs"] == 2 and jobs["pairs_part"] == 2
    assert jobs["generate"] == jobs["score"] == jobs["quality"] == 5
    assert "results/tables/ai_feedback.md" in stdout
    assert "fetch_item" not in jobs and "prompt_set.parti" not in stdout
    assert "step_model" not in jobs  # no step choice by the reward that labels the pairs
    # The Parti prompts are the stand-in's file, not a hub download.
    assert "standins/prompts/PartiPrompts.tsv" in stdout
