"""Per-lesion and per-study measurements with exactly sct_analyze_lesion's definitions.

Why exact: studies that already report SCT numbers must be able to switch to this node
without a break in their series, so every definition (frame, labelling, angle correction,
interpolated midsagittal slice, tissue bridges) follows /shared/LESION_METRICS.md to the
letter, including its tie rules. One refinement: voxel sizes are rounded to their float32
resolution as SCT 7.x does (inference.rpi.round_spacing), which is the spec's "6 decimals"
for 1-2 mm voxels and 7 decimals below 1 mm; the reference case needs it to agree beyond 1e-7.
Everything is computed in the RPI frame; only the label map, x* and centroids are mapped
back to the input grid.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from inference.lesion_filter import label_lesions
from inference.measurements import LesionMetrics, finite_or_none
from inference.rpi import RpiFrame, centerline_derivatives

# Smoothing of the centerline spline used for angle correction (sct_analyze_lesion's default).
ANGLE_SMOOTHING = 20.0
MIDSAGITTAL_HALF_WINDOW = 2  # x* averages the cord's x centre over z_c-2 .. z_c+2


class MetricsError(ValueError):
    """The masks cannot be measured (non-binary lesion, shape mismatch, bad affine)."""


@dataclass
class LesionReport:
    """All lesions of one study plus the study totals; label_map is in the INPUT grid."""

    lesions: list[LesionMetrics]
    label_map: np.ndarray  # int32, input grid, n = lesion with label n (after cord masking)
    interpolated_midsagittal_slice: float | None  # x*, index along the input axis that is R-L
    total_volume_mm3: float = 0.0
    total_length_mm: float = 0.0
    max_axial_damage_ratio: float = 0.0
    spacing_rpi_mm: tuple[float, float, float] = field(default=(0.0, 0.0, 0.0))

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types only (the SR writer and measurements.json use this schema)."""
        return {
            "lesions": [lesion.to_json() for lesion in self.lesions],
            "interpolated_midsagittal_slice": finite_or_none(self.interpolated_midsagittal_slice),
            "total_volume_mm3": float(self.total_volume_mm3),
            "total_length_mm": float(self.total_length_mm),
            "max_axial_damage_ratio": float(self.max_axial_damage_ratio),
        }


@dataclass(frozen=True)
class _Angles:
    """Per axial slice: 3D angle of the centerline to z, and its antero-posterior tilt only."""

    theta_3d: np.ndarray
    theta_sag: np.ndarray


def _cord_angles(cord: np.ndarray, spacing: tuple[float, float, float]) -> _Angles:
    """Angles from the spline-smoothed centerline, evaluated at every z (extrapolated outside the cord)."""
    px, py, pz = spacing
    nz = cord.shape[2]
    dx, dy = centerline_derivatives(cord, ANGLE_SMOOTHING, pz, np.arange(nz))
    tx, ty = dx * px, dy * py
    norm = np.sqrt(tx**2 + ty**2 + pz**2)
    theta_3d = np.arccos(pz / norm)
    theta_sag = np.arccos(pz / np.sqrt(ty**2 + pz**2))
    return _Angles(theta_3d, theta_sag)


def _validate(lesion: np.ndarray, cord: np.ndarray, affine: np.ndarray) -> None:
    if lesion.ndim != 3:
        raise MetricsError(f"lesion mask must be 3D, got shape {lesion.shape}")
    if lesion.shape != cord.shape:
        raise MetricsError(f"lesion mask shape {lesion.shape} differs from cord mask shape {cord.shape}; "
                           "resample one onto the other's grid")
    if np.asarray(affine).shape != (4, 4):
        raise MetricsError(f"affine must be 4x4, got {np.asarray(affine).shape}")
    values = np.unique(lesion)
    bad = values[(values != 0) & (values != 1)]
    if bad.size:
        shown = ", ".join(f"{v:g}" for v in bad[:5])
        raise MetricsError(f"lesion mask must hold only 0 and 1, found {shown}; binarise it (e.g. threshold at 0.5)")


