"""Stand-ins: random-weight checkpoints and data in the exact architectures and file layouts
that the sd15 and sdxl presets download, for rehearsing the real path offline.

``dspo standins --out DIR`` writes (each part selectable with ``--only``)::

    DIR/stable-diffusion-v1-5/             sd15     SD1.5 pipeline folder (859.5M UNet)
    DIR/stable-diffusion-xl-base-1.0/      sdxl     SDXL pipeline folder, float16 (2.6B UNet)
    DIR/PickScore_v1/                      pickscore  ViT-H-14 CLIPModel
    DIR/CLIP-ViT-H-14-laion2B-s32B-b79K/   clip     ViT-H-14 CLIPModel + processor/tokenizer
    DIR/HPSv2/HPS_v2.1_compressed.pt       hps      open_clip ViT-H-14 {"state_dict": ...}
    DIR/ddpo-aesthetic-predictor/aesthetic-model.pth
                                           aesthetics  MLP, over DIR/clip-vit-large-patch14/
    DIR/ImageReward/                       image_reward  ImageReward.pt + med_config.json
    DIR/bert-base-uncased/                 (with image_reward) its tokenizer
    DIR/blip-vqa-base/                     blip_vqa  BlipForQuestionAnswering + processor
    DIR/pickapic_v2/data/*.parquet         pickapic  train and test_unique splits
    DIR/pickapic_v1_no_images/data/validation_unique-00000-of-00001.parquet
                                           pickapic_validation  captions-only split
    DIR/prompts/PartiPrompts.tsv           prompts  Parti prompts, and
    DIR/HPDv2/benchmark/*.json                      the HPSv2 benchmark (zhwang/HPDv2's layout)
    DIR/instructpix2pix-1000-samples/      editing  train.parquet
    DIR/t2i-compbench/<c>_val/*.parquet    compbench  colour, shape, texture prompts
    DIR/inception/weights-inception-2015-12-05-6726825d.pth
                                           inception  FID Inception-v3 (torch-fidelity's file)
    DIR/standins.json                      what was written, with counts and seconds

Everything is seeded: the same arguments give the same files. ``--tiny`` keeps every class,
key name, vocabulary size and file format but shrinks widths and depths (tests).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from dspo.evaluation.inception import INCEPTION_FILE

SD15 = "stable-diffusion-v1-5"
SDXL = "stable-diffusion-xl-base-1.0"
LAION_CLIP = "CLIP-ViT-H-14-laion2B-s32B-b79K"
PICKSCORE = "PickScore_v1"
HPS_FILE = "HPSv2/HPS_v2.1_compressed.pt"
# The hub's trl-lib/ddpo-aesthetic-predictor: the LAION head under the file name used there.
AESTHETIC_FILE = "ddpo-aesthetic-predictor/aesthetic-model.pth"
OPENAI_CLIP_L = "clip-vit-large-patch14"
IMAGE_REWARD = "ImageReward"
PICKAPIC = "pickapic_v2"
# The hub dataset yuvalkirstain/pickapic_v1_no_images (captions only), with only the split
# that sd15's step choice validates on.
PICKAPIC_VALIDATION = "pickapic_v1_no_images"
PICKAPIC_VALIDATION_SPLIT = "validation_unique"
PROMPTS = "prompts"
# The hub dataset zhwang/HPDv2, with only its benchmark/ folder.
HPSV2_BENCHMARK = "HPDv2"
EDITING = "instructpix2pix-1000-samples/train.parquet"
BLIP_VQA = "blip-vqa-base"
# The hub dataset NinaKarine/t2i-compbench, with only its colour, shape and texture sets.
COMPBENCH = "t2i-compbench"
INCEPTION = f"inception/{INCEPTION_FILE}"
MANIFEST = "standins.json"

COMPONENTS = (
    "sd15",
    "sdxl",
    "pickscore",
    "clip",
    "hps",
    "aesthetics",
    "image_reward",
    "pickapic",
    "pickapic_validation",
    "prompts",
    "editing",
    "blip_vqa",
    "compbench",
    "inception",
)
# SDXL's folder is 7 GB even in float16 and only the sd15+sdxl rehearsal reads it.
DEFAULT_COMPONENTS = tuple(c for c in COMPONENTS if c != "sdxl")


def write_standins(
    out: Path,
    components: Iterable[str] = DEFAULT_COMPONENTS,
    *,
    tiny: bool = False,
    seed: int = 0,
    pairs: int = 96,
    prompts: int = 64,
    skip_existing: bool = False,
) -> dict[str, Any]:
    """Write the chosen stand-ins into ``out``; returns (and saves) what each one holds.

    ``skip_existing`` keeps the components the manifest already records with the same
    ``tiny`` and ``seed`` (each is recorded once complete), so an interrupted build resumes.
    """
    from dspo.standins import data, inception, pipelines, rewards

    chosen = list(dict.fromkeys(components))
    unknown = sorted(set(chosen) - set(COMPONENTS))
    if unknown:
        raise ValueError(f"unknown stand-in components {unknown}; expected some of {COMPONENTS}")
    out.mkdir(parents=True, exist_ok=True)
    vocabulary = data.words()
    writers: dict[str, Callable[[], Any]] = {
        "sd15": lambda: pipelines.write_sd15(out / SD15, vocabulary, tiny=tiny, seed=seed),
        "sdxl": lambda: pipelines.write_sdxl(out / SDXL, vocabulary, tiny=tiny, seed=seed),
        "pickscore": lambda: rewards.write_clip_folder(
            out / PICKSCORE, rewards.VIT_H_14, vocabulary, tiny=tiny, seed=seed + 10
        ),
        "clip": lambda: rewards.write_clip_folder(
            out / LAION_CLIP, rewards.VIT_H_14, vocabulary, tiny=tiny, seed=seed + 20
        ),
        "hps": lambda: rewards.write_hpsv2(out / HPS_FILE, tiny=tiny, seed=seed + 30),
        "aesthetics": lambda: rewards.write_aesthetics(
            out / AESTHETIC_FILE, out / OPENAI_CLIP_L, vocabulary, tiny=tiny, seed=seed + 40
        ),
        "image_reward": lambda: rewards.write_image_reward(
            out / IMAGE_REWARD, vocabulary, tiny=tiny, seed=seed + 50
        ),
        "pickapic": lambda: data.write_pickapic(
            out / PICKAPIC, {"train": pairs, "test_unique": prompts}, seed=seed
        ),
        "pickapic_validation": lambda: str(
            data.write_pickapic_captions(
                out / PICKAPIC_VALIDATION, PICKAPIC_VALIDATION_SPLIT, prompts, seed
            )
        ),
        "prompts": lambda: {
            k: str(v)
            for k, v in data.write_prompt_files(
                out / PROMPTS, out / HPSV2_BENCHMARK, prompts, seed
            ).items()
        },
        "editing": lambda: str(data.write_editing_set(out / EDITING, max(4, prompts // 4), seed)),
        "blip_vqa": lambda: rewards.write_blip_vqa(
            out / BLIP_VQA, vocabulary, tiny=tiny, seed=seed + 70
        ),
        "compbench": lambda: {
            k: str(v) for k, v in data.write_compbench(out / COMPBENCH, prompts, seed).items()
        },
        "inception": lambda: inception.write_inception(out / INCEPTION, seed=seed + 60),
    }
    manifest_file = out / MANIFEST
    manifest = json.loads(manifest_file.read_text()) if manifest_file.exists() else {}
    for name in chosen:
        done = manifest.get(name, {})
        if skip_existing and (done.get("tiny"), done.get("seed")) == (tiny, seed):
            continue
        start = time.perf_counter()
        result = writers[name]()
        manifest[name] = {
            "tiny": tiny,
            "seed": seed,
            "holds": result,
            "seconds": round(time.perf_counter() - start, 1),
        }
        # Written after each component, so an interrupted run says what is complete.
        manifest_file.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    return manifest
