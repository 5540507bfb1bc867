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
    return Reorientation(to_ras=to_ras, in_shape=(shape[0], shape[1], shape[2]), affine_in=np.asarray(affine, float),
                         affine_ras=affine_ras)


def resample_to_spacing(arr: np.ndarray, spacing: tuple[float, ...], target: tuple[float, ...],
                        order: int = 1) -> np.ndarray:
    """Resample a 3D array from voxel size `spacing` to `target` (align corners of the grid extent)."""
    zoom = [s / t for s, t in zip(spacing, target)]
    if np.allclose(zoom, 1.0, atol=1e-3):
        return arr.astype(np.float32, copy=True)
    # at least one voxel per axis (a single thin slice must not vanish); with grid_mode the
    # mapping depends only on the shape ratio, so fixing the shape changes nothing else
    shape = [max(1, int(round(n * z))) for n, z in zip(arr.shape, zoom)]
    zoom = [m / n for m, n in zip(shape, arr.shape)]
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


def zscore_params(arr: np.ndarray) -> tuple[float, float]:
    """Mean and std over voxels > 0 (the body): split from `zscore` so a crop of the image can be
    normalised with the statistics of the whole image (the engine tiles crops)."""
    fg = arr[arr > 0]
    if fg.size < 10:
        fg = arr.ravel()
    mean, std = float(fg.mean(dtype=np.float64)), float(fg.std(dtype=np.float64))
    return mean, max(std, 1e-8)


def zscore(arr: np.ndarray) -> np.ndarray:
    """Z-score over voxels > 0 (the body), as nnU-Net does for MR; background keeps its value mapped."""
    mean, std = zscore_params(arr)
    return ((arr - mean) / std).astype(np.float32)


def voxel_sizes(affine: np.ndarray) -> tuple[float, float, float]:
    sx, sy, sz = (float(v) for v in nib.affines.voxel_sizes(affine))
    return sx, sy, sz


@dataclass(frozen=True)
class ModelGrid:
    """Everything needed to map model-space arrays back onto the input grid exactly.

    ``affine`` is model voxel -> RAS mm. Resampling aligns the outer edges of the grids
    (scipy ``grid_mode=True``), so model voxel m sits at RAS-grid index (m + 0.5) * f - 0.5 with
    f = ras_shape / model_shape; the effective spacing may differ from the target by < 1 voxel
    over the whole extent.
    """

    reorientation: Reorientation
    ras_shape: tuple[int, int, int]
    model_shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def spacing(self) -> tuple[float, float, float]:
        return voxel_sizes(self.affine)


def to_model_space(array: np.ndarray, affine: np.ndarray, spacing_mm: tuple[float, ...],
                   order: int = 1) -> tuple[np.ndarray, ModelGrid]:
    """Input grid -> model space (RAS axes by flips/permutations, then `spacing_mm`); not normalised."""
    if array.ndim != 3:
        raise ValueError(f"expected a 3D array, got shape {array.shape}")
    reo = reorient_to_ras(affine, array.shape)
    ras = reo.forward(np.asarray(array, dtype=np.float32))
    out = resample_to_spacing(ras, voxel_sizes(reo.affine_ras), tuple(spacing_mm), order=order)
    f = np.array(ras.shape, float) / np.array(out.shape, float)
    scale = np.eye(4)
    scale[:3, :3] = np.diag(f)
    scale[:3, 3] = (f - 1.0) / 2.0
    grid = ModelGrid(reorientation=reo, ras_shape=tuple(ras.shape), model_shape=tuple(out.shape),
                     affine=reo.affine_ras @ scale)
    return out, grid


def from_model_space(arr: np.ndarray, grid: ModelGrid, order: int = 1) -> np.ndarray:
    """Model space -> the input grid, exact input shape; `arr` is (X, Y, Z) or (C, X, Y, Z)."""
    if arr.ndim == 4:
        return np.stack([from_model_space(a, grid, order) for a in arr])
    if tuple(arr.shape) != grid.model_shape:
        raise ValueError(f"array shape {arr.shape} is not the model grid {grid.model_shape}")
    ras = resample_to_shape(arr, grid.ras_shape, order=order)
    return grid.reorientation.backward(ras)
