"""The paper's five reward models, loaded from tiny random checkpoints in their real layouts.

CLIP-based models are saved with ``save_pretrained`` as hub folders are; HPSv2 and ImageReward
checkpoints are written by small reference modules in the original projects' key layouts
(open_clip's ``nn.MultiheadAttention`` blocks, BLIP's timm-style ViT and med BERT names), so
loading them exercises the same key mapping a real checkpoint does.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn
from transformers import BertTokenizer, CLIPConfig, CLIPImageProcessorPil, CLIPModel

from dspo.families.text import build_tokenizer
from dspo.rewards import load_reward, open_image, parity, score_manifest
from dspo.rewards.common import CLIP_MEAN, CLIP_STD
from dspo.rewards.transforms import center_crop_pixels, hpsv2_pixels, open_clip_tokens

WORDS = ["a", "red", "blue", "green", "circle", "square", "cat", "on", "the", "grass", "photo"]
PROMPTS = ["a red circle", "a blue square on the grass", "a photo of a cat", "green"]
WIDTH, HEADS, LAYERS, EMBED = 32, 16, 2, 16  # 16 heads: ViT-H-14's and BLIP ViT-L's count
OPEN_CLIP_VOCAB = 49408  # open_clip's BPE vocabulary, which HPSv2 tokenizes with


def tiny_images(n: int = 4) -> list[Image.Image]:
    rng = np.random.default_rng(1)
    sizes = [(40, 40), (48, 32), (30, 45), (64, 64)]
    return [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for w, h in (sizes[i % len(sizes)] for i in range(n))
    ]


def randomise(module: nn.Module, seed: int) -> None:
    """Spread every parameter so random models give clearly different scores."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            param.copy_(1 + 0.1 * noise if "ln" in name or "norm" in name else 0.3 * noise)


# ------------------------------------------------------------------ hub-style CLIP folders


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CLIPModel with its tokenizer and image processor, as a hub repo is laid out."""
    path = tmp_path_factory.mktemp("clip")
    tokenizer = build_tokenizer(WORDS, 77)
    text = {"vocab_size": len(tokenizer), "max_position_embeddings": 77}
    text |= {k: getattr(tokenizer, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    size = {"hidden_size": WIDTH, "intermediate_size": 64, "num_hidden_layers": LAYERS}
    config = CLIPConfig(
        text_config={**size, **text, "num_attention_heads": 4},
        vision_config={**size, "num_attention_heads": 4, "image_size": 32, "patch_size": 8},
        projection_dim=EMBED,
    )
    torch.manual_seed(0)
    model = CLIPModel(config)
    randomise(model, 0)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    crop = {"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}}
    CLIPImageProcessorPil(**crop).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def aesthetic_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The aesthetic head in sac+logos+ava1-l14-linearMSE.pth's layout, on EMBED-d inputs."""
    path = tmp_path_factory.mktemp("aesthetic") / "sac+logos+ava1-l14-linearMSE.pth"
    head = score_head([EMBED, 1024, 128, 64, 16, 1], seed=5)
    torch.save({f"layers.{k}": v for k, v in head.state_dict().items()}, path)
    return path


# ------------------------------------------------------------------ open_clip reference


class Block(nn.Module):
    """open_clip's residual attention block: pre-LN attention and GELU MLP."""

    def __init__(self, width: int, mlp: int) -> None:
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, HEADS, batch_first=True)
        layers = [("c_fc", nn.Linear(width, mlp)), ("gelu", nn.GELU())]
        self.mlp = nn.Sequential(OrderedDict([*layers, ("c_proj", nn.Linear(mlp, width))]))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(Block(width, 2 * width) for _ in range(LAYERS))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, mask)
        return x


class Visual(nn.Module):
    def __init__(self, patch: int, grid: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, WIDTH, patch, patch, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(WIDTH))
        self.positional_embedding = nn.Parameter(torch.randn(grid * grid + 1, WIDTH))
        self.ln_pre, self.ln_post = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)
        self.transformer = Transformer(WIDTH)
        self.proj = nn.Parameter(torch.randn(WIDTH, EMBED))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.conv1(pixels).flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(len(x), 1, -1)
        x = self.ln_pre(torch.cat([cls, x], 1) + self.positional_embedding)
        return self.ln_post(self.transformer(x)[:, 0]) @ self.proj


