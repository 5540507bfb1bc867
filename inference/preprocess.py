"""Input grid <-> model space: reorientation (flips/permutations only), resampling, z-score.

Model space = the input reoriented to the closest RAS axes (no rotation, no interpolation)
and then resampled to the model's voxel spacing. Training and inference both go through
these functions, so the network always sees the same kind of array.
"""
from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation, ornt_transform
from scipy import ndimage


@dataclass(frozen=True)
class Reorientation:
    """How an array in the input grid maps to its RAS-closest array, and back."""

    to_ras: np.ndarray  # nibabel orientation transform input -> RAS
    in_shape: tuple[int, int, int]
    affine_in: np.ndarray
    affine_ras: np.ndarray

    def forward(self, arr: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(apply_orientation(arr, self.to_ras))

    def backward(self, arr: np.ndarray) -> np.ndarray:
        back = ornt_transform(io_orientation(self.affine_ras), io_orientation(self.affine_in))
        return np.ascontiguousarray(apply_orientation(arr, back))


def reorient_to_ras(affine: np.ndarray, shape: tuple[int, ...]) -> Reorientation:
    ornt = io_orientation(affine)
    to_ras = ornt_transform(ornt, np.array([[0, 1], [1, 1], [2, 1]]))
    affine_ras = affine @ inv_ornt_aff(to_ras, shape[:3])
    return Reorientation(to_ras=to_ras, in_shape=tuple(shape[:3]), affine_in=np.asarray(affine, float),
                         affine_ras=affine_ras)


def resample_to_spacing(arr: np.ndarray, spacing: tuple[float, ...], target: tuple[float, ...],
                        order: int = 1) -> np.ndarray:
    """Resample a 3D array from voxel size `spacing` to `target` (align corners of the grid extent)."""
    zoom = [s / t for s, t in zip(spacing, target)]
    if np.allclose(zoom, 1.0, atol=1e-3):
        return arr.astype(np.float32, copy=True)
    return ndimage.zoom(arr.astype(np.float32), zoom, order=order, mode="nearest", grid_mode=True)


def resample_to_shape(arr: np.ndarray, shape: tuple[int, ...], order: int = 1) -> np.ndarray:
    """Resample back to an exact shape (the inverse of `resample_to_spacing` on the same extent)."""
    if tuple(arr.shape) == tuple(shape):
        return arr.astype(np.float32, copy=True)
    zoom = [t / s for s, t in zip(arr.shape, shape)]
    out = ndimage.zoom(arr.astype(np.float32), zoom, order=order, mode="nearest", grid_mode=True)
    if out.shape != tuple(shape):  # zoom rounds; pad/crop the last voxel where it differs
        fixed = np.zeros(shape, np.float32)
        sl = tuple(slice(0, min(a, b)) for a, b in zip(out.shape, shape))
        fixed[sl] = out[sl]
        out = fixed
    return out


def zscore(arr: np.ndarray) -> np.ndarray:
    """Z-score over voxels > 0 (the body), as nnU-Net does for MR; background keeps its value mapped."""
    fg = arr[arr > 0]
    if fg.size < 10:
        fg = arr.ravel()
    mean, std = float(fg.mean()), float(fg.std())
    return ((arr - mean) / max(std, 1e-8)).astype(np.float32)


def voxel_sizes(affine: np.ndarray) -> tuple[float, float, float]:
    return tuple(float(v) for v in nib.affines.voxel_sizes(affine))  # type: ignore[return-value]
