"""``dspo budget``: the disk and GPU time a config needs, per stage, before anything runs.

The config is read as the workflow reads it: ``config/config.yaml`` with each ``--configfile``
deep-merged over it in order (Snakemake's merge: mappings merge key by key, anything else is
replaced). Every figure is a product of counts from the config and sizes per item:

- disk: the pair source (a local path is measured; otherwise rows x bytes per row of the
  public copy), the pair tables (per pair its caption, ids and references to its images in
  the source, :mod:`dspo.data.image_refs`; both JPEGs only for a streamed source, whose
  images live nowhere else), the latent caches (channels x (resolution/8)^2 x dtype bytes per
  image, plus every prompt tensor's elements x dtype per unique prompt), the training
  checkpoints (the trainable weights with an fp32 master and the optimiser's moments: AdamW two
  fp32 moments, Adafactor about none), the trained models (the whole pipeline in the base
  dtype, or the LoRA adapters), the images (PNG bytes per pixel, a stated figure) and the
  score rows.
- compute: FLOPs per image counted by `dspo.bench.budget_count` (the project's flop counter on the
  meta device; table ``dspo/resources/budget_flops.json``), scaled by pixels from the family's
  native resolution: the cache's VAE encodes, training (per pair: forward + backward of the
  policy on each image it trains on, a no-grad reference forward on each image when the
  objective needs one, one forward more under gradient checkpointing), and sampling (steps x
  2 with classifier-free guidance), the Inception-v3 of the image-quality step (a counted
  figure per image, prompt sets only) and BLIP VQA's B-VQA scoring (counted figures per image
  and per noun phrase). GPU-hours = FLOPs / (peak dense bf16 x utilisation).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dspo.bench.flops import DENSE_BF16_PEAK_TFLOPS, dense_bf16_peak
from dspo.config.experiments import method_config, released_models, step_models, trained_models
from dspo.config.names import entries
from dspo.objectives import get_objective

FLOPS_TABLE = Path(__file__).parents[1] / "resources" / "budget_flops.json"
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
# PNG of a generated image, bytes per pixel: a stated figure (SD outputs at 512 px are
# ~0.35-0.5 MB as 8-bit RGB PNG, about 1.5 bytes a pixel).
PNG_BYTES_PER_PIXEL = 1.5
SCORE_ROW_BYTES = 300  # one reward's score row in the tables (docs/cluster.md)
# The FID Inception-v3 (evaluation.quality) per image, whatever its size (it resizes to
# 299 px): counted with torch's FlopCounterMode on torch-fidelity's extractor.
INCEPTION_FLOPS = 11.43e9
# B-VQA with BLIP VQA (blip-vqa-base's architecture, 0.36 B parameters) per image: the vision
# encoder once at 384 px, and per noun phrase the question's encoder (6 tokens) and one decoder
# step; counted with torch's FlopCounterMode on the full-size stand-in (dspo.standins).
# T2I-CompBench's attribute-binding prompts ("a red car and a blue bench") have two phrases.
BVQA_IMAGE_FLOPS = 110.97e9
BVQA_PHRASE_FLOPS = 18.07e9
BVQA_PHRASES = 2
CAPTION_BYTES = 150
# A pair table's row beside its caption (measured, 2,000 pairs): four int64 ids, and the
# images' references (tar member names in a webdataset); a table's footer adds about 3 kB.
PAIR_REF_BYTES = {"parquet": 36, "webdataset": 49}
PAIR_TABLE_BYTES = 3000
# Per-pair metadata of a latent file: text_w, text_l, pair_id (int64) and original size and
# crop of both images (int64 pairs), as `dspo.data.cache` writes them.
CACHE_PAIR_META_BYTES = 3 * 8 + 4 * 2 * 8
# Public Pick-a-Pic v2 copies: (bytes, rows). The webdataset copy holds train, validation and
# test; the train split had 959,040 rows, 851,293 without ties, 58,960 unique prompts
# (Diffusion-DPO paper, sec. 5).
PICKAPIC = {
    "webdataset": (560e9, 1_001_352),
    "parquet": (335e9, 1_000_872),
}
# Hub copies by id; another hub id is taken as a parquet copy. A hub source downloads only
# its split's files and reads them as they are (no second copy).
PICKAPIC_HUB = {
    "sayakpaul/pickapic_v2_webdataset": PICKAPIC["webdataset"],
    "yuvalkirstain/pickapic_v2": PICKAPIC["parquet"],
}
PICKAPIC_TRAIN_ROWS, PICKAPIC_NO_TIES, PICKAPIC_PROMPTS = 959_040, 851_293, 58_960
# The published prompt sets' sizes by a word of their id, path or split (no limit given):
# Pick-a-Pic test_unique and validation_unique, PartiPrompts, the HPSv2 benchmark,
# InstructPix2Pix's 1000 samples. T2I-CompBench: each of its colour, shape and texture
# validation files.
PROMPT_SET_SIZES = {"test_unique": 500, "validation_unique": 500, "parti": 1632, "hps": 3200}
PROMPT_SET_SIZES["instructpix2pix"] = 1000
PROMPT_SET_SIZES["t2i-compbench"] = 300
UNKNOWN_SET_SIZE = 1000
# Known base models: family, latent channels, the shape of each prompt tensor of one prompt
# by its name in the family's ``text_keys``, and the whole pipeline's parameters
# (docs/cluster.md; the denoiser's are counted).
KNOWN_MODELS: dict[str, dict[str, Any]] = {
    "stable-diffusion-v1-5": dict(
        family="sd", latent=4, text={"embeddings": (77, 768)}, params=1.066e9
    ),
    "stable-diffusion-xl-base-1.0": dict(
        family="sdxl", latent=4, text={"embeddings": (77, 2048), "pooled": (1280,)}, params=3.5e9
    ),
    "stable-diffusion-3.5-medium": dict(
        family="sd3", latent=16, text={"embeddings": (333, 4096), "pooled": (2048,)}, params=8.1e9
    ),
    "FLUX.1-dev": dict(
        family="flux", latent=16, text={"embeddings": (512, 4096), "pooled": (768,)}, params=16.9e9
    ),
}
# LoRA adapters on SD1.5's attention projections at rank 4: 0.8 M parameters; scaled by rank
# and by the denoiser's size for other models and ranks (an approximation, stated).
LORA_PARAMS_RANK4_SD15 = 0.8e6
SD15_DENOISER = 859_520_964


def _architecture_shapes(arch: Mapping[str, Any]) -> dict[str, Any]:
    """Shapes of a model built from an architecture mapping (the toy base model)."""
    return dict(
        family=None,
        latent=arch["vae"]["latent_channels"],
        factor=2 ** (len(arch["vae"]["block_out_channels"]) - 1),
        text={"embeddings": (arch["max_length"], arch["text_encoder"]["hidden_size"])},
        params=None,
    )


def model_shapes(base: Mapping[str, Any], root: Path = Path(".")) -> dict[str, Any]:
    """Family, latent channels and factor, and prompt tensor shapes by name of the base model:
    a known hub model by its name (its FLOPs are counted), else the configs of a local
    diffusers folder or the toy architecture (no FLOPs counted: ``family`` None)."""
    path = str(base["path"])
    name = path.rstrip("/").split("/")[-1]
    if name in KNOWN_MODELS:
        return {**KNOWN_MODELS[name], "factor": 8}
    folder = root / path
    if (folder / "model_index.json").exists():
        vae = json.loads((folder / "vae" / "config.json").read_text())
        text = json.loads((folder / "text_encoder" / "config.json").read_text())
        tok = json.loads((folder / "tokenizer" / "tokenizer_config.json").read_text())
        arch = {"vae": vae, "max_length": tok["model_max_length"], "text_encoder": text}
        return _architecture_shapes(arch)
    if base.get("build") == "toy":
        return _architecture_shapes(base["architecture"])
    raise ValueError(
        f"base_model.path {path!r}: neither a local diffusers folder, the toy build nor one of "
        f"{list(KNOWN_MODELS)}"
    )


def latent_bytes(shapes: Mapping[str, Any], resolution: int, dtype: str) -> int:
    """One image's latent: channels x (resolution / factor)^2 x dtype bytes."""
    return shapes["latent"] * (resolution // shapes["factor"]) ** 2 * DTYPE_BYTES[dtype]


def prompt_bytes(shapes: Mapping[str, Any], dtype: str) -> int:
    """One prompt's prompt tensors (e.g. its embedding, tokens x width, and pooled embedding),
    in ``dtype``."""
    return sum(math.prod(shape) for shape in shapes["text"].values()) * DTYPE_BYTES[dtype]


def cache_bytes(
    shapes: Mapping[str, Any], cache: Mapping[str, Any], pairs: int, prompts: int
) -> float:
    """A latent cache of ``pairs`` pairs and ``prompts`` unique prompts (+ the empty one)."""
    per_image = latent_bytes(shapes, cache["resolution"], cache["dtype"])
    copies = 2 if cache.get("per_visit") else 1  # the posterior's deviation
    copies *= 2 if cache.get("per_visit") and cache.get("flip") else 1  # both orientations
    latents = pairs * (2 * copies * per_image + CACHE_PAIR_META_BYTES)
    return latents + (prompts + 1) * prompt_bytes(shapes, cache["dtype"])


def pickapic_copy(source: Mapping[str, Any]) -> tuple[float, int] | None:
    """(bytes, rows) of the public Pick-a-Pic v2 copy a pair source names; None for others."""
    if source["kind"] == "hub":
        return PICKAPIC_HUB.get(str(source.get("id")), PICKAPIC["parquet"])
    return PICKAPIC.get(source["kind"])


def pair_row_bytes(source: Mapping[str, Any]) -> float:
    """One pair's row in a pair table: caption, ids and references to its images in the
    source; for a streamed source (images nowhere else) both JPEGs instead of references."""
    if source["kind"] == "hub" and source.get("streaming"):
        size, rows = pickapic_copy(source) or (0, 1)
        return CAPTION_BYTES + PAIR_REF_BYTES["parquet"] + size / rows
    tar = source["kind"] == "webdataset" or pickapic_copy(source) == PICKAPIC["webdataset"]
    return CAPTION_BYTES + PAIR_REF_BYTES["webdataset" if tar else "parquet"]


def pair_counts(config: Mapping[str, Any]) -> dict[str, int]:
    """Source rows, kept pairs and unique prompts of the pair table."""
    source = config["pairs"]["source"]
    if source["kind"] == "generated":
        return generated_counts(config)
    rows = (pickapic_copy(source) or (0, config["world"]["n_pairs"]))[1]
    if source["kind"] == "toy":
        kept, prompts = rows, min(rows, 90)
    else:
        kept = PICKAPIC_NO_TIES if config["pairs"].get("drop_ties") else PICKAPIC_TRAIN_ROWS
        prompts = PICKAPIC_PROMPTS
    if config["pairs"].get("max_pairs"):
        kept = min(kept, config["pairs"]["max_pairs"])
        prompts = min(prompts, kept)
    return {"source_rows": rows, "pairs": kept, "prompts": prompts}


def generated_counts(config: Mapping[str, Any]) -> dict[str, int]:
    """A generated source's images (its source rows), pairs and prompts per round: the
    ``margin`` rule pairs every two of a prompt's K images (ties not yet dropped)."""
    from dspo.data.generated_config import generated_settings

    spec = generated_settings(config["pairs"]["source"], config["evaluation"])
    prompts_source = spec["prompts"]
    if prompts_source["kind"] == "toy" and prompts_source.get("split") is None:
        prompts = min(int(prompts_source.get("limit") or 90), 90)  # the toy's training captions
    else:
        prompts = _prompt_set_size({"source": prompts_source}, config)
    k = int(spec["images_per_prompt"])
    pairs = prompts * (k * (k - 1) // 2 if spec["rule"] == "margin" else 1)
    return {"source_rows": prompts * k, "pairs": pairs, "prompts": prompts}


def source_bytes(source: Mapping[str, Any], root: Path) -> tuple[float, str]:
    """The pair source's size: measured when it is a local path, else the public copy's."""
    path = source.get("path")
    if path and (root / path).exists():
        files = [(root / path)] if (root / path).is_file() else (root / path).rglob("*")
        return float(sum(f.stat().st_size for f in files if f.is_file())), "measured"
    copy = pickapic_copy(source)
    if copy is not None:
        if source["kind"] == "hub" and source.get("streaming"):
            return 0.0, "streamed, not stored"
        return copy[0], f"{path} not found: public copy" if path else "public copy"
    return 0.0, "generated"


def denoiser_flops(family: str | None, resolution: int) -> dict[str, float]:
    """Counted FLOPs per image of the family's denoiser and VAE, scaled to ``resolution``."""
    table = json.loads(FLOPS_TABLE.read_text())
    if family not in table:
        return {}
    counts = dict(table[family])
    scale = (resolution / counts.pop("resolution")) ** 2
    params = counts.pop("denoiser_params")
    return {**{k: v * scale for k, v in counts.items()}, "denoiser_params": params}


def train_flops_per_pair(flops: Mapping[str, float], objective: str, lora: bool, ckpt: bool):
    """One training pair: the policy's forward + backward (and one more forward under gradient
    checkpointing) on each image it trains on, and the reference's forward on each image."""
    obj = get_objective(objective)
    images = 1 if obj.preferred_only else 2
    policy = flops["forward_backward_frozen" if lora else "forward_backward"]
    policy += flops["forward"] if ckpt else 0
    reference = flops["forward"] if obj.needs_reference else 0
    return images * (policy + reference)


def trainable_params(denoiser: float, lora: Mapping[str, Any] | None) -> float:
    """The weights a run trains: the whole denoiser, or its LoRA adapters (approximated)."""
    if not lora:
        return denoiser
    return LORA_PARAMS_RANK4_SD15 * lora["rank"] / 4 * denoiser / SD15_DENOISER


def checkpoint_bytes(params: float, optimizer: str) -> float:
    """One training checkpoint: the weights as an fp32 master plus the optimiser's state
    (AdamW: two fp32 moments; Adafactor: factored moments, counted as none)."""
    return params * (4 + (8 if optimizer == "adamw" else 0))


def model_bytes(
    pipeline: float, trained: float, lora: Mapping[str, Any] | None, base: Mapping[str, Any]
) -> float:
    """A trained model as `dspo.training.policy.save_model` writes it: the whole pipeline in the
    base model's dtype (full fine-tuning), or the LoRA adapters in float32."""
    return trained * 4 if lora else pipeline * DTYPE_BYTES[base["dtype"]]


def checkpoints_held(run: Mapping[str, Any]) -> int:
    """Checkpoints on disk at once during a run: one every ``checkpoint_every`` steps before
    the last (the last step is the model), at most ``checkpoints_kept`` of them."""
    every = run.get("checkpoint_every") or 0
    saved = (run["steps"] - 1) // every if every else 0
    kept = run.get("checkpoints_kept")
    return min(saved, kept) if kept else saved


def cfg_factor(shapes: Mapping[str, Any], guidance: float) -> int:
    """Denoiser batches per sampling step: classifier-free guidance above 1 runs the
    conditional and unconditional halves; FLUX.1-dev's guidance is an embedding (one)."""
    return 2 if guidance > 1 and shapes["family"] != "flux" else 1


def _prompt_set_size(spec: Mapping[str, Any], config: Mapping[str, Any]) -> int:
    source = spec["source"]
    if source.get("limit"):
        return int(source["limit"])
    if source["kind"] == "toy" and source.get("split") == "attribute_binding":
        return int(config["world"].get("binding_prompts", 24))
    if source["kind"] == "toy":
        return int(config["world"]["prompts_per_set"])
    name = " ".join(str(source.get(k) or "") for k in ("kind", "id", "path", "split")).lower()
    for key, size in PROMPT_SET_SIZES.items():
        if key in name:
            return size
    return UNKNOWN_SET_SIZE


def _stage(name: str, items: str, disk: float, flops: float = 0.0) -> dict[str, Any]:
    return {"stage": name, "items": items, "disk_bytes": disk, "flops": flops}


def _image_stage(
    name: str,
    sampled: int,
    prompts: int,
    images: int,
    ev: Mapping[str, Any],
    cfg: float,
    flops: Mapping[str, float],
) -> dict[str, Any]:
    """A stage of sampled images: PNG bytes, and the denoiser's forward FLOPs at every step."""
    return _stage(
        name,
        f"{sampled} models x {prompts:,} prompts x {len(ev['seeds'])} seeds x "
        f"{len(ev['guidance'])} guidance = {images:,}",
        images * ev["resolution"] ** 2 * PNG_BYTES_PER_PIXEL,
        images * ev["steps"] * cfg * flops.get("forward", 0),
    )


def stages(config: Mapping[str, Any], root: Path = Path(".")) -> list[dict[str, Any]]:
    """Every stage's items, disk bytes and FLOPs for ``config``."""
    shapes = model_shapes(config["base_model"], root)
    if shapes["params"] is None:  # a local folder: its weights as stored; the toy's unknown
        folder = root / config["base_model"]["path"]
        shapes["params"] = sum(f.stat().st_size for f in folder.rglob("*.safetensors")) / 4
    counts = pair_counts(config)
    cache = config["cache"]
    flops = denoiser_flops(shapes["family"], cache["resolution"])
    denoiser = flops.get("denoiser_params", shapes["params"])
    src, how = source_bytes(config["pairs"]["source"], root)
    per_pair = pair_row_bytes(config["pairs"]["source"])
    models = trained_models(config)
    runs = [method_config(config, m) for m in models.values()]
    # The models of training.evaluate_steps: each run's kept steps, on disk and sampled.
    kept = step_models(config, models)
    copies = [1 + sum(1 for model, _ in kept.values() if model == name) for name in models]
    datasets = {run["data"] for run in runs}
    ddspo = config["ddspo"]
    cache_sets = {
        "pairs": (counts["pairs"], counts["prompts"]),
        "pairs_nodup": (counts["prompts"], counts["prompts"]),
        "pairs_ddspo": (ddspo["prompts"], 2 * ddspo["prompts"]),
    }
    # Later rounds' pairs, sampled from the round before: as many as the first round's.
    for run in runs:
        cache_sets.setdefault(run["data"], (counts["pairs"], counts["prompts"]))
    out = [_stage("source", f"{counts['source_rows']:,} rows ({how})", src)]
    base_bytes = shapes["params"] * DTYPE_BYTES[config["base_model"]["dtype"]]
    out.append(_stage("base model", f"{shapes['params'] / 1e9:.2f} B parameters", base_bytes))
    tables = PAIR_TABLE_BYTES + counts["pairs"] * per_pair
    if "pairs_nodup" in datasets:
        tables += PAIR_TABLE_BYTES + counts["prompts"] * per_pair
    # The parts hold about as much again while they are gathered (temporary).
    out.append(_stage("pair tables", f"{counts['pairs']:,} pairs (+ parts while gathered)", tables))
    ddspo_png = 2 * ddspo["prompts"] * cache["resolution"] ** 2 * PNG_BYTES_PER_PIXEL
    ddspo_flops = 2 * ddspo["prompts"] * ddspo["steps"] * cfg_factor(shapes, ddspo["guidance"])
    if config["pairs"]["source"]["kind"] == "generated":
        # The source's images of each sampled model (the base, then each round but the last).
        sampled = 1 + sum(1 for m in models.values() if m.previous)
        ev = config["evaluation"]
        guidance = config["pairs"]["source"].get("guidance") or ev["guidance"][0]
        per_image = ev["steps"] * cfg_factor(shapes, guidance) * flops.get("forward", 0)
        images = sampled * counts["source_rows"]
        out.append(
            _stage(
                "AI-feedback images (generated pair source)",
                f"{sampled} models x {counts['source_rows']:,} images (one model per round)",
                images * ev["resolution"] ** 2 * PNG_BYTES_PER_PIXEL,
                images * per_image,
            )
        )
    out.append(
        _stage(
            "ddspo pairs (generated)",
            f"{ddspo['prompts']:,} prompts x 2 images",
            ddspo_png if "pairs_ddspo" in datasets else 0,
            ddspo_flops * flops.get("forward", 0) if "pairs_ddspo" in datasets else 0,
        )
    )
    for data in sorted(datasets):
        pairs, prompts = cache_sets[data]
        out.append(
            _stage(
                f"cache of {data}",
                f"{pairs:,} pairs, {prompts:,} prompts",
                cache_bytes(shapes, cache, pairs, prompts),
                2 * pairs * flops.get("vae_encode", 0),
            )
        )
    ckpt = model_disk = train = 0.0
    for run, n in zip(runs, copies, strict=True):
        params = trainable_params(denoiser, run["lora"])
        ckpt += checkpoints_held(run) * checkpoint_bytes(params, run["optimizer"])
        model_disk += n * model_bytes(shapes["params"], params, run["lora"], config["base_model"])
        if flops:
            pair = train_flops_per_pair(
                flops, run["objective"], bool(run["lora"]), run["gradient_checkpointing"]
            )
            train += run["steps"] * run["pairs_per_step"] * pair
    out.append(_stage("training checkpoints", f"{len(runs)} runs", ckpt, train))
    steps = f" and {len(kept)} kept steps" if kept else ""
    out.append(_stage("trained models", f"{len(runs)} models{steps}", model_disk))
    ev = config["evaluation"]
    sets = entries(ev["prompt_sets"])
    prompts = sum(_prompt_set_size(s, config) for s in sets.values())
    if ev.get("editing"):
        prompts += _prompt_set_size(ev["editing"], config)
    # The base model, every trained model, its kept steps and the released models a method
    # entry names.
    sampled = len(runs) + len(kept) + 1 + len(released_models(config))
    images = sampled * prompts * len(ev["seeds"]) * len(ev["guidance"])
    cfg = sum(cfg_factor(shapes, g) for g in ev["guidance"]) / len(ev["guidance"])
    out.append(_image_stage("evaluation images", sampled, prompts, images, ev, cfg, flops))
    rewards = len(entries(ev["rewards"]))
    out.append(
        _stage(
            "scores", f"{images:,} images x {rewards} rewards", images * rewards * SCORE_ROW_BYTES
        )
    )
    binding = entries((ev.get("attribute_binding") or {}).get("prompt_sets"))
    if binding:
        prompts = sum(_prompt_set_size(s, config) for s in binding.values())
        images = sampled * prompts * len(ev["seeds"]) * len(ev["guidance"])
        out.append(
            _image_stage("attribute-binding images", sampled, prompts, images, ev, cfg, flops)
        )
        blip = ev["attribute_binding"]["scorer"]["kind"] == "bvqa" and flops
        per_image = BVQA_IMAGE_FLOPS + BVQA_PHRASES * BVQA_PHRASE_FLOPS if blip else 0
        out.append(
            _stage(
                "B-VQA scores", f"{images:,} images", images * SCORE_ROW_BYTES, images * per_image
            )
        )
    quality = ev.get("quality") or {}
    if quality.get("classifier") == "inception":
        # The test prompt sets only: not the validation set of the step choice.
        validation = (ev.get("step_selection") or {}).get("prompt_set")
        generated = sum(_prompt_set_size(s, config) for n, s in sets.items() if n != validation)
        generated *= sampled * len(ev["seeds"]) * len(ev["guidance"])
        out.append(
            _stage(
                "image quality (Inception-v3)",
                f"{generated:,} images",
                0,
                generated * INCEPTION_FLOPS if flops else 0,
            )
        )
    return out


def budget(
    config: Mapping[str, Any], gpu: str, utilisation: float, root: Path = Path(".")
) -> dict[str, Any]:
    """The stages with GPU-hours on ``gpu`` (a name in `dspo.bench.flops`' peak table) at
    ``utilisation`` of its dense bf16 peak, and the totals."""
    peak = dense_bf16_peak(gpu.upper())
    if peak is None:
        names = [name for name, _ in DENSE_BF16_PEAK_TFLOPS]
        raise ValueError(f"--gpu {gpu!r}: no peak known; one of {names}")
    rows = stages(config, root)
    for row in rows:
        row["gpu_hours"] = row["flops"] / (peak * 1e12 * utilisation) / 3600
    total = {k: sum(r[k] for r in rows) for k in ("disk_bytes", "flops", "gpu_hours")}
    return {
        "config": config.get("name"),
        "gpu": gpu,
        "peak_tflops": peak,
        "utilisation": utilisation,
        "stages": rows,
        "total": total,
        "flops_counted": total["flops"] > 0,
    }


def format_size(n: float) -> str:
    """A byte count in decimal units (B, KB, MB, GB, TB), as the tables print it."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1000
    return ""


def format_budget(result: Mapping[str, Any]) -> str:
    """The Markdown table ``dspo budget`` prints."""
    lines = [
        f"Budget of config `{result['config']}` on {result['gpu']} "
        f"({result['peak_tflops']:g} TFLOP/s dense bf16) at utilisation {result['utilisation']:g}",
        "",
        "| stage | items | disk | compute (PFLOP) | GPU-hours |",
        "|---|---|---:|---:|---:|",
    ]
    for r in [*result["stages"], {"stage": "**total**", "items": "", **result["total"]}]:
        lines.append(
            f"| {r['stage']} | {r['items']} | {format_size(r['disk_bytes'])} | "
            f"{r['flops'] / 1e15:,.1f} | {r['gpu_hours']:,.1f} |"
        )
    if not result["flops_counted"]:
        lines += ["", "Compute not counted: FLOPs are counted for the known hub models only."]
    lines += [
        "",
        "FLOPs: counted per image by `python -m dspo.bench.budget_count` (dspo/resources/"
        "budget_flops.json), scaled by pixels; images as PNG at "
        f"{PNG_BYTES_PER_PIXEL} bytes a pixel; the largest stages are held at once only if "
        "nothing is deleted between them.",
    ]
    return "\n".join(lines)
