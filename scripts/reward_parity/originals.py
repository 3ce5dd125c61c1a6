"""Score the parity inputs with the ORIGINAL reward packages (run in their own environment).

Run by ``python -m dspo.rewards.parity`` with the interpreter of the environment that
``scripts/reward_parity/make_env.sh`` builds (hpsv2 1.2.0 with its bundled open_clip,
image-reward 1.5 under transformers 4.36.2 + timm 0.6.13 + fairscale, OpenAI clip). It imports
nothing from dspo. For each reward it builds a random-initialised model with the original
package, spreads the weights (so random models give scores that differ clearly between inputs),
saves it in the layout the published checkpoint has, and scores every (image, prompt) pair of
``WORK/inputs/pairs.json`` through the package's own scoring code. Scores, or the original's
error for inputs it cannot score, go to ``WORK/original_scores.json``.

``--scale tiny`` shrinks the widths and depths (a CI-sized check of the same code paths);
``--scale full`` builds the published architectures (ViT-H-14, BLIP ViT-L, CLIP ViT-L/14).
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import types
from pathlib import Path

import torch
from PIL import Image
from torch import nn

CONTEXT, VOCAB = 77, 49408
# The token ids in the text configs of the hub's CLIP repos (openai/clip-vit-large-patch14,
# laion/CLIP-ViT-H-14-laion2B-s32B-b79K): eos 2 makes transformers pool at the highest id.
LEGACY_IDS = {"bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1}


def spread(module: nn.Module, seed: int) -> None:
    """Re-draw every parameter at a scale that keeps activations O(1) through the depth."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if param.ndim == 1 and any(n in name for n in ("ln", "norm", "LayerNorm")):
                param.copy_(1 + 0.1 * noise if name.endswith("weight") else 0.1 * noise)
            elif param.ndim >= 2:
                param.copy_(noise / (param[0].numel() ** 0.5))
            else:
                param.copy_(0.1 * noise)


# ----------------------------------------------------------------------------- HPSv2


def hpsv2_scores(work: Path, scale: str, pairs: list[dict]) -> list:
    import hpsv2.img_score as img_score
    from hpsv2.src.open_clip import create_model_and_transforms
    from hpsv2.src.open_clip.factory import add_model_config

    name = "ViT-H-14"
    if scale == "tiny":  # 16 heads in both towers, as ViT-H-14
        config = {
            "embed_dim": 32,
            "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 4},
            "text_cfg": {"context_length": CONTEXT, "vocab_size": VOCAB, "width": 64},
        }
        config["vision_cfg"]["patch_size"] = 14
        config["text_cfg"] |= {"heads": 16, "layers": 2}
        name = "ViT-tiny-parity"
        path = work / "models" / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(config))
        add_model_config(path)
    # hpsv2's initialize_model() arguments, without the base weights it would download.
    model, _, preprocess_val = create_model_and_transforms(
        name,
        None,
        precision="amp",
        device="cpu",
        jit=False,
        force_quick_gelu=False,
        force_custom_text=False,
        force_patch_dropout=False,
        force_image_size=None,
        pretrained_image=False,
        image_mean=None,
        image_std=None,
        light_augmentation=True,
        aug_cfg={},
        output_dict=True,
        with_score_predictor=False,
        with_region_predictor=False,
    )
    spread(model, 1)
    checkpoint = work / "models" / "hpsv2" / "HPS_v2_compressed.pt"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict()}, checkpoint)
    # img_score.score() builds its model once into model_dict; giving it this one makes it
    # load the checkpoint and score exactly as it does for the published weights.
    img_score.model_dict.update(model=model, preprocess_val=preprocess_val)
    return [
        _guarded(
            lambda p=p: float(
                img_score.score(str(work / p["image"]), p["prompt"], str(checkpoint))[0]
            )
        )
        for p in pairs
    ]


# ----------------------------------------------------------------------------- ImageReward


def _bpe_merges() -> list[str]:
    """The merges of CLIP's BPE file (OpenAI clip's copy), as its tokenizers read them."""
    import clip.simple_tokenizer as simple

    with gzip.open(simple.default_bpe()) as file:
        return file.read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]


