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
from pathlib import Path

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


class VolumeError(ValueError):
    """Input that cannot be turned into one regular 3D volume; the message says what is wrong."""


def load_nifti(path: str | Path) -> Volume:
    """Read a 3D NIfTI file as a float32 Volume (nibabel's affine: sform if set, else qform)."""
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise VolumeError(f"{path}: no such NIfTI file")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises several unrelated types for bad files
        raise VolumeError(f"{path}: not a readable NIfTI file ({exc})") from exc
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise VolumeError(f"{path}: expected a 3D image, got shape {img.shape}")
    array = np.asarray(img.get_fdata(dtype=np.float32)).reshape(shape)
    if not np.all(np.isfinite(array)):
        raise VolumeError(f"{path}: contains NaN or infinite voxels")
    return Volume(array=array, affine=np.asarray(img.affine, dtype=np.float64), frames=[])


def save_nifti(array: np.ndarray, affine: np.ndarray, path: str | Path) -> Path:
    """Write a 3D array as NIfTI with the given voxel -> RAS affine (sform and qform, scanner space).

    The array's dtype is kept (uint8 masks stay uint8), so what is written is what was computed.
    """
    import nibabel as nib

    array = np.asarray(array)
    affine = np.asarray(affine, dtype=np.float64)
    if array.ndim != 3:
        raise VolumeError(f"save_nifti: expected a 3D array, got shape {array.shape}")
    if affine.shape != (4, 4):
        raise VolumeError(f"save_nifti: expected a 4x4 affine, got shape {affine.shape}")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    img = nib.Nifti1Image(array, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units("mm")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path
