"""What every model family provides: the one seam between the workflow and a denoiser.

A family knows its stock diffusers pipeline and denoiser, how to load and save the denoiser
(full or LoRA, in the files that pipeline's ``from_pretrained`` / ``load_lora_weights`` read),
which text tensors its denoiser is conditioned on, how it noises a latent and what it
regresses onto, how it draws timesteps, and how it samples and edits images. The trainer,
cache, sampler and editor call these methods and nothing family-specific.

Timesteps ``t`` are in the family's own units: integer indices into the noise schedule for
DDPM families, the noise level sigma in [0, 1] for flow-matching families. Conditions are a
dict of per-row tensors named as the cache stores them (``embeddings``, ``pooled``, and for
SDXL ``time_ids``).

Prompt tensors: a family names every per-prompt tensor its denoiser reads in ``text_keys``
(``embeddings``, the cross-attention states, always among them) and returns them by those names
from ``encode_prompts``; its ``predict`` reads them from the conditions by the same names. The
cache, the batch (with prompt dropout) and the reference job carry whatever names a family
declares, stored and batched under the names :func:`empty_name` and :func:`batch_key` give.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from dspo.families.pipeline_files import component_config

# diffusers costs seconds to import, and the data steps that read a family's constants load
# no model: its classes are named in annotations only.
if TYPE_CHECKING:
    from diffusers import DiffusionPipeline, ModelMixin

Conditions = Mapping[str, torch.Tensor]

# The prompt tensor every family has: the states its denoiser cross-attends to.
CROSS_ATTENTION = "embeddings"


def empty_name(key: str) -> str:
    """The name the empty prompt's tensor (prompt dropout) is stored under beside prompt tensor
    ``key``'s in a cache: ``empty`` for ``embeddings``, ``empty_<key>`` otherwise."""
    return "empty" if key == CROSS_ATTENTION else f"empty_{key}"


def batch_key(key: str, side: str) -> str:
    """Where a training batch holds prompt tensor ``key`` of image side ``side`` (``w``, ``l``):
    ``text_<side>`` for ``embeddings``, ``<key>_<side>`` otherwise."""
    return f"{'text' if key == CROSS_ATTENTION else key}_{side}"


def check_text_keys(name: str, text_keys: Sequence[str], image_keys: Sequence[str]) -> None:
    """Raise naming family ``name`` unless its prompt tensors' names are usable: distinct,
    ``embeddings`` among them, none a name the cache or batch gives another tensor."""
    taken = set(image_keys) | {"text", "latents", "noise", "t"}
    bad = [k for k in text_keys if not k.isidentifier() or k.startswith("empty") or k in taken]
    if CROSS_ATTENTION not in text_keys or len(set(text_keys)) != len(text_keys) or bad:
        raise ValueError(
            f"model family {name!r}: text_keys {tuple(text_keys)} must be distinct names, "
            f"{CROSS_ATTENTION!r} among them, none starting with 'empty' or one of "
            f"{sorted(taken)}"
        )


