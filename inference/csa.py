"""Spinal cord cross-sectional area (CSA) per axial slice, as sct_process_segmentation computes it.

Why these steps: an axial slice cuts an oblique cord obliquely, so the raw slice area
overestimates the CSA by 1/cos(tilt). The slice is shrunk by the cosine of the centerline's
tilt along each in-plane axis, then measured on a 0.1 mm grid with partial-volume weights,
which makes the number independent of the acquisition's in-plane resolution.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage import measure, transform

from inference.rpi import RpiFrame, centerline_derivatives

CENTERLINE_SMOOTHING = 30.0  # sct_process_segmentation's default bspline smoothing
NEAR_ZERO = 1e-6  # below this a voxel is empty (resampling turns 0 into ~1e-16)
TARGET_PIXEL_MM = 0.1
CROP_PAD = 3


class CsaError(ValueError):
    """The cord mask cannot be measured (wrong shape, bad affine)."""


@dataclass(frozen=True)
class CsaResult:
    """CSA per RPI axial slice (None outside the cord or where undefined) and the mean over defined slices."""

    per_slice_mm2: list[float | None]
    mean_mm2: float  # NaN when no slice is defined
    si_axis: int = 2  # input axis that runs inferior-superior (per_slice index i is along it) ...
    si_flipped: bool = False  # ... and whether input index = n - 1 - i (input runs superior->inferior)

    def input_slice(self, z_rpi: int) -> int:
        """Index along input axis si_axis of RPI axial slice z_rpi (to label per-slice values in the input grid)."""
        n = len(self.per_slice_mm2)
        return n - 1 - z_rpi if self.si_flipped else z_rpi

    def to_json(self) -> dict[str, object]:
        return {
            "per_slice_mm2": list(self.per_slice_mm2),
            "mean_mm2": None if math.isnan(self.mean_mm2) else float(self.mean_mm2),
        }


def cord_csa(cord: np.ndarray, affine: np.ndarray) -> CsaResult:
    """CSA of a binary or soft cord mask; list index = axial slice in the RPI frame (z inferior->superior).

    A soft map must be 0 outside the cord: the centerline is the unweighted centre of every
    voxel above 1e-6, as in SCT.
    """
    cord = np.asarray(cord)
    if cord.ndim != 3:
        raise CsaError(f"cord mask must be 3D, got shape {cord.shape}")
    try:
        frame = RpiFrame.from_affine(np.asarray(affine, dtype=np.float64), cord.shape)
    except ValueError as exc:
        raise CsaError(str(exc)) from None
    data = np.ascontiguousarray(frame.to_rpi(cord), dtype=np.float64)
    px, py, pz = frame.spacing
    nz = data.shape[2]
    per_slice: list[float | None] = [None] * nz
    z_present = np.nonzero((data > NEAR_ZERO).any(axis=(0, 1)))[0]
    si_axis, si_flipped = frame.source_axis[2], frame.flipped[2]
    if z_present.size == 0:
        return CsaResult(per_slice, float("nan"), si_axis=si_axis, si_flipped=si_flipped)

    z0, z1 = int(z_present[0]), int(z_present[-1])
    z_ref = np.arange(z0, z1 + 1)
    dx, dy = centerline_derivatives(data > NEAR_ZERO, CENTERLINE_SMOOTHING, pz, z_ref)
    for i, z in enumerate(z_ref):
        angle_ap = math.atan2(dx[i] * px, pz)  # tilt in the x-z plane: shrinks x
        angle_rl = math.atan2(dy[i] * py, pz)  # tilt in the y-z plane: shrinks y
        # skimage scale is (columns, rows) = (y, x) here.
        scale = (math.cos(angle_rl), math.cos(angle_ap))
        per_slice[int(z)] = _slice_area(corrected_slice(data[:, :, z], scale), (px, py))

    defined = [v for v in per_slice if v is not None]
    mean = float(np.mean(defined)) if defined else float("nan")
    return CsaResult(per_slice, mean, si_axis=si_axis, si_flipped=si_flipped)


def corrected_slice(image: np.ndarray, scale: tuple[float, float], whole: bool = False) -> np.ndarray:
    """The slice shrunk by `scale` (columns, rows) about its origin, bilinear, 0 outside.

    Only the part that can be non-zero is computed: the cord's box, scaled, plus CROP_PAD + 2
    pixels (bilinear reaches one pixel, `_bbox_crop` pads CROP_PAD). Every pixel of it is the
    same as in the whole warped slice (same input coordinates), and `_slice_area` crops to the
    cord anyway, so the area is the same; about 20x less warping on a sagittal spine series.
    `whole` warps the whole slice (the reference the tests compare with).
    """
    tform = transform.AffineTransform(scale=scale)
    rows = np.nonzero((image > NEAR_ZERO).any(axis=1))[0]
    cols = np.nonzero((image > NEAR_ZERO).any(axis=0))[0]
    if whole or rows.size == 0:
        return transform.warp(image, tform.inverse, output_shape=image.shape, order=1)
    pad = CROP_PAD + 2
    r0, c0 = max(int(math.floor(rows[0] * scale[1])) - pad, 0), max(int(math.floor(cols[0] * scale[0])) - pad, 0)
    r1 = min(int(math.ceil(rows[-1] * scale[1])) + pad + 1, image.shape[0])
    c1 = min(int(math.ceil(cols[-1] * scale[0])) + pad + 1, image.shape[1])
    shift = transform.AffineTransform(translation=(c0, r0))  # cropped output -> whole output coordinates
    patch = transform.warp(image, transform.AffineTransform(matrix=tform.inverse.params @ shift.params),
                           output_shape=(r1 - r0, c1 - c0), order=1)
    if (r1 - r0, c1 - c0) != image.shape and patch.min() > NEAR_ZERO:  # no background inside the box:
        return transform.warp(image, tform.inverse, output_shape=image.shape, order=1)  # normalise as before
    return patch


def _bbox_crop(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Crop image to the bounding box of mask plus CROP_PAD pixels (clipped at the borders)."""
    rows = np.nonzero(mask.any(axis=1))[0]
    cols = np.nonzero(mask.any(axis=0))[0]
    r0, r1 = max(rows[0] - CROP_PAD, 0), min(rows[-1] + 1 + CROP_PAD, image.shape[0])
    c0, c1 = max(cols[0] - CROP_PAD, 0), min(cols[-1] + 1 + CROP_PAD, image.shape[1])
    return image[r0:r1, c0:c1]


def _slice_area(patch: np.ndarray, spacing: tuple[float, float]) -> float | None:
    """Partial-volume area (mm^2) of one angle-corrected slice; None if empty or not one region."""
    if np.all(patch < NEAR_ZERO):
        return None
    span = float(patch.max() - patch.min())
    # a slice filled with cord has no background to normalise against: it is all cord
    norm = (patch - patch.min()) / span if span > NEAR_ZERO else np.ones_like(patch)
    inside = norm > 0.5
    if measure.label(inside, connectivity=2).max() != 1:
        return None  # several cord pieces in one slice: no single cross-section to report
    crop = _bbox_crop(norm, inside)
    fine = ndimage.zoom(crop, (spacing[0] / TARGET_PIXEL_MM, spacing[1] / TARGET_PIXEL_MM),
                        order=1, mode="grid-constant", grid_mode=True)
    # No second crop after the zoom: recent SCT re-crops there, but the reference CSA
    # (45.447524 mm^2 on lesion-example) is reproduced to 3e-9 only without it (with it: -0.9 %).
    return float(np.sum(fine)) * TARGET_PIXEL_MM * TARGET_PIXEL_MM
