"""``dspo budget``: the disk and GPU time a config needs, per stage, before anything runs.

The config is read as the workflow reads it: ``config/config.yaml`` with each ``--configfile``
deep-merged over it in order (Snakemake's merge: mappings merge key by key, anything else is
replaced). Every figure is a product of counts from the config (this module: pairs, prompts,
runs, images) and sizes per item: the bytes each stage stores (:mod:`dspo.bench.budget_disk`)
and the FLOPs it computes (:mod:`dspo.bench.budget_compute`). GPU-hours = FLOPs / (peak dense
bf16 x utilisation).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dspo.bench.budget_compute import (
    BVQA_IMAGE_FLOPS,
    BVQA_PHRASE_FLOPS,
    BVQA_PHRASES,
    INCEPTION_FLOPS,
    cfg_factor,
    denoiser_flops,
    train_flops_per_pair,
)
from dspo.bench.budget_disk import (
    DTYPE_BYTES,
    PAIR_TABLE_BYTES,
    PICKAPIC_NO_TIES,
    PICKAPIC_PROMPTS,
    PICKAPIC_TRAIN_ROWS,
    PNG_BYTES_PER_PIXEL,
    SCORE_ROW_BYTES,
    cache_bytes,
    checkpoint_bytes,
    checkpoints_held,
    model_bytes,
    model_shapes,
    pair_row_bytes,
    pickapic_copy,
    source_bytes,
    trainable_params,
)
from dspo.bench.flops import DENSE_BF16_PEAK_TFLOPS, dense_bf16_peak
from dspo.config.experiments import method_config, released_models, step_models, trained_models
from dspo.config.names import entries

# The published prompt sets' sizes by a word of their id, path or split (no limit given):
# Pick-a-Pic test_unique and validation_unique, PartiPrompts, the HPSv2 benchmark,
# InstructPix2Pix's 1000 samples. T2I-CompBench: each of its colour, shape and texture
# validation files.
PROMPT_SET_SIZES = {"test_unique": 500, "validation_unique": 500, "parti": 1632, "hps": 3200}
PROMPT_SET_SIZES["instructpix2pix"] = 1000
PROMPT_SET_SIZES["t2i-compbench"] = 300
UNKNOWN_SET_SIZE = 1000


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
