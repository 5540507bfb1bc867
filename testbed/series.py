"""NIfTI volume (or Volume) -> a realistic single-frame DICOM MR series, one instance per slice.

Why: there is no real spine MR DICOM series to test with, so tests and demos make them from
the real NIfTI volumes. The geometry must be exact (it is what the round-trip tests judge),
so every position and direction is derived from the NIfTI affine (RAS) converted to DICOM
patient coordinates (LPS: x and y negated).

Slice layout: slices are taken along array axis ``slice_axis``; of the two remaining axes the
lower-numbered one runs along a DICOM row (ImageOrientationPatient first triplet) and the
other down the columns. By default the row order is flipped when needed so that the slice
stack advances along +(row x column), the way scanners number their slices; the reader then
returns the same k order as the NIfTI (and rows reversed when a flip was made).
"""
from __future__ import annotations

import argparse
import datetime as _dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from inference.version import package_version
from inference.volume import Volume, VolumeError, load_nifti

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

# CLI names -> transfer syntax UIDs that pydicom 3 can encode with the installed plugins.
TRANSFER_SYNTAXES: dict[str, str] = {
    "explicit": EXPLICIT_VR_LITTLE_ENDIAN,
    "rle": "1.2.840.10008.1.2.5",  # RLE Lossless (pydicom native / pylibjpeg-rle)
    "jpegls": "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless (pyjpegls)
    "j2k": "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless (pylibjpeg-openjpeg)
}


def _uid(seed: str | None, *parts: str) -> str:
    """Deterministic UID from a seed (same seed -> same UIDs), else a fresh random one."""
    from pydicom.uid import generate_uid

    if seed is None:
        return str(generate_uid())
    return str(generate_uid(entropy_srcs=[seed, *parts]))


def rotation_matrix(axis: Sequence[float] | np.ndarray, deg: float) -> np.ndarray:
    """3x3 right-handed rotation by ``deg`` degrees about ``axis`` (Rodrigues)."""
    u = np.asarray(axis, dtype=np.float64)
    norm = np.linalg.norm(u)
    if u.shape != (3,) or norm < 1e-9:
        raise ValueError(f"rotation axis must be a non-zero 3-vector, got {axis!r}")
    u = u / norm
    t = np.deg2rad(deg)
    k = np.array([[0, -u[2], u[1]], [u[2], 0, -u[0]], [-u[1], u[0], 0]])
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * (k @ k)


def rotated_affine(
    affine: np.ndarray,
    shape: Sequence[int],
    deg: float,
    axis: str | Sequence[float] = "row",
    slice_axis: int = 2,
) -> np.ndarray:
    """The affine rotated by ``deg`` about an axis through the volume centre (RAS).

    ``axis``: "row" / "column" / "normal" (directions of the in-plane axes or the slice axis
    for this ``slice_axis``), one of "R", "A", "S", or an explicit RAS 3-vector. The voxel grid
    is unchanged; only where it sits in the patient moves, which makes an oblique series.
    """
    affine = np.asarray(affine, dtype=np.float64)
    if deg == 0:
        return affine.copy()
    in_plane = [a for a in range(3) if a != slice_axis]
    named: dict[str, Sequence[float] | np.ndarray] = {
        "row": affine[:3, in_plane[0]], "column": affine[:3, in_plane[1]], "normal": affine[:3, slice_axis],
        "R": (1.0, 0.0, 0.0), "A": (0.0, 1.0, 0.0), "S": (0.0, 0.0, 1.0)}
    if isinstance(axis, str):
        if axis not in named:
            raise ValueError(f"rotate axis {axis!r}: use one of {sorted(named)} or a RAS 3-vector")
        vec = named[axis]
    else:
        vec = axis
    rot = rotation_matrix(vec, deg)
    centre = affine[:3, :3] @ ((np.asarray(shape[:3], dtype=np.float64) - 1) / 2) + affine[:3, 3]
    out = np.eye(4)
    out[:3, :3] = rot @ affine[:3, :3]
    out[:3, 3] = rot @ (affine[:3, 3] - centre) + centre
    return out


