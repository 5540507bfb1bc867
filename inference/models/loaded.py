"""A model in memory (`LoadedModel`) and the device it runs on (`pick_device`).

Why a module of its own: both loaders build on these, the registry (model.json folders) and
`inference.models.nnunet` (nnU-Net folders, which the registry's `load_model` dispatches to);
with them here the nnU-Net loader imports downwards instead of back into the registry. The
registry re-exports both names.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from inference.models.meta import ModelMeta
from inference.models.spec import ModelError


@dataclass
class LoadedModel:
    meta: ModelMeta
    network: torch.nn.Module
    device: torch.device


def pick_device(setting: str = "auto") -> torch.device:
    """`auto`: CUDA when available, else CPU; an explicit `cuda...` without CUDA is a ModelError."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device {setting!r} requested but CUDA is not available")
    return torch.device(setting)
