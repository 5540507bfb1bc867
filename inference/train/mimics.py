"""Lesion mimics: bright things inside a healthy cord that a reader does not outline.

Why: trained with faint lesions (down to 1.1x the cord's signal), the network learned that
any brighter stretch inside the cord is a lesion. Healthy cords have such stretches: on
sagittal T2 the central grey matter and the truncation (Gibbs) line run as a thin, slightly
bright stripe near the cord's centre, beaded along its length. The candidate fine-tuned on all
four families marked two of them (21 and 71 mm³) beside the real lesion of the lesion sample
(`dicom_node/sample/t2_fake_lesion.nii.gz`, SCT's testing image), where the stripe is 1.2-1.3x
the cord's mean. Painting such stripes without a label teaches the difference: a mimic is thin
(a fraction of the cord's width), smooth-edged and long; a lesion has a body and ends.

Arrays are RAS-ordered with the cord along axis 2, as everywhere in `inference.train`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from inference.train.families.cordframe import cord_frame


@dataclass(frozen=True)
class MimicConfig:
    p_stripe: float = 0.4  # share of patches holding cord that get a stripe
    ratio: tuple[float, float] = (1.08, 1.45)  # stripe peak / cord signal (above air)
    sigma_mm: tuple[float, float] = (0.45, 1.4)  # in-plane Gaussian width of the stripe
    max_sigma_of_half_width: float = 0.3  # never wider than this share of the cord's half-width
    off_centre: float = 0.35  # stripe offset from the cord centre, share of the half-width
    length_mm: tuple[float, float] = (12.0, 90.0)
    bead_mm: tuple[float, float] = (3.0, 10.0)  # smoothing of the beading along the cord


def central_stripe(image: np.ndarray, cord: np.ndarray, spacing: tuple[float, float, float],
                   rng: np.random.Generator, levels: tuple[float, float], air: float, sign: float = 1.0,
                   cfg: MimicConfig = MimicConfig()) -> np.ndarray:
    """`image` with one thin beaded stripe along the cord (bright on T2, dark on T1); no label.

    The stripe stays inside the cord (its change is weighted by the cord mask, softened over a
    voxel) so that the cord label stays true. Returns a float32 copy; `image` is not changed.
    """
    out = np.asarray(image, np.float32).copy()
    inside = np.asarray(cord) > 0
    if not inside.any():
        return out
    frame = cord_frame(inside, spacing)
    sx, sy, sz = spacing
    zs = frame.cord_slices
    nz = image.shape[2]
    length = float(rng.uniform(*cfg.length_mm)) / sz
    z_mid = float(zs[rng.integers(len(zs))])
    z = np.arange(nz, dtype=np.float64)
    t = np.abs(z - z_mid) / max(length / 2.0, 1.0)
    taper = np.clip((1.0 - t) / 0.25, 0.0, 1.0)  # soft ends over the last quarter of each half
    bead = ndimage.gaussian_filter1d(rng.standard_normal(nz), sigma=max(float(rng.uniform(*cfg.bead_mm)) / sz, 0.5),
                                     mode="nearest")
    bead = (bead - bead.min()) / max(float(np.ptp(bead)), 1e-6)
    envelope = taper * (0.35 + 0.65 * bead)
    ratio = float(rng.uniform(*cfg.ratio))
    amplitude = (ratio - 1.0) * (levels[0] - air) * (1.0 if sign > 0 else -1.0 / ratio)
    half = np.minimum(frame.half_lr, frame.half_ap)  # (Z,) mm
    sigma = np.minimum(float(rng.uniform(*cfg.sigma_mm)), cfg.max_sigma_of_half_width * half)
    dx, dy = rng.uniform(-cfg.off_centre, cfg.off_centre, 2)
    cx = frame.cx + dx * frame.half_lr / sx
    cy = frame.cy + dy * frame.half_ap / sy
    box = (slice(0, image.shape[0]), slice(0, image.shape[1]), slice(0, nz))
    lr, ap, _ = frame.offsets_mm(box)
    lr = lr - ((cx - frame.cx) * sx)[None, None, :]
    ap = ap - ((cy - frame.cy) * sy)[None, None, :]
    profile = np.exp(-(lr ** 2 + ap ** 2) / (2.0 * sigma[None, None, :] ** 2))
    soft = ndimage.gaussian_filter(inside.astype(np.float32), sigma=[0.5 / s for s in spacing])
    change = amplitude * profile * envelope[None, None, :] * np.minimum(soft * 2.0, 1.0) * inside
    return (out + change.astype(np.float32)).astype(np.float32)