def _stored_values(array: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Pixel values to store plus (slope, intercept). Integer data is kept exactly.

    Why: the round trip must be exact for integer scans; only non-integer data is quantised
    to 16 bits with a Rescale Slope/Intercept (error at most half a step).
    """
    a = np.asarray(array)
    if not np.all(np.isfinite(a)):
        raise VolumeError("the volume has NaN or infinite voxels: DICOM pixel data cannot hold them")
    lo, hi = float(a.min()), float(a.max())
    if np.all(np.mod(a, 1) == 0):
        if lo >= 0 and hi <= 65535:
            return a.astype(np.uint16), 1.0, 0.0
        if lo >= -32768 and hi <= 32767:
            return a.astype(np.int16), 1.0, 0.0
    slope = (hi - lo) / 65535.0 if hi > lo else 1.0
    stored = np.rint((a.astype(np.float64) - lo) / slope)
    return np.clip(stored, 0, 65535).astype(np.uint16), slope, lo


def _ds(value: float) -> str:
    """A DS string of at most 16 characters, as precise as fits."""
    from pydicom.valuerep import format_number_as_ds

    return format_number_as_ds(float(value) + 0.0)  # + 0.0 turns -0.0 into 0.0


def check_transfer_syntax(transfer_syntax: str) -> str:
    """The UID for a CLI name or UID, if pydicom can encode it here; else a ValueError naming the options."""
    from pydicom.pixels import get_encoder

    uid = TRANSFER_SYNTAXES.get(transfer_syntax, transfer_syntax)
    if uid == EXPLICIT_VR_LITTLE_ENDIAN:
        return uid
    try:
        encoder = get_encoder(uid)
    except NotImplementedError as exc:
        raise ValueError(f"transfer syntax {transfer_syntax!r}: pydicom has no encoder for it; "
                         f"use one of {sorted(TRANSFER_SYNTAXES)}") from exc
    if not encoder.is_available:
        raise ValueError(f"transfer syntax {transfer_syntax!r}: encoder needs {encoder.missing_dependencies}")
    return uid


@dataclass(frozen=True)
class SliceGeometry:
    """Where every slice of the series sits in the patient (LPS), as DICOM states it.

    Why a value of its own: the round-trip tests judge exactly these numbers, so they are
    derived once from the affine and every instance reads them from here.
    """

    slice_axis: int
    n_slices: int
    flip_rows: bool
    origin: np.ndarray  # ImagePositionPatient of slice 0
    step: np.ndarray  # from one slice's position to the next
    row_cos: np.ndarray  # ImageOrientationPatient, first triplet
    col_cos: np.ndarray  # ImageOrientationPatient, second triplet
    normal: np.ndarray  # row_cos x col_cos
    row_spacing: float  # between columns (along a row)
    col_spacing: float  # between rows (down a column)
    thickness: float
    spacing_normal: float  # SpacingBetweenSlices

    def pixels(self, stored: np.ndarray, k: int) -> np.ndarray:
        """Slice ``k`` of the stored array as DICOM rows x columns."""
        plane = np.take(stored, k, axis=self.slice_axis)  # axes (a_row, a_col) in that order
        return np.ascontiguousarray(plane.T[::-1] if self.flip_rows else plane.T)

    def position(self, k: int) -> np.ndarray:
        return self.origin + k * self.step


def slice_geometry(affine: np.ndarray, shape: Sequence[int], slice_axis: int,
                   flip_rows: bool | None) -> SliceGeometry:
    """The series' geometry from a RAS affine; a VolumeError when DICOM cannot state it."""
    lps = LPS_FROM_RAS @ affine
    a_row, a_col = [a for a in range(3) if a != slice_axis]
    row_vec, col_vec, step = lps[:3, a_row], lps[:3, a_col], lps[:3, slice_axis]
    row_sp, col_sp = float(np.linalg.norm(row_vec)), float(np.linalg.norm(col_vec))
    row_cos, col_cos = row_vec / row_sp, col_vec / col_sp
    if abs(float(row_cos @ col_cos)) > 1e-4:
        raise VolumeError(f"in-plane axes are not perpendicular (cos = {row_cos @ col_cos:.5f}): "
                          "DICOM cannot represent a sheared slice plane; pick another slice_axis")
    normal = np.cross(row_cos, col_cos)
    if abs(float(step @ normal)) < 1e-6:
        raise VolumeError("the slice axis lies in the slice plane: the affine is degenerate")
    if flip_rows is None:
        flip_rows = float(step @ normal) < 0
    origin = lps[:3, 3].copy()
    if flip_rows:
        origin = origin + (shape[a_col] - 1) * col_vec
        col_cos = -col_cos
    normal = np.cross(row_cos, col_cos)
    return SliceGeometry(slice_axis=slice_axis, n_slices=int(shape[slice_axis]), flip_rows=bool(flip_rows),
                         origin=origin, step=step, row_cos=row_cos, col_cos=col_cos, normal=normal,
                         row_spacing=row_sp, col_spacing=col_sp, thickness=float(np.linalg.norm(step)),
                         spacing_normal=abs(float(step @ normal)))


@dataclass(frozen=True)
class SeriesHeader:
    """What every instance of the series shares: patient, study and series identity, date, protocol."""

    patient_name: str
    patient_id: str
    series_description: str
    protocol_name: str
    body_part: str
    series_number: int
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    date: str
    time: str
    uid_seed: str | None


@dataclass(frozen=True)
class PixelEncoding:
    """How stored pixel values map to real ones, and the display window: the same for every slice."""

    slope: float
    intercept: float
    window_low: float
    window_high: float


def _pixel_encoding(stored: np.ndarray, slope: float, intercept: float) -> PixelEncoding:
    """The window spans the 0.5-99.5 percentiles of the real values."""
    real = stored.astype(np.float64) * slope + intercept
    lo, hi = np.percentile(real, [0.5, 99.5]) if real.size else (0.0, 1.0)
    return PixelEncoding(slope, intercept, float(lo), float(hi))


def _check_request(vol: Volume, slice_axis: int, transfer_syntax: str, extra: dict[str, Any] | None) -> str:
    """Refuse what cannot be written before anything is; returns the transfer syntax UID."""
    from pydicom.datadict import tag_for_keyword

    if vol.array.ndim != 3:
        raise VolumeError(f"expected a 3D volume, got shape {vol.array.shape}")
    if slice_axis not in (0, 1, 2):
        raise ValueError(f"slice_axis must be 0, 1 or 2, got {slice_axis}")
    ts_uid = check_transfer_syntax(transfer_syntax)
    for key in (extra or {}):
        if tag_for_keyword(key) is None:
            raise ValueError(f"extra: {key!r} is not a DICOM keyword (e.g. 'EchoTime', 'InstitutionName')")
    return ts_uid


def _check_plane_size(ts_uid: str, shape: Sequence[int], slice_axis: int) -> None:
    a_row, a_col = [a for a in range(3) if a != slice_axis]
    n_rows, n_cols = shape[a_col], shape[a_row]
    if ts_uid == TRANSFER_SYNTAXES["j2k"] and min(n_rows, n_cols) < 32:
        raise ValueError("JPEG 2000 (openjpeg, 6 resolution levels) needs at least 32 rows and 32 columns; "
                         f"slices here are {n_rows}x{n_cols}: use rle or jpegls")


def write_series(
    source: str | Path | Volume,
    out_dir: str | Path,
    *,
    series_description: str = "T2 SAG SPINE",
    protocol_name: str | None = None,
    patient_id: str = "SPINE0001",
    patient_name: str = "Spine^Test",
    study_uid: str | None = None,
    series_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    series_number: int = 1,
    body_part: str = "SPINE",
    slice_axis: int = 2,
    rotate_deg: float = 0.0,
    rotate_axis: str | Sequence[float] = "row",
    flip_rows: bool | None = None,
    transfer_syntax: str = EXPLICIT_VR_LITTLE_ENDIAN,
    uid_seed: str | None = None,
    extra: dict[str, Any] | None = None,
) -> list[Path]:
    """Write ``source`` as a classic MR Image Storage series, files ``IM0001.dcm``... in ``out_dir``.

    ``flip_rows`` None: flip the row order only if that makes slices advance along +normal
    (scanner-like stacks); True/False forces it. ``extra``: DICOM keyword -> value set on every
    instance last (overrides defaults). ``uid_seed``: same seed -> identical UIDs and dates.
    Returns the written paths in InstanceNumber order.
    """
    vol = source if isinstance(source, Volume) else load_nifti(source)
    ts_uid = _check_request(vol, slice_axis, transfer_syntax, extra)
    affine = rotated_affine(vol.affine, vol.array.shape, rotate_deg, rotate_axis, slice_axis)
    geometry = slice_geometry(affine, vol.array.shape, slice_axis, flip_rows)
    _check_plane_size(ts_uid, vol.array.shape, slice_axis)
    stored, slope, intercept = _stored_values(vol.array)
    encoding = _pixel_encoding(stored, slope, intercept)
    header = series_header(
        uid_seed, patient_name=patient_name, patient_id=patient_id, series_description=series_description,
        protocol_name=protocol_name or series_description, body_part=body_part, series_number=series_number,
        study_uid=study_uid, series_uid=series_uid, frame_of_reference_uid=frame_of_reference_uid)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for k in range(geometry.n_slices):
        pixels = geometry.pixels(stored, k)
        ds = mr_instance(header, geometry, k, pixels, encoding)
        for key, value in (extra or {}).items():
            setattr(ds, key, value)
        if ts_uid != EXPLICIT_VR_LITTLE_ENDIAN:
            ds.compress(ts_uid, pixels, generate_instance_uid=False)
        path = out_dir / f"IM{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def series_header(uid_seed: str | None, *, study_uid: str | None, series_uid: str | None,
                  frame_of_reference_uid: str | None, **fields: Any) -> SeriesHeader:
    """The shared header; UIDs not given are derived from ``uid_seed`` (or random), and with a
    seed the date is a fixed one so that the same seed writes identical files."""
    study = study_uid or _uid(uid_seed, "study")
    series = series_uid or _uid(uid_seed, "series", study, fields["series_description"],
                                str(fields["series_number"]))
    for_uid = frame_of_reference_uid or _uid(uid_seed, "for", study)
    when = _dt.datetime(2024, 1, 1, 12, 0, 0) if uid_seed is not None else _dt.datetime.now()
    return SeriesHeader(study_uid=study, series_uid=series, frame_of_reference_uid=for_uid,
                        date=when.strftime("%Y%m%d"), time=when.strftime("%H%M%S"), uid_seed=uid_seed, **fields)


