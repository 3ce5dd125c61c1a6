"""Shared pieces of the paper's reward models: files, strict loading, heads.

Every loader is strict: a checkpoint missing a weight the model needs, or holding one it does
not read, is an error naming the weights (the originals' ``strict=False`` loads would score with
random or stale weights and only print a table). Image and prompt preprocessing lives in
``dspo.rewards.transforms``, the config and batch checks in ``dspo.rewards.checks``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dspo.core.dtypes import resolve_dtype

# OpenAI CLIP's normalisation; ImageReward's BLIP transform and HPSv2 use the same constants.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def spec_dtype(spec: Mapping[str, Any]) -> torch.dtype:
    """The compute dtype, `dtype` in the config; float32 unless asked, as the originals score."""
    return resolve_dtype(spec.get("dtype", "float32"))


def resolve_file(spec: Mapping[str, Any], key: str, default: str | None, repo: str | None) -> Path:
    """A file named by config key `key`: a local path, or a file name inside the hub repo `repo`.

    Hub files come through the local hub cache, so ``HF_HUB_OFFLINE=1`` works once cached.
    """
    name = spec.get(key, default)
    if not name:
        raise ValueError(f"reward kind {spec.get('kind')!r} needs `{key}` (a local file)")
    path = Path(name).expanduser()
    if path.is_file():
        return path
    if repo is None:
        raise FileNotFoundError(
            f"reward {spec.get('kind')!r}: `{key}` {name!r} is not a file, and no `repo` is set "
            "to fetch it from the hub"
        )
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id=repo, filename=name))
    except Exception as error:  # the hub raises many types; all mean "not obtainable"
        raise FileNotFoundError(
            f"reward {spec.get('kind')!r}: `{key}` {name!r} is neither a local file nor "
            f"obtainable from hub repo {repo!r} ({type(error).__name__}: {error})"
        ) from error


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``torch.save`` checkpoint: a bare state dict or one under ``state_dict``.

    Training wrappers' ``module.`` prefixes are removed, as the original loaders expect none.
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"cannot read checkpoint {path}: {error}") from error
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("state_dict"), Mapping):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"checkpoint {path} holds {type(checkpoint).__name__}, not a state dict")
    return {
        key.removeprefix("module."): value
        for key, value in checkpoint.items()
        if isinstance(value, torch.Tensor)
    }


def _shown(keys: Sequence[str], limit: int = 8) -> str:
    return ", ".join(keys[:limit]) + (f" ... ({len(keys)} in all)" if len(keys) > limit else "")


def require(state: Mapping[str, torch.Tensor], keys: Iterable[str], source: Path) -> None:
    """Fail with the checkpoint's name when keys of the expected architecture are absent."""
    missing = sorted(k for k in keys if k not in state)
    if missing:
        raise ValueError(f"{source} lacks {len(missing)} expected weights: {_shown(missing)}")


def reject_unused(
    state: Mapping[str, torch.Tensor],
    used: Iterable[str],
    source: Path,
    ignored: Iterable[str] = (),
) -> None:
    """Fail naming the checkpoint's tensors that no part of the model reads.

    `ignored` are exact keys the original model holds but never uses when scoring (e.g.
    ImageReward's contrastive projections); anything else unread means a different layout.
    """
    unused = sorted(set(state) - set(used) - set(ignored))
    if unused:
        raise ValueError(f"{source} holds {len(unused)} unexpected weights: {_shown(unused)}")


def clip_model(name: str, dtype: torch.dtype) -> Any:
    """A transformers ``CLIPModel`` from a hub id or folder, loaded strictly.

    ``from_pretrained`` only logs missing and unexpected weights (a model without its q/k/v
    weights then scores with random ones); here they are an error naming them.
    """
    from transformers import CLIPModel

    model, info = CLIPModel.from_pretrained(name, dtype=dtype, output_loading_info=True)
    problems = [
        f"{len(keys)} {what} weights: {_shown(sorted(map(str, keys)))}"
        for what, keys in [
            ("missing", info.get("missing_keys") or []),
            ("unexpected", info.get("unexpected_keys") or []),
            ("mismatched", info.get("mismatched_keys") or []),
        ]
        if keys
    ]
    if problems:
        raise ValueError(f"CLIP model {name}: " + "; ".join(problems))
    return model


def count_blocks(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    """Number of transformer blocks stored as ``{prefix}{i}.``."""
    indices = {int(k[len(prefix) :].split(".", 1)[0]) for k in state if k.startswith(prefix)}
    if indices != set(range(len(indices))):
        raise ValueError(f"blocks under {prefix!r} are not numbered 0..n-1: {sorted(indices)}")
    return len(indices)


def linear_stack(state: Mapping[str, torch.Tensor], prefix: str, source: Path) -> nn.Sequential:
    """An ``nn.Sequential`` of Linear layers at the indices stored under ``{prefix}{i}.weight``.

    The aesthetic and ImageReward heads are Linear layers separated by Dropout (identity at
    evaluation) and no activations; the gaps between stored indices are those Dropouts, so the
    rebuilt module has the original's key layout and function.
    """
    indices = sorted(
        int(k[len(prefix) :].split(".")[0])
        for k in state
        if k.startswith(prefix) and k.endswith(".weight")
    )
    if not indices:
        raise ValueError(f"{source} has no linear layers under {prefix!r}")
    layers: list[nn.Module] = [nn.Dropout(0.0) for _ in range(indices[-1] + 1)]
    for i in indices:
        out_features, in_features = state[f"{prefix}{i}.weight"].shape
        layers[i] = nn.Linear(in_features, out_features)
    head = nn.Sequential(*layers)
    expected = [prefix + k for k in head.state_dict()]
    require(state, expected, source)
    reject_unused({k: v for k, v in state.items() if k.startswith(prefix)}, expected, source)
    head.load_state_dict({k: state[prefix + k] for k in head.state_dict()})
    if head[indices[-1]].out_features != 1:
        raise ValueError(f"{source}: the head under {prefix!r} does not end in one output")
    return head


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity in float32."""
    a = torch.nn.functional.normalize(a.float(), dim=-1)
    b = torch.nn.functional.normalize(b.float(), dim=-1)
    return (a * b).sum(-1)