def rows(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-row vector (N,) shaped to broadcast against a (N, ...) tensor."""
    return x.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


class Family(ABC):
    """A model family: subclasses set the class attributes and the abstract methods."""

    name: ClassVar[str]
    pipeline_class: ClassVar[type[DiffusionPipeline]]
    pipeline_names: ClassVar[tuple[str, ...]]  # model_index.json ``_class_name`` values
    denoiser: ClassVar[str] = "unet"  # pipeline attribute and subfolder of the denoiser
    denoiser_class: ClassVar[type[ModelMixin]]
    text_keys: ClassVar[tuple[str, ...]] = (CROSS_ATTENTION,)  # what encode_prompts returns
    image_keys: ClassVar[tuple[str, ...]] = ()  # what image_conditions returns
    default_sampler: ClassVar[str] = "ddim"  # what validation images are sampled with
    # Toy pre-training (dspo.toy.pretrain): whether the text encoder learns with the denoiser,
    # or stays as built and each caption is encoded once.
    pretrain_trains_text: ClassVar[bool] = False

    def __init__(self, scheduler_config: Mapping[str, Any], *, noise_form: bool = False) -> None:
        self.scheduler_config = dict(scheduler_config)
        # Scale errors so that each objective equals its noise-prediction form (see noise_scale).
        self.noise_form = noise_form

    @classmethod
    def setting_names(cls) -> set[str]:
        """The keyword options the family takes (``training.family_settings``)."""
        return set(inspect.signature(cls.__init__).parameters) - {"self", "scheduler_config"}

    @classmethod
    def from_pretrained(cls, path: str | Path, **settings: Any) -> Family:
        """The family of the pipeline at ``path``, with its training noise schedule.

        ``settings`` are the family's keyword options; an unknown one is an error that names
        the options this family takes.
        """
        accepted = cls.setting_names()
        unknown = sorted(set(settings) - accepted)
        if unknown:
            raise ValueError(
                f"model family {cls.name!r} has no setting(s) {unknown}; "
                f"it takes {sorted(accepted)}"
            )
        schedule = component_config(path, "scheduler", "scheduler_config.json")
        return cls(schedule, **settings)

    @classmethod
    def matches_denoiser(cls, class_name: str, config: Mapping[str, Any]) -> bool:
        """Whether a denoiser of this class and config belongs to the family."""
        return class_name == cls.denoiser_class.__name__

    @classmethod
    @abstractmethod
    def build(cls, architecture: Mapping[str, Any], words: Sequence[str], seed: int = 0):
        """A random-init pipeline of this family from an architecture mapping (toy models)."""

    # --- the denoiser -------------------------------------------------------------------
    def load_denoiser(self, path: str | Path, dtype: torch.dtype | None = None) -> ModelMixin:
        """The denoiser's weights, in ``dtype`` when given (else as stored, float32 loaded)."""
        kwargs = {"torch_dtype": dtype} if dtype is not None else {}
        return self.denoiser_class.from_pretrained(str(path), subfolder=self.denoiser, **kwargs)

    def add_lora(self, denoiser: ModelMixin, rank: int, alpha: float, targets: Sequence[str]):
        """Freeze the denoiser and add trainable LoRA adapters (peft) on ``targets``."""
        from peft import LoraConfig

        denoiser.requires_grad_(False)
        denoiser.add_adapter(
            LoraConfig(
                r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=list(targets)
            )
        )

    def save_denoiser(self, denoiser: ModelMixin, base_model: str, out_dir: Path, lora: bool):
        """A full pipeline folder, or LoRA safetensors the stock pipeline's loader reads."""
        out_dir.mkdir(parents=True, exist_ok=True)
        if lora:
            from diffusers.utils import convert_state_dict_to_diffusers
            from peft.utils import get_peft_model_state_dict

            layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(denoiser))
            self.pipeline_class.save_lora_weights(
                out_dir, **{f"{self.denoiser}_lora_layers": layers}
            )
            return
        from dspo.families.sd_pipeline import load_pipeline

        pipe = load_pipeline(base_model)
        setattr(pipe, self.denoiser, denoiser.to(torch.float32))
        pipe.save_pretrained(out_dir)

    # --- the cache ----------------------------------------------------------------------
    @abstractmethod
    def encode_prompts(
        self, pipe: DiffusionPipeline, prompts: list[str], batch_size: int = 256
    ) -> dict[str, torch.Tensor]:
        """Every text tensor the denoiser is conditioned on, keyed by ``text_keys``."""

    @torch.no_grad()
    def encode_images(self, pipe: DiffusionPipeline, pixels: torch.Tensor) -> torch.Tensor:
        """VAE latents as the denoiser sees them: (mean - shift_factor) * scaling_factor."""
        return self.encode_posterior(pipe, pixels)[0]

    def encode_posterior(
        self, pipe: DiffusionPipeline, pixels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE posterior as the denoiser sees it: its mean, shifted and scaled as
        :meth:`encode_images`, and its standard deviation, scaled. A posterior sample in
        the denoiser's space is ``mean + std * N(0, 1)``."""
        config = pipe.vae.config
        posterior = pipe.vae.encode(pixels).latent_dist
        latents = posterior.mean
        shift = getattr(config, "shift_factor", None)
        if shift is not None:
            latents = latents - shift
        return latents * config.scaling_factor, posterior.std * config.scaling_factor

    def image_conditions(self, original_size, crop, resolution: int) -> dict[str, torch.Tensor]:
        """Per-image conditions beyond the text (SDXL's time ids); none by default."""
        return {}

    # --- training -----------------------------------------------------------------------
    @abstractmethod
    def sample_timesteps(self, n: int, gen: torch.Generator, shape: Sequence[int]) -> torch.Tensor:
        """``n`` training timesteps per the family's recipe; ``shape`` is a latent's (C, H, W)."""

    @abstractmethod
    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor):
        """The noisy latent x_t."""

    @abstractmethod
    def target(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor):
        """What the denoiser regresses onto (noise, v or velocity)."""

    @abstractmethod
    def predict(self, denoiser: ModelMixin, x_t: torch.Tensor, t: torch.Tensor, cond: Conditions):
        """The denoiser's output for latents (N, C, H, W), in the target's space and shape."""

    @abstractmethod
    def noise_scale(self, t: torch.Tensor) -> torch.Tensor:
        """c(t) with eps_hat - eps = c(t) * (pred - target) for any prediction at (x_t, t)."""

    @abstractmethod
    def to_noise(self, pred: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The noise prediction equivalent to ``pred`` at (x_t, t)."""

    def objective_inputs(self, pred, ref, target, t: torch.Tensor):
        """pred, ref, target as the objective sees them: scaled by c(t) in noise form.

        Objectives use only differences of these tensors, so scaling all three by c(t) makes
        every loss equal to the one computed from noise predictions (docs/objectives.md).
        """
        if not self.noise_form:
            return pred, ref, target
        c = self.noise_scale(t)
        return tuple(None if x is None else x * rows(c, x) for x in (pred, ref, target))

    # --- sampling and editing -----------------------------------------------------------
    @abstractmethod
    def sampling_scheduler(self, pipe: DiffusionPipeline, name: str) -> None:
        """Set the pipeline's sampler by name, keeping its noise schedule."""

    def latent_channels(self, denoiser: ModelMixin) -> int:
        """Channels of the latents the denoiser takes (checks a cache against a model)."""
        return denoiser.config.in_channels

    def latent_shape(self, pipe: DiffusionPipeline, resolution: int) -> tuple[int, int, int]:
        """(C, H, W) of the initial noise for a square image of ``resolution`` pixels."""
        side = resolution // pipe.vae_scale_factor
        return (pipe.vae.config.latent_channels, side, side)

    def native_resolution(self, pipe: DiffusionPipeline) -> int:
        """The image side the denoiser was built for."""
        config = getattr(pipe, self.denoiser).config
        return int(config.sample_size) * pipe.vae_scale_factor

    def pipeline_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Initial noise (N, C, H, W) in the layout the pipeline's ``latents`` argument takes."""
        return latents

    def call_kwargs(self, pipe: DiffusionPipeline) -> dict[str, Any]:
        """Extra pipeline-call arguments the family's conditioning needs."""
        return {}

    def sample(
        self,
        pipe,
        prompts: list[str],
        latents: torch.Tensor,
        *,
        steps: int,
        guidance: float,
        resolution: int,
    ) -> np.ndarray:
        """Images (N, H, W, 3) in [0, 1] from the given initial noise."""
        denoiser = getattr(pipe, self.denoiser)
        return pipe(
            prompt=prompts,
            latents=self.pipeline_latents(latents).to(denoiser.device, denoiser.dtype),
            num_inference_steps=steps,
            guidance_scale=guidance,
            height=resolution,
            width=resolution,
            output_type="np",
            **self.call_kwargs(pipe),
        ).images

    def edit(
        self,
        pipe,
        prompts: list[str],
        images: list,
        *,
        strength: float,
        steps: int,
        guidance: float,
        resolution: int,
        generators: list[torch.Generator],
    ) -> np.ndarray:
        """SDEdit: each image noised to ``strength`` and denoised under its prompt."""
        # Imported here: the auto pipelines import every pipeline class diffusers has (about
        # a second of each job that imports this module), and only editing needs them.
        from diffusers import AutoPipelineForImage2Image

        img2img = AutoPipelineForImage2Image.from_pipe(pipe)
        kwargs = self.call_kwargs(pipe)
        # SD3 and FLUX image-to-image default to their native size, not the source's.
        if "height" in inspect.signature(img2img.__call__).parameters:
            kwargs.update(height=resolution, width=resolution)
        return img2img(
            prompt=prompts,
            image=images,
            strength=strength,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=generators,
            output_type="np",
            **kwargs,
        ).images
