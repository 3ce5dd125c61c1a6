"""Download every hub artefact a workflow config names, once, pinned, with a manifest.

`dspo fetch` runs where the network is (a login node: the rules ``fetch_item`` and ``fetch``
are localrules); every other job then runs with ``HF_HUB_OFFLINE=1`` and reads the local hub
cache, through the same ``from_pretrained`` / ``hf_hub_download`` calls that would download.

What the config names (:func:`hub_artefacts`), each an :class:`Artefact` named by its item:

- ``base_model``: the base pipeline when ``base_model.path`` is a hub id (``build: null``);
  the files of the components its ``model_index.json`` lists, without the safety checker;
- ``pairs``, ``prompt_set.<name>``, ``editing``: a ``kind: hub`` source's data files of the
  named split only (:func:`hub_source_files`): parquet files or webdataset tars;
- ``prompt_set.<name>`` of ``kind: hpsv2`` with an ``id``: the four benchmark JSON files;
- ``released.<name>``: a released model a method entry names (``methods.<name>.model``, a hub
  id): the files :mod:`dspo.hub.released` imports (:func:`released_files`);
- ``ddspo.degrader``: the LLM that degrades DDSPO's prompts (``ddspo.degrader.model`` of
  kind ``llm``, when a trained method uses ``pairs_ddspo``): a transformers model folder;
- ``reward.<name>.<key>``: reward models and their processors or tokenizers (config and
  tokenizer files, and the weights in one format: safetensors when the repo has them), and
  reward files (``checkpoint``, ``med_config``) of a hub ``repo``; defaults as the loaders'.
- ``prompt_set.<name>`` and ``binding.model``: the attribute-binding prompt sets (as above)
  and the B-VQA scorer's BLIP VQA model (``evaluation.attribute_binding``).
- ``quality.inception``: with ``evaluation.quality.classifier: inception`` and no local
  ``weights``, the FID Inception-v3 weights: a file at a pinned URL (``what: url``) with its
  SHA-256, saved into PyTorch's hub checkpoint folder (:func:`fetch_url`).

Revisions: a data source's ``revision`` when set; otherwise the default branch, resolved
once by this download (the local hub cache then points the branch at that commit, which the
offline jobs read). The manifest records the commit either way. A repo that moves while its
files download is an error (rerun to get one commit).

Manifest (one record per artefact, gathered into ``results/fetch/manifest.json``)::

    {"item", "repo", "repo_type", "requested_revision", "revision" (the commit),
     "files": [{"file", "size", "sha256"}, ...]}

The SHA-256 is computed from the downloaded file; where the hub cache names the file's blob
by its LFS SHA-256, the two must agree. A URL item's record has ``repo_type: url``, the URL as
``repo`` and the pinned SHA-256 as ``revision``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dspo.config.experiments import method_config, released_models, trained_models
from dspo.config.names import entries, is_hub_id
from dspo.data.split_files import DATA_SUFFIXES, repo_split_files
from dspo.evaluation.inception import INCEPTION_FILE, INCEPTION_SHA256, INCEPTION_URL
from dspo.hub.released import DENOISERS, LORA_WEIGHTS, MODEL_INDEX
from dspo.rewards.hub_defaults import (
    AESTHETIC_CLIP,
    BVQA_MODEL,
    CLIP_SCORE_MODEL,
    HPSV2_CHECKPOINTS,
    HPSV2_REPO,
    IMAGE_REWARD_CHECKPOINT,
    IMAGE_REWARD_MED_CONFIG,
    IMAGE_REWARD_REPO,
    IMAGE_REWARD_TOKENIZER,
    PICKSCORE_MODEL,
    PICKSCORE_PROCESSOR,
)

# Weights transformers and diffusers load (one file, or shards with an index), and the small
# files beside them (configs, tokenizer and processor files, sentencepiece models).
_WEIGHTS = re.compile(
    r"^(diffusion_pytorch_model|model|pytorch_model)(-\d{5}-of-\d{5})?\.(safetensors|bin)$"
)
_INDEX = re.compile(
    r"^(diffusion_pytorch_model|model|pytorch_model)\.(safetensors|bin)\.index\.json$"
)
_SMALL_SUFFIXES = (".json", ".txt", ".model")
# Pipeline components never loaded (dspo.families.sd_pipeline passes safety_checker=None).
_SKIPPED_COMPONENTS = ("safety_checker",)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Artefact:
    """One hub repository and how to choose its files (``what``).

    ``what``: ``pipeline`` (a diffusers pipeline), ``released`` (a released model, in any
    layout :mod:`dspo.hub.released` reads), ``model`` (a transformers model folder:
    small files and weights), ``processor`` (small files only), ``files`` (exactly
    ``files``), ``split`` (the data files of ``split``) or ``url`` (``repo`` is a URL, saved
    as ``files[0]`` and checked against ``sha256``).
    """

    item: str
    repo: str
    what: str
    repo_type: str = "model"
    revision: str | None = None
    files: tuple[str, ...] = field(default_factory=tuple)
    split: str | None = None
    sha256: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The fields as JSON; ``sha256`` only when set (hub items' specs stay as they were,
        so their fetch jobs are not rerun)."""
        value = {**asdict(self), "files": list(self.files)}
        return value if self.sha256 else {k: v for k, v in value.items() if k != "sha256"}

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> Artefact:
        return cls(**{**value, "files": tuple(value.get("files") or ())})


