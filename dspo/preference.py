"""One step's data and loss: which pairs, which noise and timesteps, policy and reference.

Batches, noise and timesteps are pure functions of (seed, step, place in the step), so a
resumed run continues exactly where it left off and the same effective batch trains alike on
one process or several (see :mod:`dspo.train` for the loop).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import UNet2DConditionModel

from dspo.data.cache import PairCache
from dspo.objectives import Objective

# SDXL's UNet takes pooled text embeddings and time ids; SD's takes nothing more.
Added = dict[str, torch.Tensor] | None


def _generator(seed: int, *parts: int) -> torch.Generator:
    """A generator whose state depends only on the run seed and the position in the run."""
    mixed = seed
    for part in parts:
        mixed = (mixed * 1_000_003 + part) % (2**63 - 1)
    return torch.Generator().manual_seed(mixed)


def step_rows(n: int, pairs_per_step: int, seed: int, step: int) -> torch.Tensor:
    """Rows of the cache for one optimiser step: epoch-wise shuffles, no repeats within an epoch.

    The step's rows depend only on the effective batch, never on how it is split into
    processes and micro-steps, so 1 process x 2 micro-steps and 2 processes x 1 micro-step
    train on the same pairs.
    """
    per_epoch = max(1, n // pairs_per_step)
    epoch, position = divmod(step, per_epoch)
    order = torch.randperm(n, generator=_generator(seed, 1, epoch))
    if n < pairs_per_step:
        return order[torch.arange(pairs_per_step) % n]
    return order[position * pairs_per_step : (position + 1) * pairs_per_step]


def micro_batch_start(micro: int, processes: int, rank: int, local: int) -> int:
    """Where one process's micro-batch starts within the step's rows."""
    return (micro * processes + rank) * local


class PreferenceModel(torch.nn.Module):
    """The policy UNet and, when the objective needs it, its frozen reference.

    With LoRA the reference is the same UNet with its adapters disabled, so no second copy of
    the weights is held; otherwise it is a frozen copy of the starting weights, stored in
    ``reference_dtype`` (the mixed-precision dtype on a GPU: it only runs forward passes, as
    the public scripts keep it, so it need not cost fp32 memory).

    The copy is deliberately not a registered submodule: it stays out of ``state_dict()``, so
    checkpoints hold the policy only (a full fine-tuning checkpoint was twice the UNet, plus
    the optimiser state). A resumed run rebuilds it from the base model, as the copy is made
    before the checkpoint's weights are loaded into the policy. ``_apply`` still moves it with
    the module (``.to(device)``), and ``train()`` leaves it in eval mode.
    """

    def __init__(
        self,
        unet: UNet2DConditionModel,
        needs_reference: bool,
        lora: bool,
        reference_dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.unet = unet
        self.lora = lora
        # A tuple hides the module from nn.Module's registration (and so from state_dict).
        self._frozen: tuple[UNet2DConditionModel, ...] = ()
        if needs_reference and not lora:
            reference = copy.deepcopy(unet).requires_grad_(False).eval()
            self._frozen = (reference.to(reference_dtype),)

    @property
    def reference(self) -> UNet2DConditionModel | None:
        """The frozen copy of the starting weights (full fine-tuning), else None."""
        return self._frozen[0] if self._frozen else None

    def use_reference(self, unet: UNet2DConditionModel) -> None:
        """Hold ``unet`` as the frozen reference (outside ``state_dict``, as the copy is).

        Assigning ``model.reference = unet`` would not do: nn.Module.__setattr__ registers a
        module value as a submodule without calling the property, which then hides it, and
        ``ref`` would silently use the disabled adapters instead.
        """
        self._frozen = (unet.requires_grad_(False).eval(),)

    def __setattr__(self, name: str, value: object) -> None:
        if name == "reference":
            raise AttributeError("set the reference with use_reference(unet)")
        super().__setattr__(name, value)

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        if self._frozen:
            self._frozen[0]._apply(fn, recurse)
        return self

    def policy(
        self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, added: Added = None
    ) -> torch.Tensor:
        return self.unet(x, t, text, added_cond_kwargs=added).sample

    @torch.no_grad()
    def ref(
        self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, added: Added = None
    ) -> torch.Tensor:
        if self.reference is not None:
            return self.reference(x, t, text, added_cond_kwargs=added).sample
        self.unet.disable_adapters()
        try:
            return self.unet(x, t, text, added_cond_kwargs=added).sample
        finally:
            self.unet.enable_adapters()

    def forward(self, batch: Mapping[str, torch.Tensor], objective: Objective, hparams, scheduler):
        return preference_loss(self, batch, objective, hparams, scheduler)


def _added(batch: Mapping[str, torch.Tensor], pooled: list[str], time_ids: list[str]) -> Added:
    """SDXL's added conditions for images stacked in this order; None for SD batches."""
    if "pooled_w" not in batch:
        return None
    return {
        "text_embeds": torch.cat([batch[k] for k in pooled]),
        "time_ids": torch.cat([batch[k] for k in time_ids]),
    }


