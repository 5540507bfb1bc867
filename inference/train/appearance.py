"""Appearance randomisation of painted lesions, independent of the family that shaped them.

Why: what a network should learn of a lesion is "tissue in the cord that differs from cord",
not one generator's contrast, texture or edge. After a family has painted its lesions, each
lesion's visible change is rescaled so that its signal over the cord's ranges from barely
visible (1.1x, rarely) to very bright (3x) (on T1, dark by the same ratios), a hypointense part is
sometimes added inside it whatever the family, and its edge is sometimes blurred as partial
volume would. The label does not change: the reader outlines the same lesion however faint.
Thick slices, bias field, noise and gamma act on the whole patch afterwards
(`inference.train.augment.intensity`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from inference.train.families import Painted


@dataclass(frozen=True)
class AppearanceConfig:
    ratio: tuple[float, float] = (1.1, 3.0)  # lesion / cord signal (above air)
    # density of the ratio rises towards the bright end (ratio = lo + (hi - lo) * u ** faint_power): barely
    # visible lesions are trained on but rare (P(< 1.3) ~ 1 %); drawn uniformly they taught the network
    # to flag the 1.1-1.6x brighter spots of healthy cords (40-109 mm³ false lesions on training cords)
    faint_power: float = 0.5
    p_rescale: float = 0.85  # otherwise the family's own contrast is kept
    p_hypo: float = 0.2  # add a hypointense part (haemorrhage, iron, flow void) inside the lesion
    hypo: tuple[float, float] = (0.15, 0.6)  # hypointense part = cord - h * (cord - air)
    p_blur: float = 0.25
    blur_mm: tuple[float, float] = (0.3, 1.2)


def randomize(before: np.ndarray, painted: Painted, levels: tuple[float, float], air: float,
              rng: np.random.Generator, sign: float = 1.0, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
              cfg: AppearanceConfig = AppearanceConfig()) -> Painted:
    """`painted` with each lesion's change from `before` given a random appearance.

    `levels` = (cord level, CSF level) and `air` (the value of no signal) place the ratio: a
    lesion at ratio r lies at air + r * (cord - air) on T2 (sign +1), air + (cord - air) / r on
    T1 (sign -1). Geometry the family changed (a swollen or atrophic cord) stays as painted.
    """
    n = painted.count
    if n == 0:
        return painted
    cord_level = levels[0]
    base = cord_level - air
    if abs(base) < 1e-6:
        base = 1.0
    change = np.asarray(painted.image, np.float32) - np.asarray(before, np.float32)
    sp = np.asarray(spacing, float)
    for k in np.unique(painted.instances)[1:]:
        inside = painted.instances == k
        if not inside.any():
            continue
        near = _near(inside, sp)
        if rng.random() < cfg.p_rescale:
            lo, hi = cfg.ratio
            ratio = float(lo + (hi - lo) * rng.random() ** cfg.faint_power)
            target = (ratio - 1.0) * base if sign > 0 else (1.0 / ratio - 1.0) * base
            towards = change[inside] * sign > 0  # the lesion's bright (T2) part sets its level
            now = float(np.mean(change[inside][towards])) if towards.any() else 0.0
            if abs(now) > 1e-6:
                part = near & (change * sign > 0)
                change[part] *= target / now
        if rng.random() < cfg.p_hypo and inside.sum() >= 8:
            change = _add_hypo(change, inside, cord_level, air, rng, cfg, sp)
        if rng.random() < cfg.p_blur:
            sigma = np.maximum(float(rng.uniform(*cfg.blur_mm)) / sp, 0.2)
            blurred = ndimage.gaussian_filter(change * near, sigma=sigma)
            change = np.where(near, blurred, change)
    return Painted(image=(np.asarray(before, np.float32) + change).astype(np.float32), cord=painted.cord,
                   instances=painted.instances)


def _near(inside: np.ndarray, sp: np.ndarray) -> np.ndarray:
    """The lesion and ~1.5 mm around it: where its painted change (soft edges included) lies."""
    it = [max(1, int(round(1.5 / s))) for s in sp]
    out = inside
    for axis, n in enumerate(it):
        struct = np.zeros((3, 3, 3), bool)
        struct[1, 1, 1] = True
        idx = [1, 1, 1]
        for d in (0, 2):
            idx[axis] = d
            struct[tuple(idx)] = True
        out = ndimage.binary_dilation(out, structure=struct, iterations=n)
    return out


def _add_hypo(change: np.ndarray, inside: np.ndarray, cord_level: float, air: float,
              rng: np.random.Generator, cfg: AppearanceConfig, sp: np.ndarray) -> np.ndarray:
    """A dark ellipsoid around a random voxel of the lesion, clipped to it."""
    idx = np.argwhere(inside)
    c = idx[rng.integers(len(idx))].astype(float)
    ext = (idx.max(0) - idx.min(0) + 1) * sp
    radii = np.maximum(ext * rng.uniform(0.15, 0.4, 3), sp)
    lo = np.maximum(np.floor(c - radii / sp).astype(int) - 1, 0)
    hi = np.minimum(np.ceil(c + radii / sp).astype(int) + 2, inside.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    g = np.meshgrid(*[(np.arange(a, b) - cc) * s / rr for a, b, cc, s, rr in zip(lo, hi, c, sp, radii)],
                    indexing="ij")
    blob = (sum(x ** 2 for x in g) < 1.0) & inside[box]
    if not blob.any():
        return change
    soft = ndimage.gaussian_filter(blob.astype(np.float32), sigma=np.maximum(0.5 / sp, 0.3)) * inside[box]
    level = -float(rng.uniform(*cfg.hypo)) * (cord_level - air)  # relative to the cord level
    out = change.copy()
    out[box] = out[box] * (1.0 - soft) + level * soft
    return out
