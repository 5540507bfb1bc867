"""Family `contusion`: acute spinal cord injury.

What it looks like on T2 (Talbott 2015's BASIC grades, SCIseg's training data): a fusiform
T2-hyperintense edema 10 to 60 mm long, centred in the cord, filling part or all of its
cross-section, often with a T2-hypointense haemorrhagic core at the impact level, and the
cord locally swollen so that the CSF around it is thinned or effaced. A reader outlines the
edema and the core together: that is the label.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from inference.train.families.cordframe import cord_frame, pick_center_slice, radial_warp, stretch_box, stretch_profile
from inference.train.families.painted import Painted


@dataclass(frozen=True)
class ContusionRanges:
    length_mm: tuple[float, float] = (10.0, 60.0)
    width_of_cord: tuple[float, float] = (0.55, 1.05)  # edema radius at its widest / cord radius
    taper_power: tuple[float, float] = (0.6, 1.6)  # spindle shape: higher = more pointed ends
    off_centre: float = 0.2  # centre offset, in cord radii
    swelling: tuple[float, float] = (0.05, 0.45)  # cord radius grows by this at the lesion's centre
    edema: tuple[float, float] = (0.45, 1.0)  # edema = cord + e * (csf - cord)
    p_core: float = 0.6
    core_length: tuple[float, float] = (0.15, 0.45)  # of the edema's length
    core_width: tuple[float, float] = (0.25, 0.6)  # of the edema's width
    core: tuple[float, float] = (0.3, 1.0)  # core = cord - c * |csf - cord|
    max_lesions: int = 1  # one injury level; rarely two


RANGES = ContusionRanges()


def paint(image: np.ndarray, cord: np.ndarray, spacing: tuple[float, float, float],
          rng: np.random.Generator, levels: tuple[float, float], sign: float = 1.0,
          focus: tuple[slice, ...] | None = None, n_lesions: int | None = None,
          r: ContusionRanges = RANGES) -> Painted:
    blank = Painted.blank(image, cord)
    out, cord, instances = blank.image, blank.cord, blank.instances
    if n_lesions is None:
        n_lesions = 1 if rng.random() < 0.9 else 2
    if n_lesions == 0 or not cord.any():
        return blank
    cord_level, ref = levels
    delta = ref - cord_level
    for k in range(1, n_lesions + 1):
        frame = cord_frame(cord, spacing)
        zc = pick_center_slice(frame, rng, focus, cord)
        length = float(rng.uniform(*r.length_mm))
        half_vox = length / 2.0 / spacing[2]
        swell = stretch_profile(cord.shape[2], zc, half_vox * 1.3, float(rng.uniform(*r.swelling)))
        out, cord = radial_warp(out, cord, frame, swell)
        frame = cord_frame(cord, spacing)  # the swollen cord: the edema fills it
        _edema(out, cord, instances, frame, zc, length, rng, r, delta, sign, k)
    cord = cord | (instances > 0)
    return Painted(out, cord, instances)


def _edema(out: np.ndarray, cord: np.ndarray, instances: np.ndarray, frame, zc: int, length: float,
           rng: np.random.Generator, r: ContusionRanges, delta: float, sign: float, k: int) -> None:
    sz = frame.spacing[2]
    half = length / 2.0
    box = stretch_box(frame, cord.shape, zc, half)
    z0, z1 = box[2].start, box[2].stop
    lr, ap, z = frame.offsets_mm(box)
    a = frame.half_lr[z0:z1][None, None, :]
    b = frame.half_ap[z0:z1][None, None, :]
    dx, dy = rng.uniform(-1, 1, 2) * r.off_centre
    s = (z - zc * sz) / half  # -1..1 along the lesion
    width = float(rng.uniform(*r.width_of_cord))
    spindle = width * np.clip(1.0 - np.abs(s) ** 2, 0.0, 1.0) ** float(rng.uniform(*r.taper_power))
    rho = np.sqrt((lr / a - dx) ** 2 + (ap / b - dy) ** 2)
    # a wavy edge: edema spreads unevenly along white-matter tracts
    wobble = ndimage.gaussian_filter(rng.standard_normal(rho.shape).astype(np.float32),
                                     sigma=np.maximum(1.5 / np.asarray(frame.spacing), 0.5))
    wobble /= max(float(wobble.std()), 1e-6)
    rel = rho / np.maximum(spindle, 1e-3) + 0.12 * wobble
    inside = (rel < 1.0) & (spindle > 0.05) & cord[box]
    if not inside.any():
        return
    depth = np.clip(1.0 - rel, 0.0, 1.0)
    weight = np.where(inside, 0.55 + 0.45 * depth ** 0.5, 0.0).astype(np.float32)
    weight = ndimage.gaussian_filter(weight, sigma=np.maximum(0.5 / np.asarray(frame.spacing), 0.3))
    change = float(rng.uniform(*r.edema)) * delta * weight
    if rng.random() < r.p_core:
        cl = float(rng.uniform(*r.core_length))
        cw = float(rng.uniform(*r.core_width))
        core = inside & (np.abs(s) < cl) & (rho < cw * np.maximum(spindle, 1e-3))
        if core.any():
            sigma = np.maximum(0.6 / np.asarray(frame.spacing), 0.3)
            soft = ndimage.gaussian_filter(core.astype(np.float32), sigma=sigma)
            target = -float(rng.uniform(*r.core)) * abs(delta) * sign
            change = change * (1.0 - soft) + target * soft
    out[box] += change
    inst = instances[box]
    inst[inside & (inst == 0)] = k