def analyze_lesions(lesion: np.ndarray, cord: np.ndarray, affine: np.ndarray) -> LesionReport:
    """Measure every lesion of a binary lesion mask inside a cord mask (same grid, voxel->RAS affine).

    The cord mask is binarised at 0.5 so a soft cord probability may be passed too.
    """
    lesion = np.asarray(lesion)
    cord = np.asarray(cord)
    _validate(lesion, cord, affine)
    try:
        frame = RpiFrame.from_affine(np.asarray(affine, dtype=np.float64), lesion.shape)
    except ValueError as exc:
        raise MetricsError(str(exc)) from None

    lesion_rpi = np.ascontiguousarray(frame.to_rpi(lesion == 1))
    cord_rpi = np.ascontiguousarray(frame.to_rpi(cord >= 0.5))
    # Label before masking (connectivity in the unmasked mask), then keep only voxels in the cord.
    labels_rpi = label_lesions(lesion_rpi)[0].astype(np.int32)
    labels_rpi[~cord_rpi] = 0
    labels_rpi = _renumber(labels_rpi)
    n_lesions = int(labels_rpi.max())
    label_map = np.ascontiguousarray(frame.from_rpi(labels_rpi)).astype(np.int32)
    if n_lesions == 0:
        return LesionReport([], label_map, None, spacing_rpi_mm=frame.spacing)

    angles = _cord_angles(cord_rpi, frame.spacing)
    px, py, pz = frame.spacing
    rows = _LesionSlices.of(labels_rpi)
    boxes = ndimage.find_objects(labels_rpi)
    largest = int(np.argmax(rows.lesion_voxels)) + 1  # argmax: first lesion on ties
    x_star = _midsagittal_x(_Lesion(labels_rpi, largest, boxes[largest - 1]), cord_rpi)
    cord_per_slice = cord_rpi.sum(axis=(0, 1))

    # per (lesion, axial slice) row, each with sct_analyze_lesion's per-slice formula
    cos_3d, cos_sag = np.cos(angles.theta_3d), np.cos(angles.theta_sag)
    length_rows = pz / cos_3d[rows.z]
    width = np.maximum.reduceat(rows.ap_extent * py * cos_sag[rows.z], rows.first_row)
    area_rows = rows.voxels * cos_3d[rows.z] * px * py
    area = np.maximum.reduceat(area_rows, rows.first_row)
    damage = np.maximum.reduceat((rows.voxels * px * py) / (cord_per_slice[rows.z] * px * py), rows.first_row)
    mid = _midsagittal_per_lesion(labels_rpi, boxes, rows, x_star, cord_rpi, angles, frame.spacing)

    centroids = ndimage.center_of_mass(np.ones_like(label_map), label_map, range(1, n_lesions + 1))
    affine64 = np.asarray(affine, dtype=np.float64)
    ends = np.r_[rows.first_row[1:], rows.z.size]
    lesions = []
    for i, (start, end) in enumerate(zip(rows.first_row.tolist(), ends.tolist())):
        centroid = affine64 @ np.array([*centroids[i], 1.0])
        # the slice of the maximal area (the first on ties, as argmax), where the equivalent diameter is taken
        key_z = int(rows.z[start + int(np.argmax(area_rows[start:end]))])
        lesions.append(LesionMetrics(
            label=i + 1,
            volume_mm3=float(rows.lesion_voxels[i]) * px * py * pz,
            length_mm=float(np.sum(length_rows[start:end])),
            width_mm=float(width[i]),
            max_equivalent_diameter_mm=2.0 * math.sqrt(float(area[i]) / math.pi),
            max_axial_damage_ratio=float(damage[i]),
            centroid_ras_mm=(float(centroid[0]), float(centroid[1]), float(centroid[2])),
            max_axial_area_slice=int(frame.rpi_index_to_input(2, key_z)),
            **mid[i],  # type: ignore[arg-type]  # the midsagittal floats only, never level_span
        ))
    return LesionReport(
        lesions=lesions,
        label_map=label_map,
        interpolated_midsagittal_slice=None if x_star is None else float(frame.rpi_index_to_input(0, x_star)),
        total_volume_mm3=float(sum(les.volume_mm3 for les in lesions)),
        total_length_mm=float(sum(les.length_mm for les in lesions)),
        max_axial_damage_ratio=float(max(les.max_axial_damage_ratio for les in lesions)),
        spacing_rpi_mm=frame.spacing,
    )


def _renumber(labels: np.ndarray) -> np.ndarray:
    """Consecutive labels 1..N keeping RPI raster order (a lesion wholly outside the cord vanishes)."""
    present = np.unique(labels)
    present = present[present > 0]
    if present.size == 0 or present[-1] == present.size:
        return labels
    lut = np.zeros(int(labels.max()) + 1, dtype=np.int32)
    lut[present] = np.arange(1, present.size + 1, dtype=np.int32)
    return lut[labels]