def _data_source(item: str, source: Mapping[str, Any], default_split: str) -> list[Artefact]:
    kind = source["kind"]
    revision = source.get("revision")
    if kind == "hub":
        split = source.get("split") or default_split
        return [Artefact(item, source["id"], "split", "dataset", revision, split=split)]
    if kind == "hpsv2" and source.get("id") and not source.get("path"):
        from dspo.data.hpsv2_prompts import benchmark_files

        files = tuple(benchmark_files())
        return [Artefact(item, source["id"], "files", "dataset", revision, files=files)]
    return []


def _reward_parts(spec: Mapping[str, Any]) -> list[tuple[str, str, Any]]:
    """(config key, what, value or default) of the hub parts a reward kind loads."""
    kind = spec["kind"]
    if kind in ("pickscore", "clip_score"):
        pickscore = kind == "pickscore"
        model = spec.get("model", PICKSCORE_MODEL if pickscore else None) or CLIP_SCORE_MODEL
        processor = spec.get("processor", PICKSCORE_PROCESSOR if pickscore else None)
        parts = [("model", "model", model)]
        return parts + ([("processor", "processor", processor)] if processor else [])
    if kind == "laion_aesthetics":
        files = [("checkpoint", "files", spec.get("checkpoint"))]
        return [("clip_model", "model", spec.get("clip_model", AESTHETIC_CLIP)), *files]
    if kind == "hpsv2":
        checkpoint = spec.get("checkpoint", HPSV2_CHECKPOINTS.get(spec["version"]))
        return [("checkpoint", "files", checkpoint)]
    if kind == "bvqa":
        return [("model", "model", spec.get("model", BVQA_MODEL))]
    if kind == "image_reward":
        return [
            ("checkpoint", "files", spec.get("checkpoint", IMAGE_REWARD_CHECKPOINT)),
            ("med_config", "files", spec.get("med_config", IMAGE_REWARD_MED_CONFIG)),
            ("tokenizer", "processor", spec.get("tokenizer", IMAGE_REWARD_TOKENIZER)),
        ]
    return []


def _reward_repo(spec: Mapping[str, Any]) -> str | None:
    """The hub repo of a reward's files: ``repo``, or the kind's default when unset."""
    if "repo" in spec:
        return spec["repo"]
    return {"hpsv2": HPSV2_REPO, "image_reward": IMAGE_REWARD_REPO}.get(spec["kind"])


def _reward(prefix: str, spec: Mapping[str, Any], root: Path) -> list[Artefact]:
    found = []
    repo = _reward_repo(spec)
    for key, what, value in _reward_parts(spec):
        item = f"{prefix}.{key}"
        if what != "files" and value and is_hub_id(str(value), root, legacy=True):
            found.append(Artefact(item, str(value), what))
        elif what == "files" and value and repo and not (root / str(value)).is_file():
            found.append(Artefact(item, repo, "files", files=(str(value),)))
    return found


def _ddspo_degrader(config: Mapping[str, Any], root: Path) -> list[Artefact]:
    """The LLM degrader's model, when DDSPO's pairs are made and an LLM degrades them."""
    degrader = config["ddspo"]["degrader"]
    if degrader["kind"] != "llm" or not is_hub_id(str(degrader["model"]), root):
        return []
    runs = [method_config(config, model) for model in trained_models(config).values()]
    if not any(run["data"] == "pairs_ddspo" for run in runs):
        return []
    return [Artefact("ddspo.degrader", str(degrader["model"]), "model")]


