"""Data stand-ins: a Pick-a-Pic v2 parquet folder, a captions-only Pick-a-Pic split, the
prompt files and an editing set.

The pairs carry every Pick-a-Pic v2 column, JPEGs at the sizes and aspect ratios of the
real set (512 to 1024 px a side), and the rows the normaliser must drop: ties, unlabelled
rows, identical images and one corrupt JPEG. Images are smooth random colour fields (cheap to
make, compress like photos). The counts of each kind are returned, so tests can check the
normaliser against them.
"""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

SUBJECTS = [
    "cat",
    "dog",
    "castle",
    "robot",
    "forest",
    "city",
    "dragon",
    "lighthouse",
    "astronaut",
    "mountain",
    "garden",
    "ship",
    "owl",
    "car",
    "library",
    "waterfall",
]
STYLES = [
    "oil painting",
    "photo",
    "watercolor",
    "digital art",
    "pencil sketch",
    "anime",
    "concept art",
    "low poly render",
]
DETAILS = [
    "at sunset",
    "in the rain",
    "under a full moon",
    "in a snowy landscape",
    "with dramatic lighting",
    "in a busy market",
    "on a quiet beach",
    "in the fog",
]
ADJECTIVES = ["a tiny", "a giant", "an ancient", "a futuristic", "a colorful", "a lonely"]
# (width, height) seen in Pick-a-Pic: SD and SDXL outputs, square and not.
SIZES = [
    (512, 512),
    (768, 768),
    (1024, 1024),
    (512, 768),
    (768, 512),
    (1024, 768),
    (768, 1024),
    (640, 896),
    (896, 640),
    (576, 1024),
]
MODELS = ["SD 2.1", "SDXL alpha", "SDXL beta", "Dreamlike Photoreal 2.0"]
EDITS = ["make it winter", "turn it into a painting", "add fireworks", "make it night"]


def words() -> list[str]:
    """Every word of the stand-in prompts: the tokenizers make each one token."""
    text = " ".join([*SUBJECTS, *STYLES, *DETAILS, *ADJECTIVES, *EDITS, "of", "a", "an"])
    return sorted(set(text.split()))


def prompt(rng: np.random.Generator) -> str:
    return (
        f"{rng.choice(ADJECTIVES)} {rng.choice(SUBJECTS)} {rng.choice(DETAILS)}, "
        f"{rng.choice(STYLES)}"
    )


def jpeg(rng: np.random.Generator, size: tuple[int, int], quality: int = 90) -> bytes:
    """A smooth random colour field: a coarse grid of colours upsampled bicubically."""
    coarse = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def _kinds(n: int, rng: np.random.Generator) -> list[str]:
    """Each row's kind: mostly labelled pairs, ~10 % ties, ~5 % unlabelled, a few identical,
    and one corrupt image; at least one of each when there are rows enough."""
    kinds = rng.choice(
        ["pair", "tie", "unlabelled", "identical"], size=n, p=[0.8, 0.1, 0.06, 0.04]
    ).tolist()
    for i, kind in enumerate(["tie", "unlabelled", "identical", "corrupt"]):
        if n > 4 * (i + 1):
            kinds[1 + 4 * i] = kind
    return kinds


