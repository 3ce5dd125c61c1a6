"""The B-VQA stand-ins: a BLIP VQA folder and T2I-CompBench's files, read as the rehearsal does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from transformers import AutoTokenizer

from dspo.config.step import workflow_config
from dspo.data.prompts import load_prompt_set
from dspo.rewards import load_reward
from dspo.standins import BLIP_VQA, COMPBENCH, write_standins

REPO = Path(__file__).resolve().parents[2]


def test_rehearsal_scores_the_compbench_stand_ins_with_the_blip_stand_in(tmp_path: Path) -> None:
    write_standins(tmp_path / "standins", ["blip_vqa", "compbench"], tiny=True, prompts=4)
    config = workflow_config([REPO / f"config/presets/{n}.yaml" for n in ("sd15", "rehearsal")])
    binding = config["evaluation"]["attribute_binding"]
    # BERT uncased's vocabulary with BLIP's [DEC] and [ENC], as Salesforce/blip-vqa-base's.
    assert len(AutoTokenizer.from_pretrained(tmp_path / "standins" / BLIP_VQA)) == 30524
    assert (tmp_path / "standins" / COMPBENCH / "texture_val/val-00000-of-00001.parquet").is_file()
    scorer = {**binding["scorer"], "model": str(tmp_path / binding["scorer"]["model"])}
    reward = load_reward(scorer)
    for name, spec in binding["prompt_sets"].items():
        source = {**spec["source"], "path": str(tmp_path / spec["source"]["path"])}
        prompts = load_prompt_set(name, {**spec, "source": source})["prompt"].tolist()
        assert len(prompts) == 2 and all(" and a " in p for p in prompts)
        images = [Image.new("RGB", (48, 64), (200, 30, 30)), Image.new("RGB", (64, 64))]
        scores = reward.score(images, prompts)
        assert np.isfinite(scores).all() and ((scores > 0) & (scores < 1)).all()