def mr_instance(header: SeriesHeader, geometry: SliceGeometry, k: int, pixels: np.ndarray,
                encoding: PixelEncoding) -> Any:
    """Slice ``k`` as an MR Image Storage dataset (uncompressed, file meta included)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID

    sop_uid = _uid(header.uid_seed, "sop", header.series_uid, str(k))
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(MR_IMAGE_STORAGE)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.file_meta.TransferSyntaxUID = UID(EXPLICIT_VR_LITTLE_ENDIAN)
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID = MR_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    _set_study(ds, header)
    _set_acquisition(ds, header, geometry)
    _set_plane(ds, header, geometry, k)
    _set_pixels(ds, pixels, geometry, encoding)
    return ds


def _set_study(ds: Any, header: SeriesHeader) -> None:
    """Patient, study, series and equipment: a plausible hospital's spine MR."""
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    ds.InstanceCreationDate, ds.InstanceCreationTime = header.date, header.time
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = header.date
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = header.time
    ds.AccessionNumber = ""
    ds.Modality = "MR"
    ds.Manufacturer = "spine-dicom-node"
    ds.ManufacturerModelName = "nifti_to_dicom"
    ds.SoftwareVersions = package_version()
    ds.InstitutionName = "Test Hospital"
    ds.StationName = "MRSPINE1"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "MRI SPINE"
    ds.SeriesDescription = header.series_description
    ds.PatientName = header.patient_name
    ds.PatientID = header.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = header.study_uid
    ds.SeriesInstanceUID = header.series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = str(header.series_number)
    ds.AcquisitionNumber = "1"


