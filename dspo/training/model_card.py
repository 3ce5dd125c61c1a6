"""Model cards for saved models (``dspo push`` adds their win rates: dspo.evaluation.publish).

A card is the folder's ``README.md`` in the format diffusers' ``push_to_hub`` writes: YAML
metadata (library, base model, tags, licence, pipeline tag) and a text that says how the model
was made: base model, method and objective with its hyper-parameters, training settings and
data. The card is written when the model is saved; the win rates exist only later, once the
model's images are scored, so ``dspo push`` adds them from the run's win-rate table just before
uploading.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CARD = "README.md"
WIN_RATES_HEADING = "## Win rates against the base model"
_TRAINING_KEYS = (
    "steps",
    "pairs_per_step",
    "lr",
    "lr_schedule",
    "warmup_steps",
    "optimizer",
    "mixed_precision",
    "prompt_dropout",
    "seed",
)


def _yaml_value(value: Any) -> str:
    return json.dumps(value)


def card_text(cfg: Mapping[str, Any], base_model: str, data: str) -> str:
    """The card of a model trained with the resolved method config ``cfg``.

    No licence is claimed: the base model's licence governs a fine-tune of it.
    """
    lora = cfg.get("lora")
    tags = ["diffusers", "text-to-image", "preference-optimization", "dspo", cfg["objective"]]
    if lora:
        tags.append("lora")
    meta = {
        "base_model": base_model,
        "library_name": "diffusers",
        "pipeline_tag": "text-to-image",
        "tags": tags,
    }
    lines = ["---", *(f"{k}: {_yaml_value(v)}" for k, v in meta.items()), "---", ""]
    kind = f"LoRA adapters (rank {lora['rank']})" if lora else "A full fine-tune"
    lines += [
        f"# {cfg['name']}",
        "",
        f"{kind} of `{base_model}` trained with the `{cfg['objective']}` "
        f"objective by `dspo` on {data}.",
        "",
        "## Training",
        "",
        "| setting | value |",
        "|---|---|",
        f"| objective | `{cfg['objective']}` |",
        *(f"| {k} | `{_yaml_value(v)}` |" for k, v in sorted(cfg.get("params", {}).items())),
        *(f"| {k} | `{_yaml_value(cfg[k])}` |" for k in _TRAINING_KEYS if k in cfg),
        "",
    ]
    if lora:
        usage = (
            "pipe = DiffusionPipeline.from_pretrained(BASE)\n"
            "pipe.load_lora_weights(THIS_FOLDER_OR_REPO)"
        )
    else:
        usage = "pipe = DiffusionPipeline.from_pretrained(THIS_FOLDER_OR_REPO)"
    lines += ["## Use", "", "```python", "from diffusers import DiffusionPipeline", usage, "```"]
    return "\n".join(lines) + "\n"


def write_model_card(folder: Path, cfg: Mapping[str, Any], base_model: str, data: str) -> Path:
    path = Path(folder) / CARD
    path.write_text(card_text(cfg, base_model, data))
    return path