@dataclass(frozen=True)
class NoisedInputs:
    """What the denoisers see for one micro-batch, and what they regress onto.

    Paired objectives get 2B rows (preferred first) sharing noise and timestep per pair;
    preferred-only objectives the B preferred rows. ``target`` is None where the reference
    makes it (DDSPO).
    """

    x: torch.Tensor
    t: torch.Tensor
    text: torch.Tensor
    added: Added
    target: torch.Tensor | None


def noised_inputs(batch: Mapping[str, Any], objective: Objective, scheduler) -> NoisedInputs:
    """Noise a batch of pairs as the objective needs it (also what dspo.reference replays).

    SDXL batches carry pooled text embeddings and per-image time ids (``pooled_w/l``,
    ``time_ids_w/l``); each image is conditioned on its own original size and crop.
    """
    lat_w, lat_l, noise, t = batch["latents_w"], batch["latents_l"], batch["noise"], batch["t"]
    text = batch["text_w"]

    def target_of(latents: torch.Tensor) -> torch.Tensor:
        if scheduler.config.prediction_type == "v_prediction":
            return scheduler.get_velocity(latents, noise, t)
        return noise

    x_w = scheduler.add_noise(lat_w, noise, t)
    if objective.preferred_only:
        added = _added(batch, ["pooled_w"], ["time_ids_w"])
        return NoisedInputs(x_w, t, text, added, target_of(lat_w))
    x = torch.cat([x_w, scheduler.add_noise(lat_l, noise, t)])
    t2, text2 = torch.cat([t, t]), torch.cat([text, text])
    added = _added(batch, ["pooled_w", "pooled_w"], ["time_ids_w", "time_ids_l"])
    target = None
    if not objective.reference_target:
        target = torch.cat([target_of(lat_w), target_of(lat_l)])
    return NoisedInputs(x, t2, text2, added, target)


def preference_loss(model: PreferenceModel, batch, objective: Objective, hparams, scheduler):
    """Noise a batch of pairs, run policy/reference, and evaluate the objective.

    ``batch["reference"]``, when present, is the reference's output computed before training
    (:class:`ReferenceStats`, from dspo.reference): no reference forward runs then.
    """
    inputs = noised_inputs(batch, objective, scheduler)
    pred = model.policy(inputs.x, inputs.t, inputs.text, inputs.added)
    ref = batch.get("reference")
    if ref is None and objective.needs_reference:
        ref = model.ref(inputs.x, inputs.t, inputs.text, inputs.added)
    target = inputs.target
    if objective.reference_target:
        # DDSPO: the reference's own score, given the original prompt for the preferred
        # image and the degraded prompt for the rejected one, is the regression target.
        t = batch["t"]
        added_l = _added(batch, ["pooled_l"], ["time_ids_l"])
        target = torch.cat(
            [ref[: len(t)], model.ref(inputs.x[len(t) :], t, batch["text_l"], added_l)]
        )
    return objective.fn(pred, ref, target, **hparams)


def make_batch(
    cache: PairCache, rows: torch.Tensor, cfg: Mapping[str, Any], gen: torch.Generator, scheduler
) -> dict[str, torch.Tensor]:
    """Latents and text embeddings of the rows, with prompt dropout, noise and timesteps.

    For SDXL caches also pooled text embeddings and time ids: (original height, width, crop
    top, left, target height, width) of each image, as SDXL was trained with.
    """
    drop = torch.rand(len(rows), generator=gen) < cfg["prompt_dropout"]
    batch = {}
    for side in ("w", "l"):
        text = cache.embeddings[getattr(cache, f"text_{side}")[rows]].float()
        text[drop] = cache.empty.float()
        batch[f"text_{side}"] = text
        batch[f"latents_{side}"] = getattr(cache, f"latents_{side}")[rows].float()
        if cache.pooled is not None:
            pooled = cache.pooled[getattr(cache, f"text_{side}")[rows]].float()
            pooled[drop] = cache.empty_pooled.float()
            target = torch.tensor([cache.manifest["resolution"]] * 2).expand(len(rows), 2)
            batch[f"pooled_{side}"] = pooled
            batch[f"time_ids_{side}"] = torch.cat(
                [
                    getattr(cache, f"original_size_{side}")[rows],
                    getattr(cache, f"crop_{side}")[rows],
                    target,
                ],
                dim=1,
            ).float()
    batch["noise"] = torch.randn(batch["latents_w"].shape, generator=gen)
    batch["t"] = torch.randint(scheduler.config.num_train_timesteps, (len(rows),), generator=gen)
    return batch
