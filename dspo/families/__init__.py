"""Model families behind one interface (`dspo.families.base.Family`), and their registry.

Adding a family is one module with a `Family` subclass plus one line in ``REGISTRY``.
Classes are imported on first use, so naming a family does not import every model class; the
names of their prompt tensors (``text_keys``) are checked then.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dspo.families.base import Family, check_text_keys
from dspo.families.pipeline_files import component_config, model_index

# family name -> "module:class"
REGISTRY: dict[str, str] = {
    "sd": "dspo.families.sd:SDFamily",
    "sdxl": "dspo.families.sdxl:SDXLFamily",
    "sd3": "dspo.families.sd3:SD3Family",
    "flux": "dspo.families.flux:FluxFamily",
}


def family_class(name: str) -> type[Family]:
    """The class of a registered family, its prompt tensors' names checked; KeyError lists the
    valid names."""
    if name not in REGISTRY:
        raise KeyError(f"unknown model family {name!r}; valid names: {', '.join(sorted(REGISTRY))}")
    module, attribute = REGISTRY[name].split(":")
    cls = getattr(importlib.import_module(module), attribute)
    check_text_keys(name, cls.text_keys, cls.image_keys)
    return cls


def build_pipeline(architecture: Mapping[str, Any], words: Sequence[str], seed: int = 0):
    """A random-init pipeline of ``architecture["family"]`` (default ``sd``), built by its
    family (``Family.build``): how the toy world gets its base model and how tests and
    benchmarks get models offline."""
    family = architecture.get("family", "sd")
    return family_class(family).build(architecture, words, seed=seed)


def detect_family(path: str | Path) -> str:
    """The family of a pipeline folder or hub id, from its model_index.json.

    The pipeline class names the family when it is a known one; otherwise the denoiser's
    class and config decide (a UNet with SDXL's added conditions is ``sdxl``).
    """
    index = model_index(path)
    classes = {name: family_class(name) for name in REGISTRY}
    for name, cls in classes.items():
        if index.get("_class_name") in cls.pipeline_names:
            return name
    for name, cls in classes.items():
        entry = index.get(cls.denoiser)
        if isinstance(entry, list) and len(entry) == 2:
            config = component_config(path, cls.denoiser, "config.json")
            if cls.matches_denoiser(entry[1], config):
                return name
    raise ValueError(
        f"{path}: pipeline {index.get('_class_name')!r} is not of a known model family "
        f"({', '.join(sorted(REGISTRY))})"
    )


def family_of_denoiser(denoiser) -> str:
    """The family a loaded denoiser belongs to (checks a cache against a model)."""
    for name in REGISTRY:
        if family_class(name).matches_denoiser(type(denoiser).__name__, denoiser.config):
            return name
    raise ValueError(f"denoiser {type(denoiser).__name__} is not of a known model family")


def pipeline_family(pipe: Any, **settings: Any) -> Family:
    """The family adapter of a loaded pipeline (sampling, editing), from its class."""
    for name in REGISTRY:
        cls = family_class(name)
        if type(pipe).__name__ in cls.pipeline_names:
            return cls(dict(pipe.scheduler.config), **settings)
    raise ValueError(
        f"pipeline {type(pipe).__name__} is not of a known model family "
        f"({', '.join(sorted(REGISTRY))})"
    )


def load_family(path: str | Path, **settings: Any) -> Family:
    """The family adapter of the pipeline at ``path``, with the given training settings."""
    return family_class(detect_family(path)).from_pretrained(path, **settings)