class OpenClip(nn.Module):
    """open_clip's CLIP (key names and computation) at a tiny size."""

    def __init__(self, vocab: int, context: int = 77) -> None:
        super().__init__()
        self.visual = Visual(patch=14, grid=2)
        self.token_embedding = nn.Embedding(vocab, WIDTH)
        self.positional_embedding = nn.Parameter(torch.randn(context, WIDTH))
        self.transformer = Transformer(WIDTH)
        self.ln_final = nn.LayerNorm(WIDTH)
        self.text_projection = nn.Parameter(torch.randn(WIDTH, EMBED))
        self.logit_scale = nn.Parameter(torch.tensor(np.log(1 / 0.07)))
        mask = torch.full((context, context), float("-inf")).triu(1)
        self.register_buffer("attn_mask", mask)  # older open_clip saved it with the weights

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.transformer(self.token_embedding(ids) + self.positional_embedding, self.attn_mask)
        return self.ln_final(x)[torch.arange(len(ids)), ids.argmax(-1)] @ self.text_projection


@pytest.fixture(scope="module")
def hps_files(tmp_path_factory: pytest.TempPathFactory, clip_dir: Path) -> tuple[Path, OpenClip]:
    """``HPS_v2_compressed.pt`` at tiny size: ``{"state_dict": ...}`` as the HPSv2 repo saves."""
    path = tmp_path_factory.mktemp("hps") / "HPS_v2_compressed.pt"
    torch.manual_seed(0)
    model = OpenClip(vocab=OPEN_CLIP_VOCAB)
    randomise(model, 1)
    torch.save({"state_dict": model.state_dict()}, path)
    return path, model.eval()


# ------------------------------------------------------------------ BLIP / ImageReward


class VitBlock(nn.Module):
    """BLIP's ViT block (timm layout): fused qkv, LayerNorm eps 1e-6, GELU MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(WIDTH, eps=1e-6), nn.LayerNorm(WIDTH, eps=1e-6)
        self.attn = nn.Module()
        self.attn.qkv, self.attn.proj = nn.Linear(WIDTH, 3 * WIDTH), nn.Linear(WIDTH, WIDTH)
        self.mlp = nn.Module()
        self.mlp.fc1, self.mlp.fc2 = nn.Linear(WIDTH, 4 * WIDTH), nn.Linear(4 * WIDTH, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.attn.qkv(self.norm1(x)).reshape(b, n, 3, HEADS, c // HEADS).unbind(2)
        attn = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q, k) * (c // HEADS) ** -0.5, -1)
        x = x + self.attn.proj(torch.einsum("bhqk,bkhd->bqhd", attn, v).reshape(b, n, c))
        return x + self.mlp.fc2(nn.functional.gelu(self.mlp.fc1(self.norm2(x))))


class BlipVit(nn.Module):
    def __init__(self, patch: int = 8, grid: int = 4) -> None:
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, WIDTH, patch, patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, WIDTH))
        self.pos_embed = nn.Parameter(torch.randn(1, grid * grid + 1, WIDTH))
        self.blocks = nn.ModuleList(VitBlock() for _ in range(LAYERS))
        self.norm = nn.LayerNorm(WIDTH, eps=1e-6)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed.proj(pixels).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], 1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


def med_text_state(vocab: int, hidden: int, positions: int, seed: int) -> dict[str, torch.Tensor]:
    """Random weights under BLIP's med.py BertModel names (with cross-attention)."""
    g = torch.Generator().manual_seed(seed)
    shapes = {
        "embeddings.word_embeddings.weight": (vocab, hidden),
        "embeddings.position_embeddings.weight": (positions, hidden),
    }
    for i in range(LAYERS):
        for attention, kv_width in (("attention", hidden), ("crossattention", WIDTH)):
            widths = {"query": hidden, "key": kv_width, "value": kv_width, "output.dense": hidden}
            for name, width in widths.items():
                full = f"encoder.layer.{i}.{attention}.{'' if 'output' in name else 'self.'}{name}"
                shapes[f"{full}.weight"], shapes[f"{full}.bias"] = (hidden, width), (hidden,)
        shapes[f"encoder.layer.{i}.intermediate.dense.weight"] = (2 * hidden, hidden)
        shapes[f"encoder.layer.{i}.intermediate.dense.bias"] = (2 * hidden,)
        shapes[f"encoder.layer.{i}.output.dense.weight"] = (hidden, 2 * hidden)
        shapes[f"encoder.layer.{i}.output.dense.bias"] = (hidden,)
    norms = ["embeddings.LayerNorm"]
    for i in range(LAYERS):
        norms += [
            f"encoder.layer.{i}.{a}.output.LayerNorm" for a in ("attention", "crossattention")
        ]
        norms.append(f"encoder.layer.{i}.output.LayerNorm")
    state = {k: 0.3 * torch.randn(s, generator=g) for k, s in shapes.items()}
    for norm in norms:
        state[f"{norm}.weight"] = 1 + 0.1 * torch.randn(hidden, generator=g)
        state[f"{norm}.bias"] = 0.1 * torch.randn(hidden, generator=g)
    state["embeddings.position_ids"] = torch.arange(positions)[None]  # med.py saves the buffer
    return state


