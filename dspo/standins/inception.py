"""The FID Inception-v3 weights file in its published layout, random weights.

torch-fidelity's release file ``weights-inception-2015-12-05-6726825d.pth`` is a bare state dict
of its ``FeatureExtractorInceptionV3`` (``Conv2d_1a_3x3.conv.weight`` ... ``Mixed_7c.*``,
``fc.weight`` (1008 x 2048), ``fc.bias``), written by ``torch.save``; so is this one.
"""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import torch


def write_inception(out_file: Path, *, seed: int) -> int:
    """A random-initialised FID Inception-v3 state dict at ``out_file``; its parameter count.
    The architecture is torch-fidelity's own (its loader is bypassed, nothing is downloaded)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    torch.manual_seed(seed)
    # The constructor loads weights; with the load stubbed the modules keep their random init.
    with (
        mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict"),
        mock.patch("torch.load", return_value={}),
    ):
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], "unused")
    out_file.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), out_file)
    return sum(p.numel() for p in net.parameters())
