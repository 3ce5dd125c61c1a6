"""One step's data and loss: which pairs, which noise and timesteps, policy and reference.

Batches, noise and timesteps are pure functions of (seed, step, place in the step), so a
resumed run continues exactly where it left off and the same effective batch trains alike on
one process or several (see :mod:`dspo.training.train` for the loop).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from dspo.core.seeding import seeded_generator
from dspo.data.cache_load import PairCache
from dspo.families.base import Conditions, Family, batch_key
from dspo.objectives import Objective
from dspo.objectives.terms import ReferenceStats
from dspo.training.settings import TrainSettings

if TYPE_CHECKING:
    from diffusers import ModelMixin

# The run's random streams (the first position of :func:`~dspo.core.seeding.seeded_generator`
# after the seed): each epoch's shuffle of the rows, and each micro-batch's prompt dropout,
# images, noise and timesteps.
ROWS_STREAM = 1
MICRO_BATCH_STREAM = 2


def step_rows(n: int, pairs_per_step: int, seed: int, step: int) -> torch.Tensor:
    """Rows of the cache for one optimiser step: epoch-wise shuffles, no repeats within an epoch.

    The step's rows depend only on the effective batch, never on how it is split into
    processes and micro-steps, so 1 process x 2 micro-steps and 2 processes x 1 micro-step
    train on the same pairs.
    """
    per_epoch = max(1, n // pairs_per_step)
    epoch, position = divmod(step, per_epoch)
    order = torch.randperm(n, generator=seeded_generator(seed, ROWS_STREAM, epoch))
    if n < pairs_per_step:
        return order[torch.arange(pairs_per_step) % n]
    return order[position * pairs_per_step : (position + 1) * pairs_per_step]


def micro_batch_start(micro: int, processes: int, rank: int, local: int) -> int:
    """Where one process's micro-batch starts within the step's rows."""
    return (micro * processes + rank) * local


def micro_batch(
    cache: PairCache,
    rows: torch.Tensor,
    step: int,
    start: int,
    settings: TrainSettings,
    family: Family,
    shared_noise: bool,
) -> dict[str, torch.Tensor]:
    """The micro-batch of ``settings.local_pairs`` pairs from position ``start`` of ``rows``.

    ``rows`` are step ``step``'s (:func:`step_rows`). Its prompt dropout, images, noise and
    timesteps follow the micro-batch's place in the step, so they are the same however the
    step is split across processes, and the reference job (dspo.training.reference), which
    assembles the trainer's micro-batches here too, sees exactly the trainer's batches.
    """
    gen = seeded_generator(settings.seed, MICRO_BATCH_STREAM, step, start)
    chosen = rows[start : start + settings.local_pairs]
    return make_batch(cache, chosen, settings.prompt_dropout, gen, family, shared_noise)


class PreferenceModel(torch.nn.Module):
    """The policy denoiser and, when the objective needs it, its frozen reference.

    With LoRA the reference is the same denoiser with its adapters disabled, so no second copy
    of the weights is held; otherwise it is a frozen copy of the starting weights, stored in
    ``reference_dtype`` (the mixed-precision dtype on a GPU: it only runs forward passes, as
    the public scripts keep it, so it need not cost fp32 memory). The model family
    (:mod:`dspo.families`) runs both: this class and the loss know no model class.

    The copy is deliberately not a registered submodule: it stays out of ``state_dict()``, so
    checkpoints hold the policy only (a full fine-tuning checkpoint was twice the denoiser,
    plus the optimiser state). A resumed run rebuilds it from the base model, as the copy is
    made before the checkpoint's weights are loaded into the policy. ``_apply`` still moves it
    with the module (``.to(device)``), and ``train()`` leaves it in eval mode.
    """

    def __init__(
        self,
        denoiser: ModelMixin,
        family: Family,
        needs_reference: bool,
        lora: bool,
        reference_dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.lora = lora
        # A tuple keeps the family (not a module) and the copy out of nn.Module's registration.
        self._family: tuple[Family] = (family,)
        self._frozen: tuple[ModelMixin, ...] = ()
        if needs_reference and not lora:
            reference = copy.deepcopy(denoiser).requires_grad_(False).eval()
            self._frozen = (reference.to(reference_dtype),)

    @property
    def family(self) -> Family:
        return self._family[0]

    @property
    def reference(self) -> ModelMixin | None:
        """The frozen copy of the starting weights (full fine-tuning), else None."""
        return self._frozen[0] if self._frozen else None

    def use_reference(self, denoiser: ModelMixin) -> None:
        """Hold ``denoiser`` as the frozen reference (outside ``state_dict``, as the copy is).

        Assigning ``model.reference = denoiser`` would not do: nn.Module.__setattr__ registers
        a module value as a submodule without calling the property, which then hides it, and
        ``ref`` would silently use the disabled adapters instead.
        """
        self._frozen = (denoiser.requires_grad_(False).eval(),)

    def __setattr__(self, name: str, value: object) -> None:
        if name == "reference":
            raise AttributeError("set the reference with use_reference(denoiser)")
        super().__setattr__(name, value)

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        if self._frozen:
            self._frozen[0]._apply(fn, recurse)
        return self

    def policy(self, x: torch.Tensor, t: torch.Tensor, cond: Conditions) -> torch.Tensor:
        return self.family.predict(self.denoiser, x, t, cond)

    @torch.no_grad()
    def ref(self, x: torch.Tensor, t: torch.Tensor, cond: Conditions) -> torch.Tensor:
        if self.reference is not None:
            return self.family.predict(self.reference, x, t, cond)
        self.denoiser.disable_adapters()
        try:
            return self.family.predict(self.denoiser, x, t, cond)
        finally:
            self.denoiser.enable_adapters()

    def forward(self, batch: Mapping[str, torch.Tensor], objective: Objective, hparams):
        return preference_loss(self, batch, objective, hparams)


def conditions(
    batch: Mapping[str, torch.Tensor],
    family: Family,
    images: Sequence[str],
    prompts: Sequence[str],
) -> dict[str, torch.Tensor]:
    """The conditions of rows stacked image side by image side, each with its prompt's side.

    A batch holds, per image side (w, l), each of the family's prompt tensors (``text_keys``,
    at `batch_key`) and the image's own conditions (``image_keys``, e.g. SDXL's time ids, at
    ``<name>_<side>``). A pair's two images share the preferred prompt (``images=("w", "l"),
    prompts=("w", "w")``) but keep their own image conditions (each image's original size and
    crop).
    """
    cond = {}
    for name in family.text_keys:
        cond[name] = torch.cat([batch[batch_key(name, side)] for side in prompts])
    for name in family.image_keys:
        cond[name] = torch.cat([batch[f"{name}_{side}"] for side in images])
    return cond


@dataclass(frozen=True)
class NoisedInputs:
    """What the denoisers see for one micro-batch, and what they regress onto.

    Paired objectives get 2B rows (preferred first) sharing noise and timestep per pair;
    preferred-only objectives the B preferred rows. ``target`` is None where the reference
    makes it (DDSPO).
    """

    x: torch.Tensor
    t: torch.Tensor
    cond: dict[str, torch.Tensor]
    target: torch.Tensor | None


def noised_inputs(batch: Mapping[str, Any], objective: Objective, family: Family) -> NoisedInputs:
    """Noise a batch of pairs as the objective needs it (also what dspo.training.reference replays).

    Each image is conditioned on the preferred prompt and on its own image conditions.
    """
    lat_w, lat_l, noise, t = batch["latents_w"], batch["latents_l"], batch["noise"], batch["t"]
    x_w = family.add_noise(lat_w, noise, t)
    if objective.preferred_only:
        cond = conditions(batch, family, ("w",), ("w",))
        return NoisedInputs(x_w, t, cond, family.target(lat_w, noise, t))
    # The rejected image's own draws where the objective does not share them.
    noise_l, t_l = batch.get("noise_l", noise), batch.get("t_l", t)
    x = torch.cat([x_w, family.add_noise(lat_l, noise_l, t_l)])
    cond = conditions(batch, family, ("w", "l"), ("w", "w"))
    target = None
    if not objective.reference_target:
        target = torch.cat([family.target(lat_w, noise, t), family.target(lat_l, noise_l, t_l)])
    return NoisedInputs(x, torch.cat([t, t_l]), cond, target)


def preference_loss(model: PreferenceModel, batch, objective: Objective, hparams):
    """Noise a batch of pairs, run policy/reference, and evaluate the objective.

    ``batch["reference"]``, when present, is the reference's output computed before training
    (:class:`ReferenceStats`, from dspo.training.reference): no reference forward runs then. Errors
    are taken in the family's target space, or in noise space when the family is set to
    ``noise_form`` (docs/objectives.md).
    """
    family = model.family
    inputs = noised_inputs(batch, objective, family)
    pred = model.policy(inputs.x, inputs.t, inputs.cond)
    ref = batch.get("reference")
    if ref is None and objective.needs_reference:
        ref = model.ref(inputs.x, inputs.t, inputs.cond)
    target = inputs.target
    if objective.reference_target:
        # DDSPO: the reference's own score, given the original prompt for the preferred
        # image and the degraded prompt for the rejected one, is the regression target.
        n = len(batch["t"])
        rejected = conditions(batch, family, ("l",), ("l",))
        target = torch.cat([ref[:n], model.ref(inputs.x[n:], inputs.t[n:], rejected)])
    if isinstance(ref, ReferenceStats):
        # A precomputed reference was stored in the form the loss takes (dspo.training.reference).
        pred, _, target = family.objective_inputs(pred, None, target, inputs.t)
    else:
        pred, ref, target = family.objective_inputs(pred, ref, target, inputs.t)
    return objective.fn(pred, ref, target, **hparams)


def visit_latents(
    cache: PairCache, rows: torch.Tensor, side: str, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One side's latents at this visit of ``rows``, and their crop corners.

    A fixed cache gives its stored latents and draws nothing. A ``per_visit`` cache
    (`dspo.data.cache`) redraws what the upstream recipe redraws at every visit: with
    mirrors, each image's orientation (probability 1/2, drawn first), then a posterior sample
    ``mean + std * N(0, 1)``; both from ``gen``, so a visit stays a pure function of the seed,
    step and place in the step.
    """
    latents = getattr(cache, f"latents_{side}")[rows].float()
    crop = getattr(cache, f"crop_{side}")[rows]
    if not cache.per_visit:
        return latents, crop
    std = getattr(cache, f"std_{side}")[rows].float()
    mirror = getattr(cache, f"mirror_{side}")
    if mirror is not None:
        flip = torch.rand(len(rows), generator=gen) < 0.5
        mirrored = torch.as_tensor(rows)[flip]
        latents[flip] = mirror[mirrored].float()
        std[flip] = getattr(cache, f"mirror_std_{side}")[mirrored].float()
        crop = crop.clone()
        crop[flip] = getattr(cache, f"crop_mirror_{side}")[mirrored]
    return latents + std * torch.randn(latents.shape, generator=gen), crop


