"""A per-visit cache: the trainer redraws each image's posterior sample and orientation at
every visit, as the upstream recipe does, while the default cache stays fixed."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from dspo.data.cache import build_cache
from dspo.data.cache_images import load_image
from dspo.data.cache_load import load_cache
from dspo.families import load_family
from dspo.families.sd_pipeline import load_pipeline
from dspo.training.preference import make_batch
from tests.training.test_reference import CFG, precompute, trained


def _noise_png(rng: np.random.Generator) -> bytes:
    """An image unlike its mirror (the plain-colour test images are their own mirrors)."""
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (16, 24, 3), np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def pairs(tiny_pairs: pd.DataFrame) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    images = {side: [_noise_png(rng) for _ in range(len(tiny_pairs))] for side in ("w", "l")}
    return tiny_pairs.assign(jpg_w=images["w"], jpg_l=images["l"])


@pytest.fixture(scope="module")
def caches(tiny_model: Path, pairs: pd.DataFrame, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("visits")
    kinds = {
        "fixed": {},
        "posterior": {"per_visit": True},
        "both": {"per_visit": True, "flip": True},
    }
    for name, extra in kinds.items():
        build_cache(pairs, str(tiny_model), root / name, resolution=16, dtype="float32", **extra)
    return {name: root / name for name in kinds}


def test_the_mirror_crop_is_the_crop_of_the_mirrored_image() -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 40, 3), np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    data = buffer.getvalue()
    for seed in range(5):
        kept = load_image(data, 16, crop="random", rng=np.random.default_rng(seed))
        mirror = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).resize((32, 16))
        top, left = kept.mirror_crop_top_left
        crop = np.asarray(mirror.crop((left, top, left + 16, top + 16)), np.float32)
        expected = crop.transpose(2, 0, 1) / 127.5 - 1.0
        np.testing.assert_allclose(kept.pixels[:, :, ::-1], expected, atol=1e-6)


def test_the_cache_keeps_the_posterior_and_both_orientations(
    caches: dict[str, Path], tiny_model: Path, pairs: pd.DataFrame
) -> None:
    fixed, both = load_cache(caches["fixed"]), load_cache(caches["both"])
    assert not fixed.per_visit and fixed.std_w is None and fixed.mirror_w is None
    assert both.per_visit and load_cache(caches["posterior"]).mirror_w is None
    # The posterior means are the fixed cache's latents; the mirrors are encoded, not mirrored.
    assert torch.equal(both.latents_w[:], fixed.latents_w[:])
    family, pipe = load_family(tiny_model), load_pipeline(str(tiny_model))
    pixels = torch.from_numpy(
        np.stack([load_image(data, 16).pixels for data in pairs["jpg_l"][:4]])
    )
    with torch.no_grad():
        mean, std = family.encode_posterior(pipe, pixels.flip(-1))
    torch.testing.assert_close(both.mirror_l[:4], mean)
    torch.testing.assert_close(both.mirror_std_l[:4], std)
    assert (std > 0).all()
    assert not torch.allclose(both.mirror_l[:4], both.latents_l[:4].flip(-1), atol=1e-3)
    # Six latent-sized tensors more per pair: two deviations, two mirrors, their deviations.
    latent_bytes = 4 * int(np.prod(fixed.manifest["latent_shape"]))
    extra = both.manifest["bytes_per_pair"] - fixed.manifest["bytes_per_pair"]
    assert 6 * latent_bytes < extra < 6 * latent_bytes + 64


def test_each_visit_draws_a_posterior_sample_and_an_orientation(
    caches: dict[str, Path], tiny_model: Path
) -> None:
    cache, family = load_cache(caches["both"]), load_family(tiny_model)
    rows = torch.arange(len(cache))

    def visit(seed: int) -> dict[str, torch.Tensor]:
        return make_batch(cache, rows, 0.0, torch.Generator().manual_seed(seed), family)

    assert all(torch.equal(a, b) for a, b in zip(visit(3).values(), visit(3).values(), strict=True))
    plain, mirror = cache.latents_w[:], cache.mirror_w[:]
    std, mirror_std = cache.std_w[:], cache.mirror_std_w[:]
    assert not torch.allclose(plain, mirror)
    shares, z = [], []
    for seed in range(40):
        latents = visit(seed)["latents_w"]
        # The draws, in order: prompt dropout, then the preferred images' orientations.
        gen = torch.Generator().manual_seed(seed)
        torch.rand(len(rows), generator=gen)
        chose = (torch.rand(len(rows), generator=gen) < 0.5)[:, None, None, None]
        shares.append(chose.float().mean().item())
        mean, scale = torch.where(chose, mirror, plain), torch.where(chose, mirror_std, std)
        z.append((latents - mean) / scale)
    assert 0.35 < float(np.mean(shares)) < 0.65  # each orientation half of the visits
    z = torch.cat(z)
    # Added to the chosen mean: the posterior's deviation times a standard normal.
    assert abs(z.mean().item()) < 0.02 and abs(z.std().item() - 1.0) < 0.02


def test_a_fixed_cache_draws_nothing_more(caches: dict[str, Path], tiny_model: Path) -> None:
    cache, family = load_cache(caches["fixed"]), load_family(tiny_model)
    gen = torch.Generator().manual_seed(0)
    batch = make_batch(cache, torch.arange(4), 0.0, gen, family)
    assert torch.equal(batch["latents_w"], cache.latents_w[:4])
    # The noise is the draw right after prompt dropout's: no visit draw came between.
    expected = torch.Generator().manual_seed(0)
    torch.rand(4, generator=expected)
    assert torch.equal(batch["noise"], torch.randn(batch["noise"].shape, generator=expected))


def test_a_precomputed_reference_sees_the_visits_the_trainer_draws(
    caches: dict[str, Path], tiny_model: Path, tmp_path: Path
) -> None:
    cfg = {**CFG, "objective": "dspo", "params": {"lam": 0.5, "kappa": 100.0}}
    cache = caches["both"]
    online = trained(cfg, cache, tiny_model, tmp_path / "online", None)
    folder = precompute(cfg, cache, tiny_model, tmp_path / "pre", parts=1, factor=1)
    pre = trained(cfg, cache, tiny_model, tmp_path / "pre", folder)
    name = "unet/diffusion_pytorch_model.safetensors"
    assert (online / name).read_bytes() == (pre / name).read_bytes()


def test_bench_flip_measures_how_far_a_mirrored_latent_is_from_the_mirror_encoded(
    tiny_model: Path, pairs: pd.DataFrame, tmp_path: Path, capsys
) -> None:
    from dspo.cli.commands import main

    pairs.to_parquet(tmp_path / "pairs.parquet")
    argv = ["--model", str(tiny_model), "--pairs", str(tmp_path / "pairs.parquet")]
    main(["bench", "flip", *argv, "--resolution", "16", "--images", "8"])
    printed = capsys.readouterr().out
    assert "8 images" in printed and "posterior std" in printed
    from dspo.bench.flip import measure

    result = measure(str(tiny_model), str(tmp_path / "pairs.parquet"), 16, 8)
    # A random-weight encoder does not commute with a mirror: both orientations are encoded.
    assert result["relative_gap"] > 0.01 and result["orientation_gap"] > 0.01
