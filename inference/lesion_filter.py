"""Dropping lesion components smaller than a minimum volume before they are measured.

Why: a network's lesion channel leaves specks of one or a few voxels (a bright central canal,
noise at the cord edge). Measured as they are, each becomes a "lesion" in the SR and a segment
in the SEG. Spinal Cord Toolbox offers the same clean-up as `sct_deepseg -remove-small`; here it
is a pipeline setting (`pipelines.NAME.min_lesion_volume_mm3`) and `dicom-node segment
--min-lesion-volume`, both defaulting to `DEFAULT_MIN_LESION_VOLUME_MM3` (0 keeps the lesion
mask as the model, or nnU-Net, gives it).

Components are found with the connectivity the measurements use (18: faces and edges, see
LESION_METRICS.md), so a kept component is exactly one measured lesion.
"""
from __future__ import annotations

import math

import numpy as np

# Chosen on the validation subjects (model card, "Speck rule"): the smallest minimum volume with no
# false lesion on the unpainted validation volumes; larger ones also drop small true lesions.
DEFAULT_MIN_LESION_VOLUME_MM3 = 5.0
LESION_CONNECTIVITY = 2  # in 3D: 18-connectivity (faces and edges), how lesions are counted everywhere here


def label_lesions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """(component labels 1..n in raster order, n) of a lesion mask: the one lesion labelling that
    measuring, this filter and evaluation all use."""
    from skimage.measure import label  # here: the node's config imports this module

    labels, n = label(np.asarray(mask) > 0, connectivity=LESION_CONNECTIVITY, return_num=True)
    return labels, int(n)


def voxel_volume_mm3(affine: np.ndarray) -> float:
    """mm³ of one voxel of a grid with this voxel -> RAS affine."""
    return float(abs(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3])))


def check_min_volume(value: float, where: str) -> float:
    """A minimum lesion volume as a float >= 0, or ValueError naming `where`."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: expected a number of mm³ (0 = keep every lesion), got {value!r}") from None
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{where}: must be 0 (keep every lesion) or a positive number of mm³, got {value!r}")
    return v


def drop_small_lesions(lesion: np.ndarray, affine: np.ndarray, min_volume_mm3: float) -> tuple[np.ndarray, int]:
    """(lesion mask without components under `min_volume_mm3`, how many were dropped).

    A component of exactly the minimum is kept. The input is not modified; with a minimum of 0
    it is returned as is.
    """
    min_volume_mm3 = check_min_volume(min_volume_mm3, "min_volume_mm3")
    mask = np.asarray(lesion)
    if min_volume_mm3 == 0 or not mask.any():
        return mask, 0
    labels, n = label_lesions(mask)
    sizes_mm3 = np.bincount(labels.ravel(), minlength=n + 1) * voxel_volume_mm3(affine)
    small = sizes_mm3 < min_volume_mm3
    small[0] = False  # background
    dropped = int(small.sum())
    if dropped == 0:
        return mask, 0
    out = mask.copy()
    out[small[labels]] = 0
    return out, dropped
