"""The cord's own shape along its length: an intensity-free cue for where the C2-C3 disc lies.

Why: in healthy adults the cord's cross-sectional area (CSA) changes along the cervical cord in a
way fixed by anatomy: about 71 mm2 at C2-C3, the cervical enlargement (about 78 mm2) at C4-C5,
a steep fall below C6 to about 45 mm2 at T2, and the widening into the medulla above C2. The mean
profile of 203 adults in PAM50 space, positioned from the PAM50 C2-C3 disc
(inference/reference/pam50_csa_profile.npz, built by scripts/make_reference.py), is compared with
the subject's profile measured from the cord mask alone, so this cue errs independently of the
image-intensity cues. Correlation, not difference: a subject's overall cord size does not matter,
only where along the cord it widens and narrows; the spacing is searched over the same scales.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np
from scipy import ndimage

from inference.straighten import ROW_STEP_MM, Straightened

EDGE_MM = 3.0  # the mask's first and last mm are cut by the field of view: not whole cross-sections
SMOOTH_MM = 2.0  # voxel-count noise of a 1 mm row, well below the 15-20 mm scale of the profile's features
MIN_OVERLAP_MM = 40.0  # less than about two vertebrae of profile carries no shape to match


@dataclass(frozen=True)
class CsaProfile:
    offset_mm: np.ndarray  # mm from the PAM50 C2-C3 disc, positive = superior
    csa_mm2: np.ndarray  # mean CSA of the cohort in that 1 mm bin


@lru_cache(maxsize=1)
def load_profile() -> CsaProfile:
    """The normative CSA profile shipped with the package (see scripts/make_reference.py)."""
    ref = resources.files("inference").joinpath("reference").joinpath("pam50_csa_profile.npz")
    with ref.open("rb") as fh, np.load(fh) as data:
        return CsaProfile(np.asarray(data["offset_mm"], dtype=np.float64),
                          np.asarray(data["csa_mm2"], dtype=np.float64))


def cord_profile(straight: Straightened, cord_rpi: np.ndarray) -> np.ndarray:
    """CSA (mm2) per straightened row from the cord mask (RPI grid), NaN where the mask is not whole."""
    frame = straight.frame
    points = np.argwhere(cord_rpi).astype(np.float64) * np.asarray(frame.spacing)
    rows = straight.arc_mm.size
    out = np.full(rows, math.nan)
    if points.size == 0:
        return out
    row_of = np.rint(straight.arc_of_points(points) / ROW_STEP_MM).astype(int)
    volume = float(np.prod(frame.spacing))
    counts = np.bincount(row_of, minlength=rows)[:rows].astype(np.float64)
    area = ndimage.gaussian_filter1d(counts * volume / ROW_STEP_MM, SMOOTH_MM / ROW_STEP_MM, mode="nearest")
    edge = int(math.ceil(EDGE_MM / ROW_STEP_MM))
    out[edge:rows - edge] = area[edge:rows - edge]
    return out


def shape_match(subject: np.ndarray, row: int, scales: tuple[float, ...]) -> float:
    """Best correlation (over scales) of the normative profile with C2-C3 at `row` and the subject's profile.

    0.0 (no evidence either way) when the two overlap over less than MIN_OVERLAP_MM of cord.
    """
    profile = load_profile()
    best = 0.0
    found = False
    for scale in scales:
        rows = row + profile.offset_mm * scale / ROW_STEP_MM
        values = np.interp(rows, np.arange(subject.size), subject, left=math.nan, right=math.nan)
        keep = np.isfinite(values)
        if keep.sum() * scale < MIN_OVERLAP_MM:
            continue
        value = _ncc(values[keep], profile.csa_mm2[keep])
        if not found or value > best:
            best, found = value, True
    return best


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else 0.0