def pickapic_rows(n: int, seed: int, split: str) -> tuple[pd.DataFrame, dict[str, int]]:
    """``n`` rows with Pick-a-Pic v2's columns; counts of each kind of row."""
    rng = np.random.default_rng(seed)
    captions = [prompt(rng) for _ in range(max(1, n // 3))]
    rows: list[dict[str, Any]] = []
    kinds = _kinds(n, rng) if split == "train" else ["pair"] * n
    for i, kind in enumerate(kinds):
        size = SIZES[int(rng.integers(len(SIZES)))]
        jpg_0, jpg_1 = jpeg(rng, size), jpeg(rng, size)
        label_0 = float(rng.integers(2))
        labels = {"tie": (0.5, 0.5), "unlabelled": (0.0, 0.0)}.get(kind, (label_0, 1 - label_0))
        if kind == "identical":
            jpg_1 = jpg_0
        if kind == "corrupt":
            jpg_1 = jpg_1[: len(jpg_1) // 3]  # a truncated JPEG: the header reads, the data not
        uids = [str(uuid.UUID(int=int(rng.integers(2**62)))) for _ in range(2)]
        best = {1.0: uids[0], 0.0: uids[1]}.get(labels[0], "")
        rows.append(
            {
                "are_different": kind != "identical",
                "best_image_uid": best if labels[0] != labels[1] else "",
                "caption": captions[int(rng.integers(len(captions)))],
                "created_at": pd.Timestamp("2023-05-01") + pd.Timedelta(minutes=i),
                "has_label": kind != "unlabelled",
                "image_0_uid": uids[0],
                "image_0_url": f"https://example.invalid/{uids[0]}.png",
                "image_1_uid": uids[1],
                "image_1_url": f"https://example.invalid/{uids[1]}.png",
                "jpg_0": jpg_0,
                "jpg_1": jpg_1,
                "label_0": labels[0],
                "label_1": labels[1],
                "model_0": MODELS[int(rng.integers(len(MODELS)))],
                "model_1": MODELS[int(rng.integers(len(MODELS)))],
                "ranking_id": 100000 + i,
                "user_id": int(rng.integers(1, 5000)),
                "num_example_per_prompt": 1,
                "__index_level_0__": i,
            }
        )
    counts = {
        kind: kinds.count(kind) for kind in ("pair", "tie", "unlabelled", "identical", "corrupt")
    }
    return pd.DataFrame(rows), counts


def write_pickapic(
    out: Path, splits: dict[str, int], *, files: int = 2, row_group: int = 16, seed: int = 0
) -> dict[str, dict[str, int]]:
    """A Pick-a-Pic v2 parquet folder (``data/<split>-0000i-of-0000n.parquet``)."""
    folder = out / "data"
    folder.mkdir(parents=True, exist_ok=True)
    counts = {}
    for k, (split, n) in enumerate(splits.items()):
        frame, counts[split] = pickapic_rows(n, seed + k, split)
        n_files = files if split == "train" else 1
        for i, block in enumerate(np.array_split(np.arange(n), n_files)):
            table = pa.Table.from_pandas(frame.iloc[block], preserve_index=False)
            name = f"{split}-{i:05d}-of-{n_files:05d}.parquet"
            pq.write_table(table, folder / name, row_group_size=row_group)
    return counts


# The columns of yuvalkirstain/pickapic_v1_no_images: Pick-a-Pic's, without the images.
IMAGE_COLUMNS = ["jpg_0", "jpg_1"]


def write_pickapic_captions(out: Path, split: str, n: int, seed: int = 0) -> Path:
    """One split of a captions-only Pick-a-Pic copy in the layout of the hub dataset
    ``yuvalkirstain/pickapic_v1_no_images`` (``out/data/<split>-00000-of-00001.parquet``;
    Pick-a-Pic's columns without ``jpg_0``/``jpg_1``), ``n`` rows of distinct captions, as in
    its ``validation_unique`` and ``test_unique`` splits."""
    frame, _ = pickapic_rows(n, seed + 300, split)
    rng = np.random.default_rng(seed + 300)
    captions = list(dict.fromkeys(prompt(rng) for _ in range(20 * n)))[:n]
    if len(captions) < n:
        raise ValueError(f"only {len(captions)} distinct stand-in captions; asked for {n}")
    frame = frame.drop(columns=IMAGE_COLUMNS).assign(caption=captions)
    file = out / "data" / f"{split}-00000-of-00001.parquet"
    file.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), file)
    return file


def write_prompt_files(out: Path, hpsv2_out: Path, n: int, seed: int = 0) -> dict[str, Path]:
    """Parti prompts (``out/PartiPrompts.tsv``: Prompt, Category, Challenge, Note) and the
    HPSv2 benchmark in the hub dataset's layout (``hpsv2_out/benchmark/<style>.json``, each a
    JSON list of prompts; dspo.data.hpsv2_prompts), as the preset's prompt-set loaders read them."""
    from dspo.data.hpsv2_prompts import STYLES, benchmark_files

    rng = np.random.default_rng(seed + 100)
    out.mkdir(parents=True, exist_ok=True)
    parti = pd.DataFrame(
        {
            "Prompt": [prompt(rng) for _ in range(n)],
            "Category": rng.choice(["Animals", "Artifacts", "Outdoor Scenes"], n),
            "Challenge": rng.choice(["Basic", "Complex", "Style & Format"], n),
            "Note": "",
        }
    )
    parti.to_csv(out / "PartiPrompts.tsv", sep="\t", index=False)
    for style, name in zip(STYLES, benchmark_files(), strict=True):
        file = hpsv2_out / name
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(json.dumps([f"{prompt(rng)}, {style}" for _ in range(max(1, n // 4))]))
    return {"parti": out / "PartiPrompts.tsv", "hpsv2": hpsv2_out}


def write_editing_set(out_file: Path, n: int, seed: int = 0) -> Path:
    """An InstructPix2Pix-style table: ``edit_prompt`` and ``input_image`` as the datasets
    library stores images in parquet (a struct of ``bytes`` and ``path``), 512 px."""
    rng = np.random.default_rng(seed + 200)
    images = [{"bytes": jpeg(rng, (512, 512)), "path": None} for _ in range(n)]
    table = pa.table(
        {
            "input_image": pa.array(
                images, pa.struct([("bytes", pa.binary()), ("path", pa.string())])
            ),
            "edit_prompt": [str(rng.choice(EDITS)) for _ in range(n)],
            "edited_image": pa.array(
                images, pa.struct([("bytes", pa.binary()), ("path", pa.string())])
            ),
        }
    )
    out_file.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out_file)
    return out_file


# T2I-CompBench's attribute-binding categories and the words their prompts bind.
COMPBENCH_ATTRIBUTES = {
    "color": ["red", "blue", "green", "yellow", "white", "black"],
    "shape": ["round", "square", "oval", "triangular", "rectangular", "cylindrical"],
    "texture": ["wooden", "metallic", "glass", "leather", "fluffy", "rubber"],
}
COMPBENCH_OBJECTS = ["car", "bench", "vase", "book", "bowl", "clock", "chair", "bag"]


def write_compbench(out: Path, n: int, seed: int = 0) -> dict[str, Path]:
    """T2I-CompBench's colour, shape and texture validation prompts in the layout of the hub
    copy ``NinaKarine/t2i-compbench``: ``out/<category>_val/val-00000-of-00001.parquet`` with
    one column, ``text``; each prompt ``"a <attribute> <object> and a <attribute> <object>"``."""
    rng = np.random.default_rng(seed + 200)
    files = {}
    for category, attributes in COMPBENCH_ATTRIBUTES.items():
        texts = []
        for _ in range(n):
            a, b = rng.choice(attributes, 2, replace=False)
            x, y = rng.choice(COMPBENCH_OBJECTS, 2, replace=False)
            texts.append(f"a {a} {x} and a {b} {y}")
        file = out / f"{category}_val" / "val-00000-of-00001.parquet"
        file.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"text": texts}).to_parquet(file, index=False)
        files[category] = file
    return files
