"""Family `cyst`: chronic spinal cord injury.

What it looks like on T2 months after an injury: a cystic cavity (post-traumatic syrinx or
myelomalacic cyst) as bright as the CSF, sometimes in two or three loculi along the cord,
ringed by gliosis that is brighter than the cord but darker than the cavity, in a cord that
is thinner than above and below (atrophy, the CSF filling in). A reader outlines the cavity
and its rim together: that is the label.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from inference.train.families.cordframe import cord_frame, pick_center_slice, radial_warp, stretch_box, stretch_profile
from inference.train.families.painted import Painted
from inference.train.lesions import dilate_mm  # morphology in mm, not a lesion shape


@dataclass(frozen=True)
class CystRanges:
    length_mm: tuple[float, float] = (5.0, 40.0)  # the whole cavity, all loculi
    loculi: tuple[int, int] = (1, 3)
    width_of_cord: tuple[float, float] = (0.35, 0.8)  # cavity radius / (atrophic) cord radius
    flatness: tuple[float, float] = (0.6, 1.0)  # antero-posterior / left-right cavity radius
    off_centre: float = 0.25  # in cord radii, mostly dorsal/central
    rim_mm: tuple[float, float] = (0.7, 2.0)
    atrophy: tuple[float, float] = (0.1, 0.35)  # cord radius shrinks by this around the cyst
    cavity: tuple[float, float] = (0.85, 1.15)  # cavity = cord + c * (csf - cord)
    rim: tuple[float, float] = (0.2, 0.55)  # gliosis = cord + g * (csf - cord)
    max_lesions: int = 2


RANGES = CystRanges()


def paint(image: np.ndarray, cord: np.ndarray, spacing: tuple[float, float, float],
          rng: np.random.Generator, levels: tuple[float, float], sign: float = 1.0,
          focus: tuple[slice, ...] | None = None, n_lesions: int | None = None,
          r: CystRanges = RANGES) -> Painted:
    blank = Painted.blank(image, cord)
    out, cord, instances = blank.image, blank.cord, blank.instances
    if n_lesions is None:
        n_lesions = 1 if rng.random() < 0.8 else 2
    if n_lesions == 0 or not cord.any():
        return blank
    cord_level, ref = levels
    delta = ref - cord_level
    sp = np.asarray(spacing, float)
    for k in range(1, n_lesions + 1):
        frame = cord_frame(cord, spacing)
        zc = pick_center_slice(frame, rng, focus, cord)
        length = float(rng.uniform(*r.length_mm))
        thin = stretch_profile(cord.shape[2], zc, length / 2.0 / spacing[2] * 1.8, -float(rng.uniform(*r.atrophy)))
        out, cord = radial_warp(out, cord, frame, thin)
        frame = cord_frame(cord, spacing)
        cavity = _cavity(cord, frame, zc, length, rng, r)
        if not cavity.any():
            continue
        rim = dilate_mm(cavity, spacing, float(rng.uniform(*r.rim_mm))) & ~cavity & cord
        soft_cav = ndimage.gaussian_filter(cavity.astype(np.float32), sigma=np.maximum(0.4 / sp, 0.3))
        soft_rim = ndimage.gaussian_filter(rim.astype(np.float32), sigma=np.maximum(0.6 / sp, 0.3))
        gliosis = float(rng.uniform(*r.rim)) * delta * soft_rim * (1.0 - soft_cav)
        fluid = float(rng.uniform(*r.cavity)) * delta * soft_cav
        # the cavity replaces the tissue: its level is set, not added to the cord's texture
        target = cord_level + fluid + gliosis
        mix = np.clip(soft_cav + soft_rim, 0.0, 1.0)
        out = out * (1.0 - mix) + target * mix
        inst = instances
        inst[(cavity | rim) & cord & (inst == 0)] = k
    cord = cord | (instances > 0)
    return Painted(out.astype(np.float32), cord, instances)


def _cavity(cord: np.ndarray, frame, zc: int, length: float, rng: np.random.Generator,
            r: CystRanges) -> np.ndarray:
    """Chained ellipsoidal loculi along the cord, each with its own width."""
    sz = frame.spacing[2]
    half = length / 2.0
    box = stretch_box(frame, cord.shape, zc, half)
    z0, z1 = box[2].start, box[2].stop
    lr, ap, z = frame.offsets_mm(box)
    a = frame.half_lr[z0:z1][None, None, :]
    b = frame.half_ap[z0:z1][None, None, :]
    n = int(rng.integers(r.loculi[0], r.loculi[1] + 1))
    edges = np.sort(rng.uniform(0, 1, n - 1)) if n > 1 else np.array([])
    bounds = np.concatenate([[0.0], edges, [1.0]]) * length + (zc * sz - half)
    dx = rng.uniform(-1, 1) * r.off_centre
    dy = -abs(rng.uniform(0, 1)) * r.off_centre  # dorsal (posterior, -AP) or central
    flat = float(rng.uniform(*r.flatness))
    out = np.zeros(cord.shape, bool)
    sub = np.zeros(lr.shape, bool)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if hi - lo < 1.0:
            continue
        mid, hl = (lo + hi) / 2.0, (hi - lo) / 2.0
        w = float(rng.uniform(*r.width_of_cord))
        sub |= (((z - mid) / hl) ** 2 + ((lr / a - dx) / w) ** 2 + ((ap / b - dy) / (w * flat)) ** 2) < 1.0
    out[box] = sub & cord[box]
    return out