def _set_acquisition(ds: Any, header: SeriesHeader, geometry: SliceGeometry) -> None:
    """A T2 turbo spin echo: 3D (SPACE-like) for thin slices, 2D TSE otherwise."""
    three_d = geometry.thickness <= 1.5
    ds.BodyPartExamined = header.body_part
    ds.ScanningSequence = "SE"
    ds.SequenceVariant = ["SK", "SP", "OSP"]
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "3D" if three_d else "2D"
    ds.SequenceName = "*spc_314ns" if three_d else "*tse2d1_17"
    ds.SliceThickness = _ds(geometry.thickness)
    ds.RepetitionTime = "1500" if three_d else "3000"
    ds.EchoTime = "120" if three_d else "100"
    ds.NumberOfAverages = "1"
    ds.ImagingFrequency = "123.25"
    ds.ImagedNucleus = "1H"
    ds.EchoNumbers = "1"
    ds.MagneticFieldStrength = "3"
    ds.SpacingBetweenSlices = _ds(geometry.spacing_normal)
    ds.EchoTrainLength = "60" if three_d else "17"
    ds.PixelBandwidth = "590"
    ds.ProtocolName = header.protocol_name
    ds.FlipAngle = "120" if three_d else "150"
    ds.PatientPosition = "HFS"