def score_head(sizes: list[int], seed: int) -> nn.Sequential:
    """The aesthetic / ImageReward head layout: Linear, Dropout, ..., Linear, Linear."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if i < 3:
            layers.append(nn.Dropout(0.2))
    head = nn.Sequential(*layers)
    randomise(head, seed)
    return head


@pytest.fixture(scope="module")
def image_reward_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``ImageReward.pt`` (bare state dict), ``med_config.json`` and a BERT tokenizer folder."""
    root = tmp_path_factory.mktemp("image_reward")
    vocab_file = root / "vocab.txt"
    vocab_file.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]))
    BertTokenizer(vocab_file=str(vocab_file)).save_pretrained(root / "bert")
    vocab, hidden, positions = len(WORDS) + 5 + 2, 24, 40  # + [DEC] and [ENC]
    med = {"hidden_size": hidden, "intermediate_size": 2 * hidden, "num_hidden_layers": LAYERS}
    med |= {"num_attention_heads": 4, "max_position_embeddings": positions, "vocab_size": vocab}
    med |= {"hidden_act": "gelu", "layer_norm_eps": 1e-12, "add_cross_attention": True}
    # ImageReward's file says 768; BLIP replaces it with the ViT's width, as must we.
    med |= {"model_type": "bert", "pad_token_id": 0, "encoder_width": 768}
    (root / "med_config.json").write_text(json.dumps(med))
    torch.manual_seed(0)
    vit = BlipVit()
    randomise(vit, 2)
    state = {f"blip.visual_encoder.{k}": v for k, v in vit.state_dict().items()}
    state |= {f"blip.text_encoder.{k}": v for k, v in med_text_state(vocab, hidden, 40, 3).items()}
    state |= {
        "blip.vision_proj.weight": torch.randn(8, WIDTH),
        "blip.text_proj.weight": torch.randn(8, hidden),
    }
    head = score_head([hidden, 1024, 128, 64, 16, 1], seed=4)
    state |= {f"mlp.layers.{k}": v for k, v in head.state_dict().items()}
    torch.save(state, root / "ImageReward.pt")
    return {"root": root, "vit": vit.eval()}


# ------------------------------------------------------------------ the tests