def bert_vocab(path: Path) -> None:
    """A 30522-entry WordPiece vocabulary laid out as bert-base-uncased's (no hub here).

    Words and word pieces come from CLIP's BPE merges, so prompts split into several pieces.
    """

    specials = ["[PAD]", *[f"[unused{i}]" for i in range(99)], "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = [chr(c) for c in range(33, 127)] + list("àáâäçèéêëíîïñóôöúûüß’“”")
    merges = _bpe_merges()[:20000]
    words, pieces = [], []
    for merge in merges:
        token = "".join(merge.split())
        bare = token.removesuffix("</w>")
        if bare.isalpha() and bare.isascii():
            (words if token.endswith("</w>") else pieces).append(bare)
    vocab = list(dict.fromkeys(specials + chars + [f"##{c}" for c in chars] + words))
    vocab += [f"##{p}" for p in dict.fromkeys(pieces) if f"##{p}" not in vocab]
    vocab = vocab[:30522]
    vocab += [f"[unused{i}]" for i in range(99, 99 + 30522 - len(vocab))]
    path.write_text("\n".join(vocab) + "\n")


def image_reward_scores(work: Path, scale: str, pairs: list[dict]) -> list:
    from transformers import BertTokenizer

    root = work / "models" / "image_reward"
    root.mkdir(parents=True, exist_ok=True)
    bert_vocab(root / "vocab.txt")
    BertTokenizer(vocab_file=str(root / "vocab.txt")).save_pretrained(root / "bert-base-uncased")
    # BLIP's init_tokenizer() asks the hub for bert-base-uncased; answer with the local copy.
    plain = BertTokenizer.from_pretrained.__func__

    def local_bert(cls, name, *args, **kwargs):
        name = str(root / "bert-base-uncased") if name == "bert-base-uncased" else name
        return plain(cls, name, *args, **kwargs)

    BertTokenizer.from_pretrained = classmethod(local_bert)
    import ImageReward as RM
    from ImageReward.ImageReward import MLP, ImageReward
    from ImageReward.models.BLIP.vit import VisionTransformer

    med = {
        "architectures": ["BertModel"],
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": 768,
        "initializer_range": 0.02,
        "intermediate_size": 3072,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": 512,
        "model_type": "bert",
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
        "pad_token_id": 0,
        "type_vocab_size": 2,
        "vocab_size": 30524,
        "encoder_width": 768,
        "add_cross_attention": True,
    }
    if scale == "tiny":
        med |= {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2}
        med |= {"num_attention_heads": 4, "max_position_embeddings": 40}
    (root / "med_config.json").write_text(json.dumps(med, indent=2))
    checkpoint = root / "ImageReward.pt"
    if scale == "tiny":
        # RM.load builds BLIP's ViT-L; the tiny check swaps in the same ViT class with one
        # block (ViT-L's width, which the text model's cross-attention was built to read).
        model = ImageReward(med_config=str(root / "med_config.json"), device="cpu")
        model.blip.visual_encoder = VisionTransformer(
            img_size=224, patch_size=16, embed_dim=1024, depth=1, num_heads=16
        )
        model.mlp = MLP(med["hidden_size"])
        spread(model, 2)
        torch.save(model.state_dict(), checkpoint)
        model.load_state_dict(torch.load(checkpoint, map_location="cpu"), strict=False)
        model.eval()
    else:
        built = ImageReward(med_config=str(root / "med_config.json"), device="cpu")
        spread(built, 2)
        torch.save(built.state_dict(), checkpoint)
        del built
        model = RM.load(str(checkpoint), device="cpu", med_config=str(root / "med_config.json"))
    with torch.no_grad():
        return [
            _guarded(lambda p=p: float(model.score(p["prompt"], Image.open(work / p["image"]))))
            for p in pairs
        ]


# ----------------------------------------------------------------------------- aesthetics


def aesthetic_scores(work: Path, scale: str, pairs: list[dict]) -> list:
    import clip
    from clip.model import CLIP
    from ImageReward.models.AestheticScore import MLP, AestheticScore
    from transformers import CLIPConfig, CLIPModel
    from transformers.models.clip import convert_clip_original_pytorch_to_hf as convert

    root = work / "models" / "aesthetics"
    root.mkdir(parents=True, exist_ok=True)
    vision = {"vision_layers": 24, "vision_width": 1024, "vision_patch_size": 14}
    text = {"transformer_width": 768, "transformer_heads": 12, "transformer_layers": 12}
    if scale == "tiny":
        vision = {"vision_layers": 2, "vision_width": 64, "vision_patch_size": 14}
        # clip's build_model reads heads as width // 64, so tiny towers get one head.
        text = {"transformer_width": 64, "transformer_heads": 1, "transformer_layers": 2}
    sizes = dict(embed_dim=768, image_resolution=224, context_length=CONTEXT, vocab_size=VOCAB)
    openai = CLIP(**sizes, **vision, **text)
    spread(openai, 3)
    # The published ViT-L-14.pt is a TorchScript archive of float16 weights: round as it
    # does, and trace (clip.load reads the weights of the archive).
    with torch.no_grad():
        for param in openai.parameters():
            param.copy_(param.half().float())
    example = (torch.zeros(1, 3, 224, 224), torch.zeros(1, CONTEXT, dtype=torch.long))
    torch.jit.trace(openai.eval(), example).save(str(root / "ViT-L-14.pt"))
    config = CLIPConfig(
        projection_dim=768,
        text_config={
            "hidden_size": text["transformer_width"],
            "intermediate_size": 4 * text["transformer_width"],
            "num_attention_heads": text["transformer_heads"],
            "num_hidden_layers": text["transformer_layers"],
            **LEGACY_IDS,
        },
        vision_config={
            "hidden_size": vision["vision_width"],
            "intermediate_size": 4 * vision["vision_width"],
            "num_attention_heads": vision["vision_width"] // 64,
            "num_hidden_layers": vision["vision_layers"],
            "patch_size": 14,
            "image_size": 224,
        },
    )
    # transformers' own converter (convert_clip_original_pytorch_to_hf.py) made
    # openai/clip-vit-large-patch14 from ViT-L-14.pt; its copy functions are used as they are.
    pt_model, _ = clip.load(str(root / "ViT-L-14.pt"), device="cpu", jit=False)
    hf_model = CLIPModel(config).eval()
    convert.copy_text_model_and_projection(hf_model, pt_model)
    convert.copy_vison_model_and_projection(hf_model, pt_model)
    hf_model.logit_scale = pt_model.logit_scale
    # The copies are views (q/k/v chunks of one tensor, transposed projections), which
    # safetensors refuses or deduplicates away: give each weight its own storage.
    with torch.no_grad():
        for param in hf_model.parameters():
            param.data = param.data.clone(memory_format=torch.contiguous_format)
    hf_model.save_pretrained(root / "clip-vit-large-patch14")

    scorer = AestheticScore.__new__(AestheticScore)  # its __init__ downloads ViT-L/14
    nn.Module.__init__(scorer)
    scorer.device = "cpu"
    scorer.clip_model, scorer.preprocess = clip.load(
        str(root / "ViT-L-14.pt"), device="cpu", jit=False
    )
    scorer.clip_model.float()
    head = MLP(768)
    spread(head, 4)
    torch.save(head.state_dict(), root / "sac+logos+ava1-l14-linearMSE.pth")
    scorer.mlp = MLP(768)
    scorer.mlp.load_state_dict(torch.load(root / "sac+logos+ava1-l14-linearMSE.pth"))
    scorer.eval()
    with torch.no_grad():
        return [
            _guarded(lambda p=p: float(scorer.score(p["prompt"], str(work / p["image"]))))
            for p in pairs
        ]


# ----------------------------------------------------------------------------- PickScore, CLIP


def clip_tokenizer_files(folder: Path) -> None:
    """vocab.json and merges.txt from CLIP's BPE file, as the hub CLIP repos hold them."""
    import clip.simple_tokenizer as simple

    tokenizer = simple.SimpleTokenizer()
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {
        k.replace("<start_of_text>", "<|startoftext|>").replace("<end_of_text>", "<|endoftext|>"): v
        for k, v in tokenizer.encoder.items()
    }
    (folder / "vocab.json").write_text(json.dumps(vocab))
    merges = _bpe_merges()
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


def hub_clip_scores(work: Path, scale: str, pairs: list[dict]) -> dict[str, list]:
    """PickScore's published scoring code (its README) on a laion ViT-H-14-shaped CLIPModel."""
    from transformers import (
        AutoModel,
        AutoProcessor,
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
        CLIPTokenizerFast,
    )

    root = work / "models" / "pickscore"
    text = {"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16}
    text |= {"num_hidden_layers": 24, "hidden_act": "gelu", **LEGACY_IDS}
    vision = {"hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 16}
    vision |= {"num_hidden_layers": 32, "patch_size": 14, "image_size": 224, "hidden_act": "gelu"}
    if scale == "tiny":
        text |= {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
        }
        vision |= {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
        }
    model = CLIPModel(
        CLIPConfig(
            text_config=text, vision_config=vision, projection_dim=1024 if scale == "full" else 32
        )
    )
    spread(model, 5)
    with torch.no_grad():
        model.logit_scale.fill_(4.6052)  # log(100), as trained CLIP models end
    model.save_pretrained(root / "model")
    del model
    clip_tokenizer_files(root / "bpe")
    slow = CLIPTokenizer(str(root / "bpe" / "vocab.json"), str(root / "bpe" / "merges.txt"))
    slow.save_pretrained(root / "bpe")
    fast = CLIPTokenizerFast.from_pretrained(root / "bpe")
    # laion/CLIP-ViT-H-14-laion2B-s32B-b79K's preprocessor_config.json values.
    images = CLIPImageProcessor(
        size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}, resample=3
    )
    CLIPProcessor(image_processor=images, tokenizer=fast).save_pretrained(root / "processor")

    processor = AutoProcessor.from_pretrained(root / "processor")
    model = AutoModel.from_pretrained(root / "model").eval()
    pick, cos = [], []
    for p in pairs:

        def one(p=p):
            image = Image.open(work / p["image"])
            with torch.no_grad():
                image_inputs = processor(
                    images=[image],
                    padding=True,
                    truncation=True,
                    max_length=77,
                    return_tensors="pt",
                )
                text_inputs = processor(
                    text=p["prompt"],
                    padding=True,
                    truncation=True,
                    max_length=77,
                    return_tensors="pt",
                )
                image_embs = model.get_image_features(**image_inputs)
                image_embs = image_embs / torch.norm(image_embs, dim=-1, keepdim=True)
                text_embs = model.get_text_features(**text_inputs)
                text_embs = text_embs / torch.norm(text_embs, dim=-1, keepdim=True)
                cosine = (text_embs @ image_embs.T)[0, 0]
            return float(model.logit_scale.exp() * cosine), float(cosine)

        result = _guarded(one)
        pick.append(result if isinstance(result, dict) else result[0])
        cos.append(result if isinstance(result, dict) else result[1])
    return {"pickscore": pick, "clip_score": cos}


# ----------------------------------------------------------------------------- main


def _guarded(fn):
    """The score, or ``{"error": ...}`` when the original cannot score the input."""
    try:
        return fn()
    except Exception as error:  # the originals raise many types; each is recorded
        return {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--scale", choices=["tiny", "full"], default="full")
    parser.add_argument(
        "--rewards", nargs="*", default=["hpsv2", "image_reward", "aesthetics", "hub_clip"]
    )
    args = parser.parse_args()
    # ImageReward/__init__ imports its ReFL training script (diffusers, datasets,
    # accelerate); scoring never uses it.
    sys.modules["ImageReward.ReFL"] = types.ModuleType("ImageReward.ReFL")
    torch.manual_seed(0)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    pairs = json.loads((args.work / "inputs" / "pairs.json").read_text())
    out = args.work / "original_scores.json"
    scores = json.loads(out.read_text()) if out.is_file() else {}
    for reward in args.rewards:
        print(f"originals: {reward} ({args.scale})", flush=True)
        if reward == "hpsv2":
            scores["hpsv2"] = hpsv2_scores(args.work, args.scale, pairs)
        elif reward == "image_reward":
            scores["image_reward"] = image_reward_scores(args.work, args.scale, pairs)
        elif reward == "aesthetics":
            scores["laion_aesthetics"] = aesthetic_scores(args.work, args.scale, pairs)
        elif reward == "hub_clip":
            scores |= hub_clip_scores(args.work, args.scale, pairs)
        out.write_text(json.dumps(scores, indent=1))
    import torchvision
    import transformers

    versions = {"torch": torch.__version__, "torchvision": torchvision.__version__}
    versions |= {"transformers": transformers.__version__}
    (args.work / "original_versions.json").write_text(json.dumps(versions))


if __name__ == "__main__":
    main()