def _set_plane(ds: Any, header: SeriesHeader, geometry: SliceGeometry, k: int) -> None:
    """Where slice ``k`` is: instance number, position, orientation, frame of reference."""
    position = geometry.position(k)
    ds.InstanceNumber = str(k + 1)
    ds.ImagePositionPatient = [_ds(v) for v in position]
    ds.ImageOrientationPatient = [_ds(v) for v in (*geometry.row_cos, *geometry.col_cos)]
    ds.FrameOfReferenceUID = header.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = _ds(float(position @ geometry.normal))
    ds.ImagesInAcquisition = str(geometry.n_slices)


def _set_pixels(ds: Any, pixels: np.ndarray, geometry: SliceGeometry, encoding: PixelEncoding) -> None:
    """Image Pixel module, rescale (only for quantised data) and window."""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.PixelSpacing = [_ds(geometry.col_spacing), _ds(geometry.row_spacing)]  # between rows, between columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
    if (encoding.slope, encoding.intercept) != (1.0, 0.0):
        ds.RescaleIntercept = _ds(encoding.intercept)
        ds.RescaleSlope = _ds(encoding.slope)
        ds.RescaleType = "US"
    lo, hi = encoding.window_low, encoding.window_high
    ds.WindowCenter = _ds((lo + hi) / 2)
    ds.WindowWidth = _ds(max(hi - lo, 1.0))
    ds.PixelData = pixels.tobytes()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`dicom-node make-series IN.nii.gz OUT_DIR ...`"""
    parser.add_argument("input", type=Path, help="NIfTI volume (.nii / .nii.gz)")
    parser.add_argument("out_dir", type=Path, help="folder for IM0001.dcm, IM0002.dcm, ...")
    parser.add_argument("--description", default="T2 SAG SPINE", help="SeriesDescription (and ProtocolName)")
    parser.add_argument("--patient-id", default="SPINE0001")
    parser.add_argument("--patient-name", default="Spine^Test")
    parser.add_argument("--study-uid", default=None, help="put the series into this study")
    parser.add_argument("--series-number", type=int, default=1)
    parser.add_argument("--body-part", default="SPINE", help="BodyPartExamined, e.g. SPINE, CSPINE, TSPINE, LSPINE")
    parser.add_argument("--slice-axis", type=int, default=2, choices=(0, 1, 2), help="NIfTI array axis to slice along")
    parser.add_argument("--rotate-deg", type=float, default=0.0, help="rotate the geometry (oblique series)")
    parser.add_argument("--rotate-axis", default="row", help="row, column, normal, R, A or S")
    parser.add_argument("--transfer-syntax", default="explicit", choices=sorted(TRANSFER_SYNTAXES))
    parser.add_argument("--seed", default=None, help="make UIDs and dates deterministic")


def run(args: argparse.Namespace) -> int:
    try:
        paths = write_series(
            args.input, args.out_dir, series_description=args.description, patient_id=args.patient_id,
            patient_name=args.patient_name, study_uid=args.study_uid, series_number=args.series_number,
            body_part=args.body_part, slice_axis=args.slice_axis, rotate_deg=args.rotate_deg,
            rotate_axis=args.rotate_axis, transfer_syntax=args.transfer_syntax, uid_seed=args.seed)
    except (VolumeError, ValueError) as exc:
        print(f"make-series: {exc}")
        return 2
    print(f"wrote {len(paths)} instances to {args.out_dir}")
    return 0
