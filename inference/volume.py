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

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence, cast

import numpy as np

from inference.demographics import Demographics

if TYPE_CHECKING:
    from nibabel.spatialimages import SpatialImage


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
    patient: Demographics = field(default_factory=Demographics)  # PatientSex/PatientAge of a DICOM series

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along i, j, k."""
        si, sj, sk = (float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))
        return si, sj, sk


class VolumeError(ValueError):
    """Input that cannot be turned into one regular 3D volume; the message says what is wrong."""


# Why a cap: the array is allocated from the declared Rows x Columns x slices before any pixel
# is decoded, so forged headers must not be able to ask for tens of GB. 2**29 float32 voxels
# (2 GiB) is ~50x a whole-spine MR series (384 x 384 x 60 is 8.8 M voxels).
MAX_VOXELS = 2**29


def load_nifti(path: str | Path) -> Volume:
    """Read a 3D NIfTI file as a float32 Volume (nibabel's affine: sform if set, else qform)."""
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise VolumeError(f"{path}: no such NIfTI file")
    try:
        # nib.load is typed for every format it reads; a NIfTI file loads as a SpatialImage
        img = cast("SpatialImage", nib.load(str(path)))
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


# ---------------------------------------------------------------------------------------------
# DICOM series -> Volume

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
ORIENTATION_TOLERANCE = 1e-4  # max difference between direction cosines of one stack


@dataclass
class _Slice:
    """One 2D frame with its geometry, before sorting; pixels are decoded lazily."""

    source: str  # file name or "dataset #n" (for messages)
    dataset: Any
    frame_index: int | None  # 0-based frame of a multi-frame instance, None for single-frame
    position: np.ndarray  # IPP, LPS mm
    iop: np.ndarray  # 6 direction cosines
    pixel_spacing: tuple[float, float]  # between rows, between columns
    slope: float
    intercept: float
    ref: FrameRef


def _floats(value: Any, n: int, what: str, source: str) -> np.ndarray:
    try:
        out = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise VolumeError(f"{source}: {what} is not numeric ({value!r})") from exc
    if out.shape != (n,) or not np.all(np.isfinite(out)):
        raise VolumeError(f"{source}: {what} must have {n} finite values, got {value!r}")
    return out


def _source_name(ds: Any, index: int) -> str:
    name = getattr(ds, "filename", None)
    return str(name) if isinstance(name, (str, Path)) and str(name) else f"dataset #{index}"


def _group_item(ds: Any, frame: int, keyword: str) -> Any | None:
    """Item of functional group ``keyword`` for ``frame``: per-frame first, then shared."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and frame < len(per_frame):
        seq = per_frame[frame].get(keyword)
        if seq:
            return seq[0]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        seq = shared[0].get(keyword)
        if seq:
            return seq[0]
    return None


def _rescale(item: Any) -> tuple[float, float]:
    slope = item.get("RescaleSlope") if item is not None else None
    intercept = item.get("RescaleIntercept") if item is not None else None
    return (float(slope) if slope not in (None, "") else 1.0,
            float(intercept) if intercept not in (None, "") else 0.0)


def _slices_of(ds: Any, index: int) -> list[_Slice]:
    """Every frame of one dataset with its geometry (classic single-frame or enhanced multi-frame)."""
    source = _source_name(ds, index)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise VolumeError(f"{source}: has no Pixel Data (SOP class {ds.get('SOPClassUID', '?')}); "
                          "only image instances can form a volume")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise VolumeError(f"{source}: SamplesPerPixel={ds.SamplesPerPixel}; only grey-scale images are supported")
    sop_uid = str(ds.get("SOPInstanceUID", ""))
    sop_class = str(ds.get("SOPClassUID", ""))
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    _check_native_length(ds, source, n_frames)
    enhanced = "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds
    if not enhanced:
        if n_frames > 1:
            raise VolumeError(f"{source}: {n_frames} frames but no Per-frame/Shared Functional Groups "
                              "(PlanePositionSequence etc.): the frames cannot be placed in patient space")
        for key in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing"):
            if key not in ds or ds.get(key) in (None, ""):
                raise VolumeError(f"{source}: {key} is missing; the slice cannot be placed in patient space")
        spacing = _floats(ds.PixelSpacing, 2, "PixelSpacing", source)
        return [_Slice(source, ds, None, _floats(ds.ImagePositionPatient, 3, "ImagePositionPatient", source),
                       _floats(ds.ImageOrientationPatient, 6, "ImageOrientationPatient", source),
                       (float(spacing[0]), float(spacing[1])), *_rescale(ds),
                       FrameRef(sop_uid, 1, sop_class))]
    out = []
    for f in range(n_frames):
        where = f"{source} frame {f + 1}"
        pos = _group_item(ds, f, "PlanePositionSequence")
        ori = _group_item(ds, f, "PlaneOrientationSequence")
        meas = _group_item(ds, f, "PixelMeasuresSequence")
        for name, item, key in (("PlanePositionSequence", pos, "ImagePositionPatient"),
                                ("PlaneOrientationSequence", ori, "ImageOrientationPatient"),
                                ("PixelMeasuresSequence", meas, "PixelSpacing")):
            if item is None or item.get(key) in (None, ""):
                raise VolumeError(f"{where}: {name} > {key} is missing from the per-frame and shared "
                                  "functional groups; the frame cannot be placed in patient space")
        assert pos is not None and ori is not None and meas is not None  # each checked in the loop above
        spacing = _floats(meas.PixelSpacing, 2, "PixelSpacing", where)
        out.append(_Slice(where, ds, f, _floats(pos.ImagePositionPatient, 3, "ImagePositionPatient", where),
                          _floats(ori.ImageOrientationPatient, 6, "ImageOrientationPatient", where),
                          (float(spacing[0]), float(spacing[1])),
                          *_rescale(_group_item(ds, f, "PixelValueTransformationSequence")),
                          FrameRef(sop_uid, f + 1, sop_class)))
    return out


def _check_native_length(ds: Any, source: str, n_frames: int) -> None:
    """Refuse uncompressed Pixel Data shorter than its header declares, before anything is allocated.

    Encapsulated (compressed) data is checked after decoding, frame by frame.
    """
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows <= 0 or cols <= 0:
        raise VolumeError(f"{source}: Rows={ds.get('Rows')} Columns={ds.get('Columns')}; an image needs both > 0")
    if "PixelData" not in ds:
        return
    elem = ds["PixelData"]
    if getattr(elem, "is_undefined_length", False):
        return
    bits = int(ds.get("BitsAllocated", 16) or 16)
    needed = rows * cols * n_frames * bits // 8
    have = len(elem.value or b"")
    if have < needed:
        raise VolumeError(f"{source}: Pixel Data holds {have} bytes but Rows x Columns x frames x BitsAllocated/8 = "
                          f"{rows} x {cols} x {n_frames} x {bits}/8 needs {needed}: truncated data or a wrong header")


def _check_one_series(datasets: Sequence[Any]) -> None:
    for key, what in (("SeriesInstanceUID", "series"), ("FrameOfReferenceUID", "frames of reference")):
        values = {str(ds.get(key, "")) for ds in datasets}
        if len(values) > 1:
            shown = ", ".join(sorted(v or "<missing>" for v in values)[:4])
            raise VolumeError(f"{len(values)} {what} mixed in one volume ({key}: {shown}); "
                              "pass the instances of one series only")


def _decoded(sl: _Slice, cache: dict[int, np.ndarray]) -> np.ndarray:
    """The frame's stored pixel values as (Rows, Columns), decoding each dataset once."""
    ds = sl.dataset
    key = id(ds)
    if key not in cache:
        try:
            cache[key] = np.asarray(ds.pixel_array)
        except Exception as exc:  # pydicom raises ValueError/RuntimeError/NotImplementedError for bad data
            ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
            ts_name = getattr(ts, "name", ts) or "unknown transfer syntax"
            raise VolumeError(f"{sl.source}: pixel data cannot be decoded ({ts_name}): {exc}") from exc
    pixels = cache[key]
    rows, cols = int(ds.Rows), int(ds.Columns)
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if sl.frame_index is not None and n_frames > 1:
        if pixels.ndim != 3 or pixels.shape[0] != n_frames:
            raise VolumeError(f"{sl.source}: decoded pixel data has shape {pixels.shape}, "
                              f"expected ({n_frames}, {rows}, {cols})")
        pixels = pixels[sl.frame_index]
    if pixels.shape != (rows, cols):
        raise VolumeError(f"{sl.source}: decoded pixel data has shape {pixels.shape}, expected Rows x Columns "
                          f"= ({rows}, {cols})")
    return pixels


def volume_from_datasets(
    datasets: Sequence[Any],
    *,
    spacing_rel_tol: float = 0.01,
    spacing_abs_tol: float = 0.01,
) -> Volume:
    """One series' instances (classic single-frame or enhanced multi-frame) -> Volume.

    Slices are sorted by position along the normal (never by InstanceNumber), rescaled to
    real values, and checked: one series, one orientation, one matrix and pixel spacing,
    at least two distinct positions, uniform spacing (a slice may deviate from the straight,
    evenly spaced line by at most max(spacing_rel_tol * step, spacing_abs_tol) mm).
    """
    if len(datasets) == 0:
        raise VolumeError("no DICOM instances given")
    _check_one_series(datasets)
    slices: list[_Slice] = [s for i, ds in enumerate(datasets) for s in _slices_of(ds, i)]
    if len(slices) < 2:
        raise VolumeError(f"{slices[0].source}: a single slice cannot define a 3D volume (need at least 2)")

    first = slices[0]
    shape0 = (int(first.dataset.Rows), int(first.dataset.Columns))
    for sl in slices[1:]:
        if np.max(np.abs(sl.iop - first.iop)) > ORIENTATION_TOLERANCE:
            raise VolumeError(f"mixed orientations: {sl.source} has ImageOrientationPatient "
                              f"{np.round(sl.iop, 4).tolist()}, {first.source} has {np.round(first.iop, 4).tolist()}")
        shape = (int(sl.dataset.Rows), int(sl.dataset.Columns))
        if shape != shape0:
            raise VolumeError(f"mismatched matrix: {sl.source} is {shape[0]}x{shape[1]} (Rows x Columns), "
                              f"{first.source} is {shape0[0]}x{shape0[1]}")
        if not np.allclose(sl.pixel_spacing, first.pixel_spacing, rtol=1e-4, atol=1e-5):
            raise VolumeError(f"mismatched PixelSpacing: {sl.source} has {list(sl.pixel_spacing)}, "
                              f"{first.source} has {list(first.pixel_spacing)}")

    row_cos, col_cos = first.iop[:3], first.iop[3:]
    if not (abs(np.linalg.norm(row_cos) - 1) < 1e-3 and abs(np.linalg.norm(col_cos) - 1) < 1e-3
            and abs(float(row_cos @ col_cos)) < 1e-3):
        raise VolumeError(f"{first.source}: ImageOrientationPatient {first.iop.tolist()} is not two "
                          "perpendicular unit vectors")
    if not all(math.isfinite(v) and v > 0 for v in first.pixel_spacing):
        raise VolumeError(f"{first.source}: PixelSpacing {list(first.pixel_spacing)} is not two positive distances "
                          "in mm (the modality or an anonymiser wrote it wrong; no retry can measure this series)")
    row_cos = row_cos / np.linalg.norm(row_cos)
    col_cos = col_cos / np.linalg.norm(col_cos)
    normal = np.cross(row_cos, col_cos)

    slices.sort(key=lambda s: float(s.position @ normal))
    along = np.array([float(s.position @ normal) for s in slices])
    gaps = np.diff(along)
    dup = int(np.argmin(gaps))
    if gaps[dup] < 1e-3:
        raise VolumeError(f"duplicate slice positions: {slices[dup].source} and {slices[dup + 1].source} are both at "
                          f"{along[dup]:.3f} mm along the normal (several echoes, phases or acquisitions in one "
                          "series?)")
    positions = np.stack([s.position for s in slices])
    step = (positions[-1] - positions[0]) / (len(slices) - 1)
    expected = positions[0] + np.arange(len(slices))[:, None] * step
    deviation = np.linalg.norm(positions - expected, axis=1)
    tol = max(spacing_rel_tol * float(np.linalg.norm(step)), spacing_abs_tol)
    worst = int(np.argmax(deviation))
    if deviation[worst] > tol:
        raise VolumeError(f"non-uniform slice spacing: {slices[worst].source} is {deviation[worst]:.3f} mm off the "
                          f"evenly spaced stack (step {np.linalg.norm(step):.3f} mm, "
                          f"gaps {np.round(gaps, 3).tolist()[:8]}"
                          f"{'...' if len(gaps) > 8 else ''}, tolerance {tol:.3f} mm): missing or extra slices?")

    rows, cols = shape0
    if rows * cols * len(slices) > MAX_VOXELS:
        raise VolumeError(f"{rows} x {cols} x {len(slices)} voxels is more than the {MAX_VOXELS} a volume may have "
                          f"(2 GiB as float32); split or downsample the series before sending it")
    array = np.empty((cols, rows, len(slices)), dtype=np.float32)
    cache: dict[int, np.ndarray] = {}
    for k, sl in enumerate(slices):
        pixels = _decoded(sl, cache).astype(np.float64)
        array[:, :, k] = (pixels * sl.slope + sl.intercept).T
    between_rows, between_cols = first.pixel_spacing
    lps = np.eye(4)
    lps[:3, 0] = row_cos * between_cols
    lps[:3, 1] = col_cos * between_rows
    lps[:3, 2] = step
    lps[:3, 3] = positions[0]
    return Volume(array=array, affine=LPS_TO_RAS @ lps, frames=[s.ref for s in slices],
                  patient=Demographics.from_dataset(first.dataset))


def _dicom_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.name.upper() != "DICOMDIR")


