"""SCT's resampling grid: what ``resampling.resample_nib(new_size_type='mm')`` does to an array.

SCT picks the new shape as round(n * p / p_new) per axis and the new affine as the old one times
diag(n / n_new), without a shift: voxel 0 stays where it was and new voxel i samples old index
i * n / n_new (linear, nearest value beyond the last voxel). That is not our own resampling
(``inference.preprocess`` aligns the outer edges of the grids), so SCT's rule lives here, for the
networks that were trained on images resampled this way. Only index space matters: the
orientation is RPI already and the affine only scales.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def sct_shape(shape: tuple[int, ...], spacing: tuple[float, ...], new_spacing: tuple[float, ...]) -> tuple[int, ...]:
    """round(n * p / p_new) per axis (numpy's round: halves to even, as SCT's np.round)."""
    out = tuple(int(np.round(n * float(p) / float(q))) for n, p, q in zip(shape, spacing, new_spacing))
    if min(out) < 1:
        raise ValueError(f"resampling {tuple(shape)} voxels of {tuple(spacing)} mm to {tuple(new_spacing)} mm "
                         f"leaves an empty axis ({out})")
    return out


def resample(array: np.ndarray, shape: tuple[int, ...], order: int = 1) -> np.ndarray:
    """``array`` on the grid of ``shape`` voxels over the same origin: new voxel i samples old i * n / n_new."""
    array = np.asarray(array, dtype=np.float32)
    if tuple(array.shape) == tuple(shape):
        return array.copy()
    scale = [n / m for n, m in zip(array.shape, shape)]
    return ndimage.affine_transform(array, scale, output_shape=tuple(shape), order=order, mode="nearest")


def sampled_spacing(shape: tuple[int, ...], spacing: tuple[float, ...],
                    new_shape: tuple[int, ...]) -> tuple[float, ...]:
    """The voxel size SCT's grid really has: p * n / n_new (the requested size up to rounding of the shape)."""
    return tuple(float(p) * n / m for p, n, m in zip(spacing, shape, new_shape))
