"""``dspo push``: a saved model folder uploaded with its card, the card first given the
model's win rates from a run's ``results/tables/win_rates.csv`` (they exist only once the
model's images are scored, after the card was written by :mod:`dspo.training.model_card`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from dspo.evaluation.intervals import interval_sentence
from dspo.training.model_card import CARD, WIN_RATES_HEADING


def win_rates_section(win_rates_csv: Path, method: str) -> str:
    """The method's win rates against the base model, one line per prompt set, guidance
    and reward, from a run's ``results/tables/win_rates.csv``."""
    wins = pd.read_csv(win_rates_csv)
    rows = wins[wins["method"] == method]
    if rows.empty:
        raise ValueError(f"{win_rates_csv} has no win rates for {method!r}")
    lines = [
        WIN_RATES_HEADING,
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
    head = card.split(WIN_RATES_HEADING)[0].rstrip("\n")
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