@dataclass(frozen=True)
class _LesionSlices:
    """Every lesion's axial slices as rows, lesion by lesion and z ascending within a lesion.

    Why: measuring from these arrays instead of one crop per lesion keeps a mask of tens of
    thousands of specks (an untrained or mismatched model's output) cheap; every value is still
    the per-slice formula of LESION_METRICS.md, so the numbers are the same to the bit.
    """

    z: np.ndarray  # the axial slice of each row
    voxels: np.ndarray  # lesion voxels in it
    ap_extent: np.ndarray  # y_max - y_min + 1 of those voxels
    first_row: np.ndarray  # lesion n's rows start at first_row[n - 1] (np.*.reduceat boundaries)
    lesion_voxels: np.ndarray  # voxels of lesion n at [n - 1]
    voxel_x: np.ndarray  # R-L index of every lesion voxel (np.nonzero's order)
    voxel_label: np.ndarray  # and its label

    @classmethod
    def of(cls, labels_rpi: np.ndarray) -> "_LesionSlices":
        """Rows of a label map whose labels are exactly 1..n (each present)."""
        nz = labels_rpi.shape[2]
        x, y, z = np.nonzero(labels_rpi)
        labels = labels_rpi[x, y, z]
        key = labels.astype(np.int64) * nz + z
        order = np.argsort(key, kind="stable")
        key, y = key[order], y[order]
        first = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        lesion = key[first] // nz
        return cls(
            z=key[first] % nz,
            voxels=np.diff(np.r_[first, key.size]),
            ap_extent=np.maximum.reduceat(y, first) - np.minimum.reduceat(y, first) + 1,
            first_row=np.flatnonzero(np.r_[True, lesion[1:] != lesion[:-1]]),
            lesion_voxels=np.bincount(labels)[1:],
            voxel_x=x,
            voxel_label=labels,
        )

    def in_sagittal_slices(self, slices: tuple[int, int]) -> set[int]:
        """Labels of the lesions with a voxel in either sagittal slice."""
        hit = (self.voxel_x == slices[0]) | (self.voxel_x == slices[1])
        return set(np.unique(self.voxel_label[hit]).tolist())


class _Lesion:
    """One labelled lesion as its bounding-box crop: for the lesions that need an image of their
    own (the largest, and those in the sagittal slices around x*)."""

    def __init__(self, labels: np.ndarray, label: int, box: tuple[slice, slice, slice]):
        self.label = label
        self.crop = labels[box] == label
        self.offset = tuple(int(b.start) for b in box)
        self.voxels = int(self.crop.sum())

    def z_center(self) -> float:
        """z centre of mass (unweighted voxel mean) in full-grid indices."""
        return float(np.nonzero(self.crop)[2].mean()) + self.offset[2]

    def sagittal(self, x: int) -> np.ndarray:
        """The lesion in sagittal slice x of the full grid, as a (y, z) boolean image cropped to
        the box (full-grid index = box index + offset[1], offset[2]): all zero outside the box."""
        local = x - self.offset[0]
        if 0 <= local < self.crop.shape[0]:
            return self.crop[local]
        return np.zeros(self.crop.shape[1:], dtype=bool)


def _midsagittal_x(largest: _Lesion, cord: np.ndarray) -> float | None:
    """x*: mean cord x centre over the 5 slices around the largest lesion's z centre of mass."""
    z_center = int(round(largest.z_center()))
    xs = []
    for z in range(z_center - MIDSAGITTAL_HALF_WINDOW, z_center + MIDSAGITTAL_HALF_WINDOW + 1):
        if 0 <= z < cord.shape[2] and cord[:, :, z].any():
            xs.append(float(ndimage.center_of_mass(cord[:, :, z])[0]))
    return float(np.mean(xs)) if xs else None


def _bridges(lesion_col: np.ndarray, cord_col: np.ndarray, y0: int = 0) -> tuple[int, int]:
    """Dorsal and ventral tissue bridge (voxels) in one antero-posterior column (y); the lesion
    column may be a crop starting at full-grid y0."""
    ly = np.nonzero(lesion_col)[0] + y0
    cy = np.nonzero(cord_col)[0]
    return max(0, int(ly[0] - cy[0])), max(0, int(cy[-1] - ly[-1]))


MIDSAGITTAL_KEYS = ("midsagittal_length_mm", "midsagittal_width_mm", "dorsal_bridge_mm", "ventral_bridge_mm",
                    "total_bridge_mm", "dorsal_bridge_ratio_pct", "ventral_bridge_ratio_pct")


def _midsagittal_per_lesion(
    labels: np.ndarray, boxes: list, rows: _LesionSlices, x_star: float | None, cord: np.ndarray,
    angles: _Angles, spacing: tuple[float, float, float],
) -> list[dict[str, float | None]]:
    """The midsagittal measures of lesions 1..n, in order.

    Only lesions with a voxel in one of the two sagittal slices around x* need their own
    interpolated image; the others (most specks) have no midsagittal length or width, and their
    bridges are half the cord's interpolated thickness, taken here for all of them at once.
    """
    n = rows.lesion_voxels.size
    if x_star is None:
        return [dict.fromkeys(MIDSAGITTAL_KEYS) for _ in range(n)]
    slices = (int(math.floor(x_star)), int(math.ceil(x_star)))
    f = x_star - math.floor(x_star)
    thickness = ((1.0 - f) * _cord_ap_extent(cord[slices[0]]) + f * _cord_ap_extent(cord[slices[1]])) \
        * (spacing[1] * np.cos(angles.theta_sag))
    half = (np.minimum.reduceat(thickness[rows.z], rows.first_row) / 2.0).tolist()
    touching = rows.in_sagittal_slices(slices)
    return [
        _midsagittal_measures(_Lesion(labels, label, boxes[label - 1]), cord, x_star, angles, spacing)
        if label in touching else _away_from_midsagittal(half[label - 1])
        for label in range(1, n + 1)
    ]