def make_batch(
    cache: PairCache,
    rows: torch.Tensor,
    prompt_dropout: float,
    gen: torch.Generator,
    family: Family,
    shared_noise: bool = True,
) -> dict[str, torch.Tensor]:
    """Latents and prompt tensors of the rows, with prompt dropout, noise and timesteps.

    Each row's prompts are replaced by the empty prompt with probability ``prompt_dropout``,
    in every prompt tensor the cache holds (its family's ``text_keys``: ``embeddings``, and
    ``pooled`` for SDXL, SD3 and FLUX), each at `batch_key`; a ``per_visit`` cache's images are
    drawn for this visit (:func:`visit_latents`).

    The family's image conditions: for SDXL the time ids (original height, width, crop top,
    left, target height, width) of each image, as SDXL was trained with. Timesteps are drawn
    as the family's training recipe draws them; without ``shared_noise`` the rejected images
    get their own noise and timesteps (``noise_l``, ``t_l``), drawn after the shared ones so
    that every other draw stays the same.
    """
    drop = torch.rand(len(rows), generator=gen) < prompt_dropout
    batch: dict[str, torch.Tensor] = {}
    for side in ("w", "l"):
        text_rows = getattr(cache, f"text_{side}")[rows]
        for name, tensor in cache.prompt_tensors.items():
            prompt = tensor[text_rows].float()
            prompt[drop] = cache.empty_prompt[name].float()
            batch[batch_key(name, side)] = prompt
        latents, crop = visit_latents(cache, rows, side, gen)
        batch[f"latents_{side}"] = latents
        image = family.image_conditions(
            getattr(cache, f"original_size_{side}")[rows], crop, cache.manifest["resolution"]
        )
        for name, value in image.items():
            batch[f"{name}_{side}"] = value
    batch["noise"] = torch.randn(batch["latents_w"].shape, generator=gen)
    shape = batch["latents_w"].shape
    batch["t"] = family.sample_timesteps(len(rows), gen, shape[1:])
    if not shared_noise:
        batch["noise_l"] = torch.randn(shape, generator=gen)
        batch["t_l"] = family.sample_timesteps(len(rows), gen, shape[1:])
    return batch
