"""Family `demyelination`: multiple sclerosis and neuromyelitis optica.

What it looks like on T2: in MS, small ovoid lesions 3 to 15 mm long, eccentric, in the
dorsal or lateral columns (white matter at the cord's periphery), over at most two vertebral
segments, often several per cord and fairly homogeneous. In NMOSD, a longitudinally
extensive lesion over three or more segments (about 45 to 100 mm) in the centre of the cord,
where the grey matter is, patchy along its length. The label is the hyperintensity.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from inference.train.families.cordframe import cord_frame, pick_center_slice, stretch_box
from inference.train.families.painted import Painted

COLUMNS = {"dorsal": (0.0, -1.0), "left": (-1.0, 0.0), "right": (1.0, 0.0),
           "dorsolateral_l": (-0.7, -0.7), "dorsolateral_r": (0.7, -0.7)}  # RAS: +x right, +y anterior


@dataclass(frozen=True)
class DemyelinationRanges:
    p_nmosd: float = 0.3
    ms_count: tuple[int, int] = (1, 4)
    ms_length_mm: tuple[float, float] = (3.0, 15.0)
    ms_width_mm: tuple[float, float] = (1.5, 5.0)  # in-plane diameter, capped by the cord
    ms_eccentricity: tuple[float, float] = (0.35, 0.75)  # centre, in cord radii from the cord centre
    ms_signal: tuple[float, float] = (0.4, 1.0)  # lesion = cord + s * (csf - cord)
    nmosd_length_mm: tuple[float, float] = (45.0, 100.0)
    nmosd_width_of_cord: tuple[float, float] = (0.4, 0.8)
    nmosd_signal: tuple[float, float] = (0.35, 0.9)
    nmosd_patchiness: tuple[float, float] = (0.1, 0.45)  # relative signal variation along the lesion


RANGES = DemyelinationRanges()


def paint(image: np.ndarray, cord: np.ndarray, spacing: tuple[float, float, float],
          rng: np.random.Generator, levels: tuple[float, float], sign: float = 1.0,
          focus: tuple[slice, ...] | None = None, n_lesions: int | None = None,
          r: DemyelinationRanges = RANGES) -> Painted:
    """NMOSD-like (one long central lesion) with probability `p_nmosd`, else MS-like (1-4 small)."""
    blank = Painted.blank(image, cord)
    out, cord, instances = blank.image, blank.cord, blank.instances
    if n_lesions == 0 or not cord.any():
        return blank
    delta = levels[1] - levels[0]
    frame = cord_frame(cord, spacing)
    nmosd = rng.random() < r.p_nmosd
    if n_lesions is None:
        n_lesions = 1 if nmosd else int(rng.integers(r.ms_count[0], r.ms_count[1] + 1))
    for k in range(1, n_lesions + 1):
        zc = pick_center_slice(frame, rng, focus, cord)
        if nmosd:
            shape, weight = _letm(cord, frame, zc, rng, r)
            signal = float(rng.uniform(*r.nmosd_signal))
        else:
            shape, weight = _ovoid(cord, frame, zc, rng, r)
            signal = float(rng.uniform(*r.ms_signal))
        if not shape.any():
            continue
        out += signal * delta * weight
        instances[shape & (instances == 0)] = k
    return Painted(out, cord | (instances > 0), instances)


def _smooth(mask: np.ndarray, spacing: tuple[float, float, float], mm: float) -> np.ndarray:
    return ndimage.gaussian_filter(mask.astype(np.float32), sigma=np.maximum(mm / np.asarray(spacing), 0.3))


def _ovoid(cord: np.ndarray, frame, zc: int, rng: np.random.Generator,
           r: DemyelinationRanges) -> tuple[np.ndarray, np.ndarray]:
    """A small homogeneous ellipsoid in a white-matter column, at the cord's periphery."""
    length = float(rng.uniform(*r.ms_length_mm))
    box = stretch_box(frame, cord.shape, zc, length / 2.0 + 1.0)
    lr, ap, z = frame.offsets_mm(box)
    a = frame.half_lr[zc]
    b = frame.half_ap[zc]
    ux, uy = COLUMNS[list(COLUMNS)[int(rng.integers(len(COLUMNS)))]]
    ecc = float(rng.uniform(*r.ms_eccentricity))
    cx, cy = ux * ecc * a, uy * ecc * b  # mm from the cord centre
    width = min(float(rng.uniform(*r.ms_width_mm)), 1.6 * min(a, b))
    flat = float(rng.uniform(0.6, 1.0))
    ang = rng.uniform(0, np.pi)
    du, dv = lr - cx, ap - cy
    p = np.cos(ang) * du + np.sin(ang) * dv
    q = -np.sin(ang) * du + np.cos(ang) * dv
    r2 = (((z - zc * frame.spacing[2]) / (length / 2.0)) ** 2 + (p / (width / 2.0)) ** 2
          + (q / (width * flat / 2.0)) ** 2)
    shape = np.zeros(cord.shape, bool)
    shape[box] = (r2 < 1.0) & cord[box]
    weight = np.zeros(cord.shape, np.float32)
    weight[box] = _smooth(shape[box], frame.spacing, 0.4) * np.clip(1.15 - 0.3 * r2, 0.0, 1.0)
    return shape, weight


def _letm(cord: np.ndarray, frame, zc: int, rng: np.random.Generator,
          r: DemyelinationRanges) -> tuple[np.ndarray, np.ndarray]:
    """A long central lesion, its width and signal varying along the cord."""
    length = float(rng.uniform(*r.nmosd_length_mm))
    box = stretch_box(frame, cord.shape, zc, length / 2.0 + 1.0)
    lr, ap, z = frame.offsets_mm(box)
    a = frame.half_lr[box[2]][None, None, :]
    b = frame.half_ap[box[2]][None, None, :]
    s = (z - zc * frame.spacing[2]) / (length / 2.0)
    nz = box[2].stop - box[2].start
    along = ndimage.gaussian_filter1d(rng.standard_normal(nz), sigma=max(8.0 / frame.spacing[2], 1.0))
    along = along / max(float(np.abs(along).max()), 1e-6)
    width = float(rng.uniform(*r.nmosd_width_of_cord)) * (1.0 + 0.25 * along)[None, None, :]
    ends = np.clip(1.0 - s ** 8, 0.0, 1.0)  # blunt ends
    rho = np.sqrt((lr / a) ** 2 + (ap / (b * 0.9)) ** 2)
    shape = np.zeros(cord.shape, bool)
    shape[box] = (rho < width * ends) & (np.abs(s) < 1.0) & cord[box]
    patchy = 1.0 + float(rng.uniform(*r.nmosd_patchiness)) * along[None, None, :]
    weight = np.zeros(cord.shape, np.float32)
    weight[box] = _smooth(shape[box], frame.spacing, 0.6) * patchy
    return shape, weight
