"""DICOM series (or NIfTI file) -> one oriented volume with its patient-space affine.

Conventions used everywhere in `inference/`:
- ``Volume.array`` is indexed ``[i, j, k]`` where, for a DICOM series, ``i`` runs along a
  row (the column index, direction = first triplet of ImageOrientationPatient), ``j`` runs
  down the columns (row index, second triplet) and ``k`` is the slice index sorted by position
  along the slice normal (row x column direction). This is the dcm2niix / NIfTI layout.
- ``Volume.affine`` maps voxel indices (i, j, k, 1) to scanner **RAS** millimetres, as NIfTI
  and nibabel do. DICOM patient coordinates are LPS: x_ras = -x_lps, y_ras = -y_lps.
- ``Volume.frames[k]`` says which source instance/frame produced slice k, so masks can be
  written back per source frame (SEG).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class FrameRef:
    """The source of one slice: SOP Instance UID and 1-based frame number (1 for single-frame)."""

    sop_instance_uid: str
    frame_number: int = 1
    sop_class_uid: str = ""


@dataclass
class Volume:
    """A 3D image in its own grid with a voxel -> RAS mm affine."""

    array: np.ndarray  # float32, shape (I, J, K)
    affine: np.ndarray  # 4x4 float64, voxel index -> RAS mm
    frames: list[FrameRef] = field(default_factory=list)  # len K for DICOM input, empty for NIfTI

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along i, j, k."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))