def hub_artefacts(config: Mapping[str, Any], root: Path | str = ".") -> list[Artefact]:
    """Every hub artefact a (schema-valid) workflow config names; local paths are skipped."""
    root = Path(root)
    base = config["base_model"]
    evaluation = config["evaluation"]
    found = []
    if base.get("build") is None and is_hub_id(str(base["path"]), root):
        found.append(Artefact("base_model", str(base["path"]), "pipeline"))
    found += _data_source("pairs", config["pairs"]["source"], "train")
    if config["pairs"]["source"].get("kind") == "generated":
        # A generated source's prompts are read as a prompt set's (default split: test).
        found += _data_source("generated.prompts", config["pairs"]["source"]["prompts"], "test")
    for name, spec in entries(evaluation["prompt_sets"]).items():
        found += _data_source(f"prompt_set.{name}", spec["source"], "test")
    if evaluation.get("editing"):
        found += _data_source("editing", evaluation["editing"]["source"], "train")
    for name, spec in entries(evaluation["rewards"]).items():
        found += _reward(f"reward.{name}", spec, root)
    binding = evaluation.get("attribute_binding") or {}
    for name, spec in entries(binding.get("prompt_sets")).items():
        found += _data_source(f"prompt_set.{name}", spec["source"], "test")
    if binding:
        found += _reward("binding", binding["scorer"], root)
    for name, source in released_models(config).items():
        if is_hub_id(source, root):
            found.append(Artefact(f"released.{name}", source, "released"))
    quality = evaluation.get("quality") or {}
    if quality.get("classifier") == "inception" and not quality.get("weights"):
        found.append(
            Artefact(
                "quality.inception",
                INCEPTION_URL,
                "url",
                "url",
                files=(INCEPTION_FILE,),
                sha256=INCEPTION_SHA256,
            )
        )
    return found + _ddspo_degrader(config, root)


def hub_source_files(listing: Iterable[str], split: str) -> list[str]:
    """The data files of one split of a hub dataset, from the repo's file list: exactly what
    the readers download and read offline (:func:`dspo.data.split_files.repo_split_files`):
    ``data/train-00000-of-00645.parquet``, ``test_unique.parquet``, ``train/0000.tar``; when
    no file is named for ``train``, every data file is ``train`` (the hub's rule for files
    without split names, as ``sayakpaul/pickapic_v2_webdataset``'s ``00000.tar`` ...
    ``00644.tar``). A split with no file is an error naming the data files.
    """
    return repo_split_files(list(listing), split, DATA_SUFFIXES)


def folder_files(listing: Iterable[str], folder: str, weights: bool) -> list[str]:
    """The files a transformers/diffusers ``from_pretrained`` reads from one repo folder
    (``""`` for the top level): small files, and with ``weights`` one format's weights."""
    prefix = f"{folder}/" if folder else ""
    names = [
        f[len(prefix) :] for f in listing if f.startswith(prefix) and "/" not in f[len(prefix) :]
    ]
    small = [n for n in names if n.endswith(_SMALL_SUFFIXES) and not _INDEX.match(n)]
    chosen = small
    if weights:
        stored = [n for n in names if _WEIGHTS.match(n) or _INDEX.match(n)]
        form = "safetensors" if any(".safetensors" in n for n in stored) else "bin"
        tensors = [n for n in stored if f".{form}" in n]
        if not tensors:
            raise ValueError(f"no weights (safetensors or bin) in {prefix or 'the top level'}")
        chosen = small + tensors
    return sorted(prefix + n for n in chosen)


def pipeline_files(listing: Sequence[str], model_index: Mapping[str, Any]) -> list[str]:
    """``model_index.json`` and each listed component's files (configs, tokenizer, weights)."""
    files = ["model_index.json"]
    for name, value in model_index.items():
        if name.startswith("_") or name in _SKIPPED_COMPONENTS or not isinstance(value, list):
            continue
        if value[0] is None:
            continue
        weighted = any(
            f.startswith(f"{name}/") and _WEIGHTS.match(f.split("/")[-1]) for f in listing
        )
        files += folder_files(listing, name, weights=weighted)
    return files