@pytest.fixture(scope="module")
def specs(
    clip_dir: Path, hps_files: tuple[Path, OpenClip], aesthetic_file: Path, image_reward_files
) -> dict[str, dict]:
    """Config entries as a preset writes them, pointing at the tiny local checkpoints."""
    root = image_reward_files["root"]
    return {
        "pickscore": {"kind": "pickscore", "model": str(clip_dir), "processor": str(clip_dir)},
        "clip": {"kind": "clip_score", "model": str(clip_dir)},
        "hps": {"kind": "hpsv2", "version": "v2.0", "checkpoint": str(hps_files[0])},
        "aesthetics": {
            "kind": "laion_aesthetics",
            "checkpoint": str(aesthetic_file),
            "clip_model": str(clip_dir),
        },
        "image_reward": {
            "kind": "image_reward",
            "checkpoint": str(root / "ImageReward.pt"),
            "med_config": str(root / "med_config.json"),
            "tokenizer": str(root / "bert"),
        },
    }


@pytest.fixture(scope="module")
def models(specs: dict[str, dict]) -> dict:
    return {name: load_reward(spec) for name, spec in specs.items()}


@pytest.mark.parametrize("name", ["pickscore", "clip", "hps", "aesthetics", "image_reward"])
def test_scores_are_batch_invariant_and_deterministic(models: dict, name: str) -> None:
    reward = models[name]
    images = tiny_images()
    scores = reward.score(images, PROMPTS)
    assert scores.shape == (4,) and scores.dtype == np.float64 and np.isfinite(scores).all()
    assert np.ptp(scores) > 1e-3  # random weights still tell the images apart
    singles = np.concatenate(
        [reward.score([im], [p]) for im, p in zip(images, PROMPTS, strict=True)]
    )
    np.testing.assert_allclose(singles, scores, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(reward.score(images, PROMPTS), scores)


def test_pickscore_is_clip_cosine_times_learned_temperature(models: dict, clip_dir: Path) -> None:
    images = tiny_images()
    scale = CLIPModel.from_pretrained(clip_dir).logit_scale.exp().item()
    pick, clip = models["pickscore"].score(images, PROMPTS), models["clip"].score(images, PROMPTS)
    np.testing.assert_allclose(pick, scale * clip, rtol=1e-5)
    assert np.all(np.abs(clip) <= 1)


def test_hpsv2_equals_the_open_clip_computation(models: dict, hps_files) -> None:
    _, reference = hps_files
    images = tiny_images()
    ids = open_clip_tokens(PROMPTS, 77)
    with torch.no_grad():
        image = reference.visual(hpsv2_pixels(images, 28))
        text = reference.encode_text(ids)
    expected = torch.nn.functional.cosine_similarity(image, text).numpy()
    np.testing.assert_allclose(models["hps"].score(images, PROMPTS), expected, rtol=1e-4, atol=1e-6)


def test_image_reward_vision_equals_blip_vit(models: dict, image_reward_files) -> None:
    reward = models["image_reward"]
    pixels = center_crop_pixels(tiny_images(), 32)
    with torch.no_grad():
        ours = reward.vision(pixel_values=pixels).last_hidden_state
        theirs = image_reward_files["vit"](pixels)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    # The prompt's padding is masked: changing the padded ids leaves the [CLS] output alone.
    text = reward.tokenizer(
        ["a red circle"], padding="max_length", max_length=35, return_tensors="pt"
    )
    memory = ours[:1]
    outputs = []
    for pad in (0, 7):
        ids = text["input_ids"].masked_fill(text["attention_mask"] == 0, pad)
        hidden = reward.text(
            input_ids=ids, attention_mask=text["attention_mask"], encoder_hidden_states=memory
        ).last_hidden_state
        outputs.append(hidden[:, 0])
    torch.testing.assert_close(outputs[0], outputs[1])


def test_every_score_row_records_the_reward_version(
    tmp_path: Path, specs: dict[str, dict], hps_files
) -> None:
    for i, image in enumerate(tiny_images(2)):
        image.save(tmp_path / f"{i}.png")
    manifest = pd.DataFrame(
        {
            "prompt_set": "s",
            "prompt_id": [0, 1],
            "prompt": PROMPTS[:2],
            "seed": 0,
            "path": ["0.png", "1.png"],
        }
    )
    rewards = {"hps": specs["hps"], "aesthetics": specs["aesthetics"]}
    scores = score_manifest(manifest, tmp_path, rewards, model_name="base", batch_size=1)
    hps = scores[scores.reward == "hps"]
    assert len(hps) == 2 and set(hps.reward_version) == {f"hpsv2 v2.0 {hps_files[0]}"}
    assert scores.reward_version.str.len().gt(0).all()


def test_hpsv2_version_must_be_given_and_match_the_checkpoint(specs: dict[str, dict]) -> None:
    spec = dict(specs["hps"])
    with pytest.raises(ValueError, match="needs `version`"):
        load_reward({k: v for k, v in spec.items() if k != "version"})
    with pytest.raises(ValueError, match="v2.1 but `checkpoint` HPS_v2_compressed.pt is v2.0"):
        load_reward({**spec, "version": "v2.1"})


def test_bad_inputs_are_named(specs: dict[str, dict], tmp_path: Path, clip_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"does not take \['part'\]"):
        load_reward({**specs["clip"], "part": "total"})
    with pytest.raises(FileNotFoundError, match="`checkpoint` 'nowhere.pth' is not a file"):
        load_reward({**specs["aesthetics"], "checkpoint": "nowhere.pth"})
    broken = tmp_path / "HPS_v2_compressed.pt"
    state = torch.load(specs["hps"]["checkpoint"], weights_only=True)["state_dict"]
    torch.save({k: v for k, v in state.items() if k != "visual.proj"}, broken)
    with pytest.raises(
        ValueError, match=r"HPS_v2_compressed.pt lacks 1 expected weights: visual.proj"
    ):
        load_reward({**specs["hps"], "checkpoint": str(broken)})
    wide = tmp_path / "wide.pth"
    head = score_head([EMBED + 1, 8, 4, 4, 2, 1], seed=0)
    torch.save({f"layers.{k}": v for k, v in head.state_dict().items()}, wide)
    with pytest.raises(ValueError, match="expects 17-d embeddings"):
        load_reward({**specs["aesthetics"], "checkpoint": str(wide)})
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        load_reward(specs["clip"]).score(tiny_images(2), PROMPTS[:1])


def _clip_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def _clip_copy(clip_dir: Path, target: Path, weights: dict[str, torch.Tensor]) -> Path:
    import shutil

    from safetensors.torch import save_file

    shutil.copytree(clip_dir, target)
    save_file(weights, target / "model.safetensors", metadata={"format": "pt"})
    return target


def test_clip_folders_missing_or_adding_weights_fail_naming_them(
    specs: dict[str, dict], clip_dir: Path, tmp_path: Path
) -> None:
    weights = _clip_weights(clip_dir)
    gone = "vision_model.encoder.layers.0.self_attn.q_proj.weight"
    lacking = _clip_copy(
        clip_dir, tmp_path / "lacking", {k: v for k, v in weights.items() if k != gone}
    )
    extra = _clip_copy(clip_dir, tmp_path / "extra", {**weights, "text_model.extra": torch.ones(2)})
    for name in ("pickscore", "clip"):
        with pytest.raises(ValueError, match=rf"1 missing weights: {gone}"):
            load_reward({**specs[name], "model": str(lacking)})
        with pytest.raises(ValueError, match="1 unexpected weights: text_model.extra"):
            load_reward({**specs[name], "model": str(extra)})
    with pytest.raises(ValueError, match=rf"1 missing weights: {gone}"):
        load_reward({**specs["aesthetics"], "clip_model": str(lacking)})


def test_checkpoint_files_missing_or_adding_weights_fail_naming_them(
    specs: dict[str, dict], tmp_path: Path
) -> None:
    hps = torch.load(specs["hps"]["checkpoint"], weights_only=True)["state_dict"]
    path = tmp_path / "HPS_v2_compressed.pt"
    torch.save({"state_dict": {**hps, "visual.extra": torch.ones(1)}}, path)
    with pytest.raises(ValueError, match="holds 1 unexpected weights: visual.extra"):
        load_reward({**specs["hps"], "checkpoint": str(path)})
    gone = "transformer.resblocks.1.attn.in_proj_weight"
    torch.save({"state_dict": {k: v for k, v in hps.items() if k != gone}}, path)
    with pytest.raises(ValueError, match=f"lacks the open_clip weight '{gone}'"):
        load_reward({**specs["hps"], "checkpoint": str(path)})

    image_reward = torch.load(specs["image_reward"]["checkpoint"], weights_only=True)
    path = tmp_path / "ImageReward.pt"
    gone = "blip.text_encoder.encoder.layer.0.crossattention.self.key.weight"
    torch.save({k: v for k, v in image_reward.items() if k != gone}, path)
    with pytest.raises(ValueError, match=f"lacks 1 expected weights: {gone}"):
        load_reward({**specs["image_reward"], "checkpoint": str(path)})
    torch.save({**image_reward, "blip.itm_head.weight": torch.ones(2, 4)}, path)
    with pytest.raises(ValueError, match="holds 1 unexpected weights: blip.itm_head.weight"):
        load_reward({**specs["image_reward"], "checkpoint": str(path)})

    head = torch.load(specs["aesthetics"]["checkpoint"], weights_only=True)
    path = tmp_path / "head.pth"
    torch.save({k: v for k, v in head.items() if k != "layers.2.bias"}, path)
    with pytest.raises(ValueError, match="lacks 1 expected weights: layers.2.bias"):
        load_reward({**specs["aesthetics"], "checkpoint": str(path)})
    torch.save({**head, "extra.weight": torch.ones(1)}, path)
    with pytest.raises(ValueError, match="holds 1 unexpected weights: extra.weight"):
        load_reward({**specs["aesthetics"], "checkpoint": str(path)})


WHITE = (1 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
BLACK = -torch.tensor(CLIP_MEAN) / torch.tensor(CLIP_STD)


@pytest.mark.parametrize("size", [(440, 440), (568, 568), (640, 720), (720, 640), (300, 224)])
def test_centre_crop_never_reads_past_the_resized_image(size: tuple[int, int]) -> None:
    # Sizing the short side's partner with the other rounding made 440x440 become 224x223,
    # whose 224 crop then held a black row.
    pixels = center_crop_pixels([Image.new("RGB", size, (255, 255, 255))], 224)[0]
    assert pixels.shape == (3, 224, 224)
    torch.testing.assert_close(pixels, WHITE.view(3, 1, 1).expand(3, 224, 224))


def test_hpsv2_transform_pads_resized_images_and_rejects_what_its_model_cannot_read() -> None:
    wide = Image.new("RGB", (60, 30), (255, 255, 255))
    padded = hpsv2_pixels([wide], 20)[0]
    torch.testing.assert_close(padded[:, :5, :], BLACK.view(3, 1, 1).expand(3, 5, 20))  # bars
    torch.testing.assert_close(padded[:, 10, 10], WHITE)  # the white image in the middle
    # The float tensor is resized, so bicubic overshoot at an edge is kept (a uint8 image
    # would clip it to 0..255).
    edge = np.zeros((40, 40, 3), np.uint8)
    edge[:, 20:] = 255
    values = hpsv2_pixels([Image.fromarray(edge)], 28)[0] * torch.tensor(CLIP_STD).view(3, 1, 1)
    values = values + torch.tensor(CLIP_MEAN).view(3, 1, 1)
    assert values.max() > 1.003 and values.min() < -0.003
    with pytest.raises(ValueError, match="image 1 is 28x20: .* pads only images it resizes"):
        hpsv2_pixels([wide, Image.new("RGB", (28, 20))], 28)
    with pytest.raises(ValueError, match="image 0 is RGBA"):
        hpsv2_pixels([Image.new("RGBA", (40, 40))], 28)


def test_open_clip_tokens_clean_prompts_as_hpsv2_does() -> None:
    pairs = [
        ("salt &amp;amp; pepper", "salt & pepper"),  # HTML unescaped twice
        ("a cat\u2019s hat", "a cat's hat"),  # ftfy straightens curly quotes
        ("  A\tRED \n\n circle ", "a red circle"),  # whitespace collapsed, lower case
    ]
    odd, plain = (
        open_clip_tokens([p for p, _ in pairs], 77),
        open_clip_tokens([q for _, q in pairs], 77),
    )
    torch.testing.assert_close(odd, plain)
    long = open_clip_tokens([" ".join(["word"] * 100)], 77)[0]
    assert long.shape == (77,) and long[-1] == long.max() == OPEN_CLIP_VOCAB - 1


PARITY_PYTHON = Path(
    os.environ.get(
        "DSPO_PARITY_PYTHON",
        Path(__file__).resolve().parents[2] / "build/reward-parity/venv/bin/python",
    )
)


@pytest.mark.skipif(
    not PARITY_PYTHON.is_file(),
    reason="no originals environment (make build/reward-parity/venv/.installed)",
)
def test_parity_with_the_original_packages(tmp_path: Path) -> None:
    """`make reward-parity` at CI size: the originals' code paths with 1-2 layer towers."""
    rows = {row["reward"]: row for row in parity.run(tmp_path, str(PARITY_PYTHON), "tiny")}
    assert set(rows) == {"hpsv2", "image_reward", "laion_aesthetics", "pickscore", "clip_score"}
    for row in rows.values():
        assert row["ok"], row
        assert row["max_abs_difference"] <= parity.TOLERANCE < row["spread"] / 100
    # HPSv2's transform leaves both unreadable for its model; only they are refused.
    assert rows["hpsv2"]["both_reject"] == ["rgba_330.png", "wide_224x150.png"]


def test_a_transparent_colour_scores_as_its_plain_rgb_pixels(models: dict, tmp_path: Path) -> None:
    """transformers 5 composites a PNG ``tRNS`` or GIF transparent colour onto white even
    after ``convert("RGB")``; the originals (transformers 4.x, torchvision) read the pixels."""
    pairs = parity.write_inputs(tmp_path)
    names = ["palette_transparent_200x150.png", "rgb_transparent_180x180.png"]
    names.append("transparent_160x120.gif")
    assert {f"inputs/{name}" for name in names} <= {pair["image"] for pair in pairs}
    images = [open_image(tmp_path / name) for name in names]
    assert [image.mode for image in images] == ["P", "RGB", "P"]
    assert all("transparency" in image.info for image in images)
    plain = [Image.fromarray(np.asarray(image.convert("RGB"))) for image in images]
    opaque = [image.copy() for image in images]
    for image in opaque:
        del image.info["transparency"]
    for name, reward in models.items():
        scores = reward.score(images, PROMPTS[:3])
        np.testing.assert_array_equal(scores, reward.score(opaque, PROMPTS[:3]), err_msg=name)
        # The CLIP processors and HPSv2 convert to RGB first; ImageReward's and the aesthetic
        # head's transform (OpenAI CLIP's) resizes a palette image in its own mode, as the
        # originals do, so only the RGB image scores as its plain pixels there.
        same = [1] if name in ("aesthetics", "image_reward") else [0, 1, 2]
        plain_scores = reward.score(plain, PROMPTS[:3])
        np.testing.assert_array_equal(scores[same], plain_scores[same], err_msg=name)
    assert all("transparency" in image.info for image in images)  # the caller's images kept


def test_parity_records_any_error_a_side_raises_as_its_rejection(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A 1000x2 image made our HPSv2 raise RuntimeError, which ended the whole parity run."""
    import dspo.rewards

    class Thin:
        def score(self, images: list[Image.Image], prompts: list[str]) -> np.ndarray:
            if min(images[0].size) < 50:
                raise RuntimeError("Input and output sizes should be greater than 0")
            return np.ones(1)

    monkeypatch.setattr(dspo.rewards, "load_reward", lambda spec: Thin())
    pairs = parity.write_inputs(tmp_path / "inputs")
    scores = parity.our_scores(tmp_path, pairs, ["hpsv2"])["hpsv2"]
    small = [i for i, pair in enumerate(pairs) if "small_48x40" in pair["image"]]
    assert small and all(
        scores[i] == {"error": "RuntimeError: Input and output sizes should be greater than 0"}
        for i in small
    )
    assert sum(score == 1.0 for score in scores) == len(pairs) - len(small)
