"""SCT's 3D lesion pass (``segment_3d``): 48x48x48 patches along z of the 48x48 crop, thresholded.

The crop is already 48 x 48 in plane, so patches tile z only: starts 0, 48, 96 ..., without
overlap; the last one is zero-filled past the image's end (before standardisation, as SCT does,
so the filler is (0 - mean) / std) and only its part inside the image is kept. A patch that is
all zero is not run (SCT's check for slices cut off above the brain).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from inference.sct.normalize import standardize

# numpy in, numpy out, in the layout the Keras file declares: (N, 1, X, Y, Z) -> (N, 1, X, Y, Z)
# for the lesion network, (N, X, Y, 1) -> (N, X, Y, 1) for the centerline network
Network = Callable[[np.ndarray], np.ndarray]


def z_patches(nz: int, size: int) -> list[tuple[int, int]]:
    """[start, stop) along z of each patch: starts every ``size`` slices, the last one stops at nz."""
    if nz < 1 or size < 1:
        raise ValueError(f"need nz >= 1 and size >= 1, got {nz}, {size}")
    return [(z, min(z + size, nz)) for z in range(0, nz, size)]


def segment_3d(image: np.ndarray, net: Network, mean: float, std: float, threshold: float,
               patch_z: int, batch: int = 4) -> np.ndarray:
    """uint8 lesion mask (network output > threshold) of a landmark-normalised crop (X, Y, Z)."""
    image = np.asarray(image, dtype=np.float32)
    x, y, nz = image.shape
    out = np.zeros(image.shape, dtype=np.uint8)
    todo: list[tuple[int, int, np.ndarray]] = []
    for start, stop in z_patches(nz, patch_z):
        patch = np.zeros((x, y, patch_z), dtype=np.float32)
        patch[:, :, :stop - start] = image[:, :, start:stop]
        if np.any(patch):
            todo.append((start, stop, standardize(patch, mean, std)))
    for b in range(0, len(todo), batch):
        chunk = todo[b:b + batch]
        prob = np.asarray(net(np.stack([p for _, _, p in chunk])[:, None]))
        if prob.shape != (len(chunk), 1, x, y, patch_z):
            raise ValueError(f"lesion network returned {prob.shape}, expected {(len(chunk), 1, x, y, patch_z)}")
        for (start, stop, _), p in zip(chunk, prob):
            out[:, :, start:stop] = (p[0, :, :, :stop - start] > threshold)
    return out
