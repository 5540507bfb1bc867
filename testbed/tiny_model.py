"""Models for tests and benches: a tiny random DynUNet saved with save_model, and a pass-through network.

The pass-through network returns its (z-scored) input as both logits, so any geometry error
in the engine shows up as a moved or distorted mask in the input grid.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inference.models.registry import LoadedModel, build_network, read_meta, save_model

TINY_ARCH: dict[str, Any] = {
    "type": "DynUNet", "in_channels": 1, "out_channels": 2,
    "kernel_size": [3, 3, 3], "strides": [1, 2, 2], "upsample_kernel_size": [2, 2],
    "filters": [4, 8, 16], "norm_name": "instance",
}


def tiny_meta(trained: bool = True, spacing=(1.0, 1.0, 1.0), patch=(32, 32, 32),
              thresholds=(0.5, 0.5)) -> dict[str, Any]:
    return {
        "name": "tiny-test", "version": "0.0.1", "architecture": TINY_ARCH,
        "spacing_mm": list(spacing), "orientation": "RAS", "normalization": "zscore",
        "patch_size": list(patch), "regions": ["cord", "lesion"], "activation": "sigmoid",
        "thresholds": list(thresholds), "weights": "weights.pt", "trained": trained,
        "description": "random weights, tests only",
    }


def make_tiny_model(folder: Path, trained: bool = True, **kw: Any) -> Path:
    torch.manual_seed(0)
    return save_model(folder, tiny_meta(trained=trained, **kw), build_network(TINY_ARCH, trainable=True))


class PassThrough(torch.nn.Module):
    """Logits = the normalised input, for every region channel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x], dim=1)


def pass_through_model(folder: Path, spacing, patch=(32, 32, 32), z_threshold: float = 0.0) -> LoadedModel:
    """A LoadedModel whose thresholds cut the z-scored image at `z_threshold`."""
    make_tiny_model(folder, spacing=spacing, patch=patch)
    t = float(1.0 / (1.0 + np.exp(-z_threshold)))
    meta = dataclasses.replace(read_meta(folder), thresholds=(t, t))
    return LoadedModel(meta=meta, network=PassThrough().eval(), device=torch.device("cpu"))
