"""What a segmentation runtime returns, and the pieces both runtimes share.

Why a module of its own: `inference.engine` (our DynUNet runtime, and the entry point that
dispatches nnU-Net folders) imports `inference.nnunet_runtime`, which returns the same
`Segmentation` and mirrors the same way; with these here, both import downwards and neither
imports the other back.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass
class Segmentation:
    """Network output in the INPUT grid (same shape as ``volume.array``)."""

    cord_prob: np.ndarray  # float32 [0, 1]
    lesion_prob: np.ndarray  # float32 [0, 1]
    cord_mask: np.ndarray  # uint8 {0, 1}: largest connected component, includes lesion
    lesion_mask: np.ndarray  # uint8 {0, 1}: inside cord_mask
    timings: dict[str, float] = field(default_factory=dict)  # preprocess, network, postprocess [s]
    # tiles, tiles_run, tiles_skipped (air or outside the ROI), roi (the decision), device, model grid
    info: dict[str, object] = field(default_factory=dict)


def mirror_combos(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Tensor dims (N, C, spatial...) of every non-empty combination of the spatial `axes`,
    singles first: the mirrors test-time augmentation adds, in nnU-Net's order."""
    dims = [a + 2 for a in axes]
    return [c for i in range(len(dims)) for c in itertools.combinations(dims, i + 1)]


def all_channels(region: Sequence[slice]) -> tuple[slice, ...]:
    """Index of `region` (one slice per spatial axis) in every channel: ``x[all_channels(r)]`` is
    ``x[:, *r]``, written so on Python 3.10 (where a starred index is a syntax error)."""
    return (slice(None), *region)
