"""Model cards for saved models, and ``dspo push``.

A card is the folder's ``README.md`` in the format diffusers' ``push_to_hub`` writes: YAML
metadata (library, base model, tags, licence, pipeline tag) and a text that says how the model
was made: base model, method and objective with its hyper-parameters, training settings and
data. The card is written when the model is saved; the win rates exist only later, once the
model's images are scored, so ``dspo push`` adds them from the run's win-rate table just before
uploading.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from dspo.evaluation.intervals import interval_sentence

CARD = "README.md"
_WIN_RATES_HEADING = "## Win rates against the base model"
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


def win_rates_section(win_rates_csv: Path, method: str) -> str:
    """The method's win rates against the base model, one line per prompt set, guidance
    and reward, from a run's ``results/tables/win_rates.csv``."""
    wins = pd.read_csv(win_rates_csv)
    rows = wins[wins["method"] == method]
    if rows.empty:
        raise ValueError(f"{win_rates_csv} has no win rates for {method!r}")
    lines = [
        _WIN_RATES_HEADING,
        "",
        "Win rate (%) with its 95 % interval in brackets (ties count half). "
        + interval_sentence(rows.get("n_replicates", 1)),
        "",
        "| prompt set | guidance | reward | win rate |",
        "|---|---|---|---|",
    ]
    for r in rows.itertuples():
        interval = f"[{100 * r.ci_low:.1f}, {100 * r.ci_high:.1f}]"
        lines.append(
            f"| {r.prompt_set} | {r.guidance:g} | {r.reward} | {100 * r.win_rate:.1f} {interval} |"
        )
    return "\n".join(lines) + "\n"


def with_win_rates(card: str, section: str) -> str:
    """``card`` with its win-rate section replaced by (or extended with) ``section``."""
    head = card.split(_WIN_RATES_HEADING)[0].rstrip("\n")
    return f"{head}\n\n{section}"


def push(
    folder: Path,
    repo_id: str,
    *,
    win_rates_csv: Path | None = None,
    method: str | None = None,
    private: bool = True,
    api: Any = None,
    on_progress: Callable[[str], None] = print,
) -> str:
    """Upload a saved model folder with its card to ``repo_id``; returns the commit's URL.

    ``api`` is an ``huggingface_hub.HfApi`` (made here when None); the card gets the win
    rates first when ``win_rates_csv`` is given.
    """
    folder = Path(folder)
    card = folder / CARD
    if not card.is_file():
        raise FileNotFoundError(f"{card} is missing: only models saved by `dspo train` are pushed")
    if win_rates_csv is not None:
        section = win_rates_section(win_rates_csv, method or folder.name)
        card.write_text(with_win_rates(card.read_text(), section))
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    on_progress(f"creating {repo_id} (private={private})")
    api.create_repo(repo_id, private=private, exist_ok=True)
    on_progress(f"uploading {folder}")
    info = api.upload_folder(
        repo_id=repo_id, folder_path=str(folder), commit_message=f"Upload {folder.name} from dspo"
    )
    return str(getattr(info, "commit_url", info))