def _cord_ap_extent(sagittal: np.ndarray) -> np.ndarray:
    """Per z, y_max - y_min + 1 of the cord in one sagittal (y, z) slice; 0 where it is absent."""
    present = sagittal.any(axis=0)
    first = np.argmax(sagittal, axis=0)
    last = sagittal.shape[0] - 1 - np.argmax(sagittal[::-1], axis=0)
    return np.where(present, last - first + 1, 0)


def _away_from_midsagittal(half_thickness: float) -> dict[str, float | None]:
    """A lesion absent from both slices around x*: no length or width there, and the whole
    cord thickness as bridge, split half dorsal, half ventral."""
    total = half_thickness + half_thickness
    ratio = half_thickness / total * 100.0 if total > 0 else 0.0
    return dict(zip(MIDSAGITTAL_KEYS, (0.0, 0.0, half_thickness, half_thickness, total, ratio, ratio)))


def _midsagittal_measures(
    lesion: _Lesion, cord: np.ndarray, x_star: float, angles: _Angles, spacing: tuple[float, float, float]
) -> dict[str, float | None]:
    """Length, width and tissue bridges in the sagittal slice interpolated at x*, of a lesion
    with voxels in one of the two slices around it (the others: _away_from_midsagittal)."""
    _px, py, pz = spacing
    s1, s2 = int(math.floor(x_star)), int(math.ceil(x_star))
    f = x_star - math.floor(x_star)
    sagittal = (lesion.sagittal(s1), lesion.sagittal(s2))  # the lesion's box: cheap for many small ones
    interp = (1.0 - f) * sagittal[0].astype(np.float64) + f * sagittal[1].astype(np.float64)  # (y, z)
    cos_sag = np.cos(angles.theta_sag)
    z0 = lesion.offset[2]

    length = 0.0
    width = 0.0
    for z_box in np.nonzero(interp.any(axis=0))[0]:
        column = interp[:, z_box]
        z = z0 + z_box
        values = column[column > 0]
        length += float(np.mean(values)) * pz / cos_sag[z]
        width = max(width, float(np.sum(values)) * py * cos_sag[z])

    dorsal, ventral = _interpolated_bridges(sagittal, lesion.offset[1:], cord, (s1, s2), f, py * cos_sag)
    total = dorsal + ventral
    return {
        "midsagittal_length_mm": length,
        "midsagittal_width_mm": width,
        "dorsal_bridge_mm": dorsal,
        "ventral_bridge_mm": ventral,
        "total_bridge_mm": total,
        "dorsal_bridge_ratio_pct": dorsal / total * 100.0 if total > 0 else 0.0,
        "ventral_bridge_ratio_pct": ventral / total * 100.0 if total > 0 else 0.0,
    }


def _interpolated_bridges(
    sagittal: tuple[np.ndarray, np.ndarray], box_yz: tuple[int, ...], cord: np.ndarray, slices: tuple[int, int],
    f: float, mm_per_voxel: np.ndarray,
) -> tuple[float, float]:
    """Minimum dorsal and ventral bridges (mm) in the interpolated midsagittal slice; `sagittal`
    holds the lesion's two (y, z) images cropped to its box, which starts at full-grid `box_yz`.

    Per axial slice z present in s1 or s2, the two slices' bridge widths are interpolated
    (a slice without lesion at z borrows the other's width). The lesion is in at least one of
    the two slices (one absent from both: _away_from_midsagittal).
    """
    per_slice: list[dict[int, tuple[int, int]]] = []
    for s, lesion_yz in zip(slices, sagittal):
        found = {}
        for z_box in np.nonzero(lesion_yz.any(axis=0))[0]:
            z = int(z_box) + box_yz[1]
            found[z] = _bridges(lesion_yz[:, z_box], cord[s, :, z], box_yz[0])
        per_slice.append(found)
    dorsal, ventral = [], []
    for z in sorted(set(per_slice[0]) | set(per_slice[1])):
        b1 = per_slice[0][z] if z in per_slice[0] else per_slice[1][z]
        b2 = per_slice[1][z] if z in per_slice[1] else per_slice[0][z]
        dorsal.append(((1.0 - f) * b1[0] + f * b2[0]) * mm_per_voxel[z])
        ventral.append(((1.0 - f) * b1[1] + f * b2[1]) * mm_per_voxel[z])
    return float(min(dorsal)), float(min(ventral))