def load_dicom_series(paths: Sequence[str | Path] | str | Path, **tolerances: float) -> Volume:
    """Read the instances of one series (a folder, or explicit file paths) into a Volume.

    In a folder, files that are not DICOM are ignored (side-car JSON, notes); explicit paths
    must all be DICOM. ``tolerances`` go to ``volume_from_datasets``.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    folder = None
    if isinstance(paths, (str, Path)):
        folder = Path(paths)
        if not folder.is_dir():
            raise VolumeError(f"{folder}: not a folder (pass a folder or a list of files)")
        files = _dicom_files(folder)
    else:
        files = [Path(p) for p in paths]
    datasets = []
    for path in files:
        try:
            datasets.append(pydicom.dcmread(path))
        except InvalidDicomError as exc:
            if folder is None:
                raise VolumeError(f"{path}: not a DICOM file ({exc})") from exc
        except OSError as exc:
            raise VolumeError(f"{path}: cannot be read ({exc})") from exc
    if not datasets:
        raise VolumeError(f"no DICOM files in {folder if folder is not None else 'the given paths'}")
    return volume_from_datasets(datasets, **tolerances)


def load_volume(path: str | Path) -> Volume:
    """A NIfTI file (.nii / .nii.gz), a folder of one DICOM series, or one multi-frame DICOM file."""
    path = Path(path)
    if path.is_dir():
        return load_dicom_series(path)
    if not path.exists():
        raise VolumeError(f"{path}: no such file or folder")
    if path.name.endswith((".nii", ".nii.gz")):
        return load_nifti(path)
    return load_dicom_series([path])


def orientation_label(iop: Sequence[float], tolerance: float = 0.1) -> str:
    """"axial" | "sagittal" | "coronal" | "oblique" from ImageOrientationPatient.

    The plane is named by its normal (row x column): if the normal's largest direction cosine
    is within ``tolerance`` of 1 (default 0.1, i.e. tilted less than ~26 degrees) the plane is
    that of the axis; an in-plane rotation never changes the label. Sagittal-oblique spine
    series tilted to follow the cord are still "sagittal"; pass a smaller tolerance to be stricter.
    """
    v = _floats(iop, 6, "ImageOrientationPatient", "orientation_label")
    normal = np.cross(v[:3], v[3:])
    norm = np.linalg.norm(normal)
    if norm < 1e-6:
        raise VolumeError(f"ImageOrientationPatient {list(iop)} has parallel row and column directions")
    normal = np.abs(normal / norm)
    axis = int(np.argmax(normal))
    if normal[axis] < 1 - tolerance:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


def align_array(array: np.ndarray, affine: np.ndarray, target_affine: np.ndarray,
                target_shape: Sequence[int], atol: float = 1e-3) -> np.ndarray:
    """``array`` (on ``affine``) laid out on the target grid, when the grids differ only by axis
    order and flips (no interpolation, so values are exact).

    Why: a DICOM series read back has its own axis order (rows, columns, normal); comparing it
    or its masks with a NIfTI on another voxel order must not resample.
    """
    array = np.asarray(array)
    t = np.linalg.inv(np.asarray(target_affine, dtype=np.float64)) @ np.asarray(affine, dtype=np.float64)
    lin, shift = t[:3, :3], t[:3, 3]
    rounded = np.rint(lin)
    if (np.max(np.abs(lin - rounded)) > atol or np.max(np.abs(shift - np.rint(shift))) > atol
            or not np.array_equal(np.abs(rounded).sum(axis=0), np.ones(3))
            or not np.array_equal(np.abs(rounded).sum(axis=1), np.ones(3))):
        raise VolumeError("the grids differ by more than axis order and flips (different spacing, rotation "
                          f"or sub-voxel shift); index transform:\n{np.round(t, 4)}")
    target_of = [int(np.argmax(np.abs(rounded[:, a]))) for a in range(3)]  # source axis a -> target axis
    order = [target_of.index(t_axis) for t_axis in range(3)]  # target axis -> source axis
    out = np.transpose(array, order)
    origin = np.rint(shift).astype(int)
    for t_axis, a in enumerate(order):
        sign = int(rounded[t_axis, a])
        n = out.shape[t_axis]
        start = origin[t_axis] if sign > 0 else origin[t_axis] - (n - 1)
        if sign < 0:
            out = np.flip(out, axis=t_axis)
        if start != 0 or n != int(target_shape[t_axis]):
            raise VolumeError(f"the grids cover different regions along target axis {t_axis}: "
                              f"offset {start}, {n} voxels vs {target_shape[t_axis]}")
    return np.ascontiguousarray(out)
