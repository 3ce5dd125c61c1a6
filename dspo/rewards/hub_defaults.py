"""The hub models and files each reward kind loads when its config entry leaves them unset.

The loaders (one module per kind) read these, and so does :mod:`dspo.hub.fetch`, which lists
what to download while the workflow builds its DAG: this module imports nothing heavy.
"""

from __future__ import annotations

# clip_score: the CLIP model (and its processor).
CLIP_SCORE_MODEL = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
# pickscore: the model; its repo holds only the model, its processor is the CLIP it was tuned from.
PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = CLIP_SCORE_MODEL
# laion_aesthetics: the CLIP whose image embedding the aesthetic head reads.
AESTHETIC_CLIP = "openai/clip-vit-large-patch14"
# hpsv2: the repo of the checkpoints, and each version's checkpoint file.
HPSV2_REPO = "xswu/HPSv2"
HPSV2_CHECKPOINTS = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}
# bvqa: the BLIP VQA model.
BVQA_MODEL = "Salesforce/blip-vqa-base"
# image_reward: the repo of its files, the files, and BLIP's tokenizer (BERT's).
IMAGE_REWARD_REPO = "THUDM/ImageReward"
IMAGE_REWARD_CHECKPOINT = "ImageReward.pt"
IMAGE_REWARD_MED_CONFIG = "med_config.json"
IMAGE_REWARD_TOKENIZER = "bert-base-uncased"