def released_files(listing: Sequence[str], model_index: Mapping[str, Any] | None) -> list[str]:
    """What :func:`dspo.hub.released.import_model` reads of a released model's repo: a whole
    pipeline's files; else the denoiser folder (``unet/`` or ``transformer/``); else the LoRA
    weights file. Other files (data, images, notes) are not fetched."""
    if model_index is not None:
        return pipeline_files(listing, model_index)
    for folder in DENOISERS:
        if f"{folder}/config.json" in listing:
            return folder_files(listing, folder, weights=True)
    if LORA_WEIGHTS in listing:
        return [LORA_WEIGHTS]
    raise ValueError(
        f"no {MODEL_INDEX}, {' or '.join(f'{d}/config.json' for d in DENOISERS)} or "
        f"{LORA_WEIGHTS} in the repo"
    )


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_record(name: str, path: Path) -> dict[str, Any]:
    sha = sha256_of(path)
    blob = path.resolve().name
    if _SHA256.match(blob) and blob != sha:
        raise ValueError(f"{name}: downloaded content has SHA-256 {sha}, the hub's is {blob}")
    return {"file": name, "size": path.stat().st_size, "sha256": sha}


def fetch_url(artefact: Artefact, folder: Path | None = None) -> dict[str, Any]:
    """Download a URL item into ``folder`` (default PyTorch's hub checkpoint folder) as
    ``files[0]``; its manifest record. A file already there with the pinned SHA-256 is kept;
    a download with another SHA-256 is an error and is not kept."""
    import urllib.request

    if folder is None:
        import torch

        folder = Path(torch.hub.get_dir()) / "checkpoints"
    target = folder / artefact.files[0]
    if not (target.is_file() and sha256_of(target) == artefact.sha256):
        folder.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        with urllib.request.urlopen(artefact.repo) as response, open(partial, "wb") as out:
            for block in iter(lambda: response.read(1 << 24), b""):
                out.write(block)
        sha = sha256_of(partial)
        if artefact.sha256 and sha != artefact.sha256:
            partial.unlink()
            raise ValueError(
                f"{artefact.item} ({artefact.repo}): downloaded content has SHA-256 {sha}, "
                f"pinned {artefact.sha256}"
            )
        partial.replace(target)
    return {
        "item": artefact.item,
        "repo": artefact.repo,
        "repo_type": "url",
        "requested_revision": artefact.sha256,
        "revision": sha256_of(target),
        "files": [_file_record(artefact.files[0], target)],
    }


def fetch_artefact(artefact: Artefact) -> dict[str, Any]:
    """Download one artefact's files into the local hub cache (a URL item: :func:`fetch_url`);
    its manifest record."""
    if artefact.what == "url":
        return fetch_url(artefact)
    from huggingface_hub import HfApi, hf_hub_download

    kind = {"repo_id": artefact.repo, "repo_type": artefact.repo_type}
    info = HfApi().repo_info(**kind, revision=artefact.revision)
    listing = [s.rfilename for s in info.siblings or []]

    def download(name: str) -> Path:
        path = Path(hf_hub_download(**kind, filename=name, revision=artefact.revision))
        if f"snapshots/{info.sha}/" not in path.as_posix():
            raise RuntimeError(
                f"{artefact.repo}: the repo moved from commit {info.sha} while downloading "
                f"{name}; run the fetch again"
            )
        return path

    where = f"{artefact.item} ({artefact.repo})"
    try:
        if artefact.what == "pipeline":
            index = json.loads(download("model_index.json").read_text())
            names = pipeline_files(listing, index)
        elif artefact.what == "released":
            index = (
                json.loads(download(MODEL_INDEX).read_text()) if MODEL_INDEX in listing else None
            )
            names = released_files(listing, index)
        elif artefact.what in ("model", "processor"):
            names = folder_files(listing, "", weights=artefact.what == "model")
        elif artefact.what == "split":
            names = hub_source_files(listing, artefact.split or "train")
        else:
            names = list(artefact.files)
            missing = sorted(set(names) - set(listing))
            if missing:
                raise ValueError(f"no file {', '.join(missing)} in the repo")
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    records = [_file_record(name, download(name)) for name in names]
    return {
        "item": artefact.item,
        "repo": artefact.repo,
        "repo_type": artefact.repo_type,
        "requested_revision": artefact.revision,
        "revision": info.sha,
        "files": records,
    }


def gather_manifest(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The artefacts' records, by item, with their total size."""
    by_item = {record["item"]: dict(record) for record in records}
    size = sum(f["size"] for record in by_item.values() for f in record["files"])
    return {"artefacts": [by_item[k] for k in sorted(by_item)], "bytes": size}
