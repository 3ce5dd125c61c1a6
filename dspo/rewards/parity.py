"""Parity of our reward scorers with the original packages, on a fixed set of awkward inputs.

``make reward-parity`` runs this module. It writes the inputs (images whose sizes hit the
resize rounding, 224x150, large and small, an EXIF-rotated JPEG, greyscale, RGBA, a transparent
colour in a palette PNG, an RGB PNG and a GIF; prompts with HTML entities, curly quotes, over
77 tokens, odd whitespace), has ``scripts/reward_parity/originals.py`` build random-initialised
models WITH THE ORIGINAL PACKAGES in their own environment, save them in the published layouts
and score every (image, prompt) pair, then loads those files through
``dspo.rewards.load_reward``, scores the same pairs and fails when any score differs by more
than the tolerance (1e-4), or when only one side rejects an input (any exception a side raises
on an input is that side's rejection of it). The table it prints is the one in docs/rewards.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

TOLERANCE = 1e-4
BEGIN, END = "<!-- reward-parity:begin -->", "<!-- reward-parity:end -->"
ORIGINALS = Path(__file__).resolve().parents[2] / "scripts" / "reward_parity" / "originals.py"
PROMPTS = [
    "a photo of a cat",
    "salt &amp; pepper shakers &lt;3 on a &quot;wooden&quot; table",
    "a cat\u2019s \u201cfavourite\u201d toy \u2014 caf\u00e9 cr\u00e8me, na\u00efve style",
    "  a\tred \n\n  circle   on  the\u00a0grass  ",
    "&amp;amp; double escaped &#39;quotes&#39; and AT&amp;T",
    "UPPER case MIXED Prompt, with punctuation!!! (and) [brackets] 1920s",
    " ".join(
        ["a highly detailed matte painting of a lighthouse on a cliff above a stormy sea,"]
        + ["dramatic clouds, golden hour light, volumetric fog, trending on artstation,"] * 8
        + ["by greg rutkowski and alphonse mucha"]
    ),
]


def _texture(width: int, height: int, seed: int) -> np.ndarray:
    """Smooth colour gradients plus fine noise and hard edges (what resampling changes)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    phases = rng.uniform(0, 6.28, 3)
    base = np.stack(
        [127 + 100 * np.sin(x / (7 + 5 * c) + y / (11 + 3 * c) + phases[c]) for c in range(3)], -1
    )
    base[(x.astype(int) // 16 + y.astype(int) // 16) % 5 == 0] = 255  # hard-edged squares
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def _palette(width: int, height: int, seed: int) -> tuple[Image.Image, int]:
    """A 32-colour palette image of :func:`_texture` and its most frequent palette index."""
    image = Image.fromarray(_texture(width, height, seed)).quantize(32)
    return image, int(np.bincount(np.asarray(image).ravel()).argmax())


def write_transparent(folder: Path) -> list[str]:
    """Images with a transparent colour (PNG ``tRNS``, GIF's transparent index), as saved.

    transformers 5 composites such a colour onto white even after ``convert("RGB")``; the
    originals (transformers 4.x, torchvision) read the plain pixels. Returns the file names.
    """
    palette, index = _palette(200, 150, 11)
    palette.save(folder / "palette_transparent_200x150.png", transparency=index)
    rgb, index = _palette(180, 180, 12)
    colour = tuple(rgb.getpalette()[3 * index : 3 * index + 3])
    rgb.convert("RGB").save(folder / "rgb_transparent_180x180.png", transparency=colour)
    gif, index = _palette(160, 120, 13)
    gif.save(folder / "transparent_160x120.gif", transparency=index)
    return [
        "palette_transparent_200x150.png",
        "rgb_transparent_180x180.png",
        "transparent_160x120.gif",
    ]


def write_inputs(folder: Path) -> list[dict[str, str]]:
    """The fixed images and prompts, and the (image, prompt) pairs both sides score."""
    folder.mkdir(parents=True, exist_ok=True)
    images = {
        "square_440.png": Image.fromarray(_texture(440, 440, 0)),
        "portrait_640x720.png": Image.fromarray(_texture(640, 720, 1)),
        "wide_224x150.png": Image.fromarray(_texture(224, 150, 2)),
        "large_1536x1024.jpg": Image.fromarray(_texture(1536, 1024, 3)),
        "small_48x40.png": Image.fromarray(_texture(48, 40, 4)),
        "square_224.png": Image.fromarray(_texture(224, 224, 5)),
        "square_512.png": Image.fromarray(_texture(512, 512, 6)),
        "grey_256x320.png": Image.fromarray(_texture(256, 320, 7)).convert("L"),
    }
    rgba = np.dstack([_texture(330, 330, 8), _texture(330, 330, 9)[..., 0]])
    images["rgba_330.png"] = Image.fromarray(rgba, "RGBA")
    for name, image in images.items():
        image.save(folder / name)
    # EXIF orientation 6 (rotate 90 on display): the originals read the stored pixels.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(_texture(300, 200, 10)).save(folder / "exif_rotated_300x200.jpg", exif=exif)
    names = sorted([*images, "exif_rotated_300x200.jpg", *write_transparent(folder)])
    count = 2 * len(names)  # every image twice, every prompt at least twice
    pairs = [
        {"image": f"inputs/{names[i % len(names)]}", "prompt": PROMPTS[i % len(PROMPTS)]}
        for i in range(count)
    ]
    (folder / "pairs.json").write_text(json.dumps(pairs, indent=1))
    return pairs


def our_specs(models: Path) -> dict[str, dict[str, Any]]:
    """Config entries pointing at the files the original packages saved."""
    pick = {
        "model": str(models / "pickscore/model"),
        "processor": str(models / "pickscore/processor"),
    }
    return {
        "hpsv2": {
            "kind": "hpsv2",
            "version": "v2.0",
            "checkpoint": str(models / "hpsv2/HPS_v2_compressed.pt"),
        },
        "image_reward": {
            "kind": "image_reward",
            "checkpoint": str(models / "image_reward/ImageReward.pt"),
            "med_config": str(models / "image_reward/med_config.json"),
            "tokenizer": str(models / "image_reward/bert-base-uncased"),
        },
        "laion_aesthetics": {
            "kind": "laion_aesthetics",
            "checkpoint": str(models / "aesthetics/sac+logos+ava1-l14-linearMSE.pth"),
            "clip_model": str(models / "aesthetics/clip-vit-large-patch14"),
        },
        "pickscore": {"kind": "pickscore", **pick},
        "clip_score": {"kind": "clip_score", **pick},
    }


def our_scores(work: Path, pairs: list[dict[str, str]], names: list[str]) -> dict[str, list]:
    """Each pair scored alone through ``load_reward`` (a score, or the error we raise)."""
    from dspo.rewards import load_reward, open_image

    specs = our_specs(work / "models")
    scores: dict[str, list] = {}
    for name in names:
        print(f"ours: {name}", flush=True)
        reward = load_reward(specs[name])
        values: list = []
        for pair in pairs:
            try:
                image = open_image(work / pair["image"])
                values.append(float(reward.score([image], [pair["prompt"]])[0]))
            except Exception as error:  # any error is this side's rejection, as for originals
                values.append({"error": f"{type(error).__name__}: {error}"})
        scores[name] = values
        del reward
    return scores


def compare(
    originals: Mapping[str, list], ours: Mapping[str, list], pairs: list[dict[str, str]]
) -> list[dict[str, Any]]:
    """One row per reward: max |difference|, spread of the original scores, rejections."""
    rows = []
    for name, theirs in originals.items():
        mine = ours[name]
        diffs, mismatches, rejected = [], [], []
        for pair, a, b in zip(pairs, theirs, mine, strict=True):
            if isinstance(a, dict) or isinstance(b, dict):
                if isinstance(a, dict) and isinstance(b, dict):
                    rejected.append(Path(pair["image"]).name)
                else:
                    mismatches.append(f"{pair['image']} / {pair['prompt'][:30]!r}: {a} vs {b}")
                continue
            diffs.append(abs(a - b))
        values = [a for a in theirs if not isinstance(a, dict)]
        rows.append(
            {
                "reward": name,
                "pairs": len(diffs),
                "max_abs_difference": max(diffs) if diffs else float("nan"),
                "spread": (max(values) - min(values)) if values else float("nan"),
                "both_reject": sorted(set(rejected)),
                "mismatches": mismatches,
                "ok": bool(diffs) and max(diffs) <= TOLERANCE and not mismatches,
            }
        )
    return rows


def table(rows: list[dict[str, Any]], scale: str, versions: Mapping[str, str]) -> str:
    lines = [
        f"Scale `{scale}`; originals under torch {versions.get('torch')}, torchvision "
        f"{versions.get('torchvision')}, transformers {versions.get('transformers')}; "
        f"tolerance {TOLERANCE:g}.",
        "",
        "| reward | pairs compared | max abs difference | spread of scores | both reject | ok |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        rejected = ", ".join(row["both_reject"]) or "-"
        lines.append(
            f"| {row['reward']} | {row['pairs']} | {row['max_abs_difference']:.2e} | "
            f"{row['spread']:.4g} | {rejected} | {'yes' if row['ok'] else 'NO'} |"
        )
    return "\n".join(lines)


def write_doc(doc: Path, text: str) -> None:
    """Replace the block between the parity markers of `doc` with `text`."""
    content = doc.read_text()
    if BEGIN not in content or END not in content:
        raise ValueError(f"{doc} has no {BEGIN} ... {END} block to fill")
    head, rest = content.split(BEGIN, 1)
    doc.write_text(f"{head}{BEGIN}\n{text}\n{END}{rest.split(END, 1)[1]}")


GROUPS = {"hpsv2": ["hpsv2"], "image_reward": ["image_reward"]}
GROUPS |= {"aesthetics": ["laion_aesthetics"], "hub_clip": ["pickscore", "clip_score"]}


def run(
    work: Path,
    python: str | None,
    scale: str,
    rewards: list[str] | None = None,
    doc: Path | None = None,
    ours_done: Mapping[str, list] | None = None,
) -> list[dict[str, Any]]:
    """Originals, then ours; returns the comparison rows (and fills `doc` when given).

    With `python` None the originals' scores and models of an earlier run in `work` are
    reused; rewards in `ours_done` (our scores saved by an earlier run) are not rescored.
    """
    pairs = write_inputs(work / "inputs")
    rewards = rewards or list(GROUPS)
    if python is not None:
        (work / "original_scores.json").unlink(missing_ok=True)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HPS_ROOT": str(work / "hps-root")}
        env.pop("PYTHONPATH", None)  # the originals must not see this project
        command = [python, str(ORIGINALS), "--work", str(work), "--scale", scale, "--rewards"]
        subprocess.run([*command, *rewards], check=True, env=env)
    originals = json.loads((work / "original_scores.json").read_text())
    versions = json.loads((work / "original_versions.json").read_text())
    names = [name for group in rewards for name in GROUPS[group]]
    done = dict(ours_done or {})
    ours = {**done, **our_scores(work, pairs, [n for n in names if n not in done])}
    (work / "our_scores.json").write_text(json.dumps(ours, indent=1))
    rows = compare({n: originals[n] for n in names}, ours, pairs)
    text = table(rows, scale, versions)
    (work / "parity.md").write_text(text + "\n")
    (work / "parity.json").write_text(json.dumps(rows, indent=1))
    print(text)
    for row in rows:
        for mismatch in row["mismatches"]:
            print(f"{row['reward']}: only one side rejects {mismatch}")
    if doc is not None:
        write_doc(doc, text)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Reward scores vs the original packages")
    parser.add_argument("--work", type=Path, default=Path("build/reward-parity"))
    parser.add_argument("--python", help="the originals' environment's python")
    parser.add_argument(
        "--reuse-originals", action="store_true", help="keep the originals' scores in --work"
    )
    parser.add_argument("--ours", type=Path, nargs="*", default=[], help="our saved scores")
    parser.add_argument("--only-ours", nargs="*", help="just score these rewards, into --save")
    parser.add_argument("--save", type=Path, help="where --only-ours writes its scores")
    parser.add_argument("--scale", choices=["tiny", "full"], default="full")
    parser.add_argument("--rewards", nargs="*", help="hpsv2 image_reward aesthetics hub_clip")
    parser.add_argument("--doc", type=Path, help="markdown file whose parity block to replace")
    args = parser.parse_args(argv)
    if args.only_ours:  # our side alone, e.g. alongside a running comparison
        pairs = json.loads((args.work / "inputs" / "pairs.json").read_text())
        args.save.write_text(json.dumps(our_scores(args.work, pairs, args.only_ours)))
        return 0
    if (args.python is None) != args.reuse_originals:
        parser.error("give --python, or --reuse-originals to keep an earlier run's originals")
    done: dict[str, list] = {}
    for path in args.ours:
        done |= json.loads(path.read_text())
    rows = run(args.work, args.python, args.scale, args.rewards, args.doc, done)
    return 0 if all(row["ok"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
