"""Which source image shows a lesion (or the cord) best, and its outline there: the SR's image regions.

Why: viewers (OHIF, and most that render TID 1500) draw only measurements tied to image
coordinates. Each finding gets one key image of the source series and its outline on it.

Choice of the key image (the masks are [i (column), j (row), k (slice)] in the source grid):
- A lesion in an axial series (slice axis = the input axis closest to inferior-superior): the
  slice of its maximal axial area, ``LesionMetrics.max_axial_area_slice``, the very slice its
  maximum equivalent diameter is measured on (LESION_METRICS.md, computed in inference.biomarkers).
- A lesion in a sagittal (or coronal, or oblique) series: no source image is axial, and an axial
  outline in 3D (SCOORD3D) is not drawn by stack viewers on a sagittal image. The key image is
  the slice where the lesion's section is largest (most pixels; the first on ties), which for a
  sagittal series is where the lesion is longest and widest as the radiologist sees it.
- The cord: the slice where its section is largest (mid-sagittal on a sagittal series). When
  no cord was found, the middle slice, outlined at its border: the region that was searched,
  so the SR still tells the viewer where its "no lesion" statement applies.
The outline is the largest connected region of the finding on that image (results.outline),
and its area is what the outline encloses, in mm2 (pixels x row spacing x column spacing).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pydicom

from dicom_node.results.outline import polygon_area, trace_outline
from dicom_node.results.seg import ResultBuildError
from inference.api import Analysis, FrameRef, LesionMetrics, superior_axis


@dataclass(frozen=True)
class KeyImage:
    """One finding's outline on one source image."""

    slice_index: int  # k in the [i, j, k] grid
    sop_class_uid: str
    sop_instance_uid: str
    frame_number: int | None  # set for a multi-frame source only
    outline: np.ndarray  # (n + 1, 2) (column, row) DICOM image coordinates, closed
    area_mm2: float  # enclosed by the outline


def is_axial_series(analysis: Analysis) -> bool:
    """True when the slice axis (k) is the input axis closest to inferior-superior."""
    return superior_axis(np.asarray(analysis.affine, dtype=np.float64), analysis.cord_mask.shape) == 2


def _largest_section(mask: np.ndarray) -> int | None:
    counts = mask.reshape(-1, mask.shape[2]).sum(axis=0)
    return int(np.argmax(counts)) if counts.any() else None


def _key_image(mask: np.ndarray, k: int, analysis: Analysis, frames: Sequence[FrameRef],
               source: Sequence[pydicom.Dataset], whole_image: bool = False) -> KeyImage:
    if len(frames) != mask.shape[2]:
        raise ResultBuildError(f"{len(frames)} frame references for a volume of {mask.shape[2]} slices")
    ref = frames[k]
    by_uid = {str(ds.SOPInstanceUID): ds for ds in source}
    ds = by_uid.get(ref.sop_instance_uid)
    if ds is None:
        raise ResultBuildError(f"slice {k} comes from {ref.sop_instance_uid}, which is not in the source series")
    plane = np.ones(mask.shape[1::-1], dtype=bool) if whole_image else mask[:, :, k].T
    outline = _not_four_corners(trace_outline(plane))  # a DICOM frame is (Rows, Columns) = [:, :, k].T
    col_mm, row_mm = (float(v) for v in np.linalg.norm(np.asarray(analysis.affine)[:3, :2], axis=0))
    multiframe = int(getattr(ds, "NumberOfFrames", 1) or 1) > 1
    return KeyImage(
        slice_index=k,
        sop_class_uid=str(ds.SOPClassUID),
        sop_instance_uid=ref.sop_instance_uid,
        frame_number=int(ref.frame_number) if multiframe else None,
        outline=outline,
        area_mm2=polygon_area(outline) * col_mm * row_mm,
    )


def _not_four_corners(outline: np.ndarray) -> np.ndarray:
    """A rectangle's outline with the middle of its first edge as a fifth corner.

    Why: OHIF takes any 4- or 5-point POLYLINE for its rectangle tool (@cornerstonejs/adapters
    RectangleROI.isValidMeasurement) and, when the user accepts tracking, lists the lesion twice.
    The extra vertex lies on the edge: the outline and its area are unchanged."""
    if len(outline) != 5:
        return outline
    middle = (outline[0] + outline[1]) / 2.0
    return np.vstack([outline[:1], middle[np.newaxis], outline[1:]])


def lesion_key_image(analysis: Analysis, lesion: LesionMetrics, frames: Sequence[FrameRef],
                     source: Sequence[pydicom.Dataset]) -> KeyImage | None:
    """The lesion's key image and outline (None when its label is not in the label map)."""
    mask = np.asarray(analysis.lesion_labels) == lesion.label
    k = lesion.max_axial_area_slice if is_axial_series(analysis) else None
    if k is None or not mask[:, :, k].any():
        k = _largest_section(mask)
    return None if k is None else _key_image(mask, k, analysis, frames, source)


def cord_key_image(analysis: Analysis, frames: Sequence[FrameRef],
                   source: Sequence[pydicom.Dataset]) -> KeyImage:
    """The cord's key image and outline; the middle image's border when no cord was found."""
    mask = np.asarray(analysis.cord_mask) > 0
    k = _largest_section(mask)
    if k is None:
        return _key_image(mask, mask.shape[2] // 2, analysis, frames, source, whole_image=True)
    return _key_image(mask, k, analysis, frames, source)
