"""SCT's MS lesion pipeline (``sct_deepseg_lesion``, SCT 5.6) on a Volume: the mask in the volume's own grid.

The steps, each a function of its own module (docs/SCT_PIPELINE.md lists them with every deviation):
 1. orientation: the volume to RPI by axis permutations and flips only (``inference.rpi``);
 2. resampling to 0.5 mm in plane, slice thickness kept (SCT's grid rule, ``resample``);
 3. centerline: SCT's 2D network heatmap and our replacement of OptiC (``centerline``), or the
    centres of a cord mask (SCT's ``-centerline file``);
 4. a 48x48 crop around the centerline in every slice that has one (``crop``);
 5. landmark intensity normalisation of the crop with SCT's standard scale (``normalize``);
 6. resampling of the crop to 0.5 mm isotropic;
 7. the 3D network on 48x48x48 patches along z, sigmoid > 0.1 (``patches``);
 8. back to the slice thickness, uncropped into the 0.5 mm image, resampled to the native
    in-plane size, >= 0.1, and back from RPI to the volume's axes.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from inference import rpi
from inference.sct import resample
from inference.sct.centerline import centerline_from_heatmap, centres_from_mask, heatmap
from inference.sct.crop import crop, uncrop
from inference.sct.models import SctLesionModel
from inference.sct.normalize import landmark_normalize
from inference.sct.params import (
    CROP_SIZE,
    IN_PLANE_MM,
    ISO_MM,
    LESION_THRESHOLD,
    NATIVE_THRESHOLD,
    PATCH_Z,
)
from inference.sct.patches import segment_3d
from inference.volume import Volume


@dataclass
class SctLesions:
    """The mask and what was seen on the way (for the QC picture, the log and the tests)."""

    mask: np.ndarray  # uint8 {0, 1} in the volume's grid
    centres_rpi: np.ndarray  # (nz, 2) centerline (x, y) in the 0.5 mm in-plane RPI grid; NaN = none
    centerline: str  # "cnn" (SCT's network + our OptiC replacement) or "cord mask"
    timings: dict[str, float] = field(default_factory=dict)


def segment_lesions(volume: Volume, model: SctLesionModel, cord_mask: np.ndarray | None = None) -> np.ndarray:
    """uint8 lesion mask of ``volume`` in its own grid, by SCT's pipeline with ``model``.

    ``cord_mask`` (the volume's grid) places the crop on its per-slice centre of mass instead of
    running SCT's centerline network (SCT's ``-centerline file``)."""
    return run(volume, model, cord_mask).mask


def run(volume: Volume, model: SctLesionModel, cord_mask: np.ndarray | None = None) -> SctLesions:
    """``segment_lesions`` with its intermediate results and the time of each step."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    frame = rpi.RpiFrame.from_affine(volume.affine, volume.array.shape)
    image = np.ascontiguousarray(frame.to_rpi(np.asarray(volume.array, dtype=np.float32)))
    spacing = frame.spacing
    shape05 = resample.sct_shape(image.shape, spacing, (IN_PLANE_MM, IN_PLANE_MM, spacing[2]))
    spacing05 = resample.sampled_spacing(image.shape, spacing, shape05)
    image05 = resample.resample(image, shape05)
    timings["resample"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    contrast = model.contrast
    if cord_mask is not None:
        if cord_mask.shape != volume.array.shape:
            raise ValueError(f"cord mask {cord_mask.shape} is not on the volume's grid {volume.array.shape}")
        cord05 = resample.resample(frame.to_rpi(np.asarray(cord_mask, dtype=np.float32)), shape05)
        centres, how = centres_from_mask(cord05), "cord mask"
    else:
        heat, z_max = heatmap(image05, model.ctr_net, contrast.ctr_mean, contrast.ctr_std)
        centres, how = centerline_from_heatmap(heat, (spacing05[0], spacing05[1], spacing05[2]), z_max), "cnn"
    timings["centerline"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    cropped, boxes = crop(image05, centres, CROP_SIZE)
    normalized = landmark_normalize(cropped, contrast.landmarks)
    crop_spacing = (spacing05[0], spacing05[1], spacing05[2])
    iso_shape = resample.sct_shape(normalized.shape, crop_spacing, (ISO_MM, ISO_MM, ISO_MM))
    iso = resample.resample(normalized, iso_shape)
    timings["normalize"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    seg_iso = segment_3d(iso, model.lesion_net, contrast.patch_mean, contrast.patch_std, LESION_THRESHOLD, PATCH_Z)
    timings["network"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    iso_spacing = resample.sampled_spacing(normalized.shape, crop_spacing, iso_shape)
    back_shape = resample.sct_shape(iso_shape, iso_spacing, (IN_PLANE_MM, IN_PLANE_MM, spacing[2]))
    # SCT's rounding lands on the crop's shape for any real voxel size; the exact shape is needed to uncrop
    seg_crop = resample.resample(seg_iso, back_shape if back_shape == cropped.shape else cropped.shape)
    seg05 = uncrop(seg_crop, boxes)
    native = resample.resample(seg05, image.shape) >= NATIVE_THRESHOLD
    mask = np.ascontiguousarray(frame.from_rpi(native)).astype(np.uint8)
    timings["back to native"] = time.perf_counter() - t0
    return SctLesions(mask=mask, centres_rpi=centres, centerline=how, timings=timings)
