"""DICOM series <-> Volume geometry, judged by round trips on real sagittal, axial and oblique data."""
from __future__ import annotations

import glob
import io
import random
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from inference.volume import (
    FrameRef,
    Volume,
    VolumeError,
    align_array,
    load_dicom_series,
    load_nifti,
    load_volume,
    orientation_label,
    save_nifti,
    volume_from_datasets,
)
from testbed.series import rotated_affine, write_series
from tests.helpers.env import require_shared

SAG = "spine-t2-sag/errsm_11/t2.nii.gz"
AXIAL = "unlabelled/t2_ms_axial.nii.gz"
SIEMENS_SAG = "dicom/dcm_qa_decubitus_HFS_t1_sag"


def cropped(rel: str, box: tuple[slice, slice, slice]) -> Volume:
    """A crop of a real NIfTI (nibabel's slicer keeps the affine right) to keep tests fast."""
    img = nib.load(str(require_shared(rel))).slicer[box]
    return Volume(np.asarray(img.get_fdata(dtype=np.float32)), np.asarray(img.affine, dtype=np.float64))


@pytest.fixture(scope="module")
def sag() -> Volume:
    return cropped(SAG, (slice(120, 220), slice(60, 140), slice(10, 40)))


@pytest.fixture(scope="module")
def axial() -> Volume:
    return cropped(AXIAL, (slice(96, 224), slice(64, 160), slice(None)))


def dicom_voxel_lps(ds: pydicom.Dataset, col: int, row: int) -> np.ndarray:
    """World LPS position of pixel (row, col) by the DICOM standard's own formula (PS3.3 C.7.6.2.1.1)."""
    ipp = np.array([float(v) for v in ds.ImagePositionPatient])
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    dr, dc = (float(v) for v in ds.PixelSpacing)
    return ipp + iop[:3] * dc * col + iop[3:] * dr * row


CASES = {
    # name: (fixture, slice_axis, rotate_deg, rotate_axis)
    "sagittal": ("sag", 2, 0.0, "row"),
    "axial": ("axial", 2, 0.0, "row"),
    "sagittal-oblique-15": ("sag", 2, 15.0, "row"),
    "sagittal-oblique-15-about-S": ("sag", 2, 15.0, "S"),
    "axial-oblique-15": ("axial", 2, 15.0, "R"),
    "sagittal-resliced-axis0": ("sag", 0, 0.0, "row"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_round_trip(case: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    fixture, slice_axis, deg, axis = CASES[case]
    src: Volume = request.getfixturevalue(fixture)
    expected_affine = rotated_affine(src.affine, src.array.shape, deg, axis, slice_axis)
    paths = write_series(src, tmp_path, slice_axis=slice_axis, rotate_deg=deg, rotate_axis=axis, uid_seed=case)
    assert len(paths) == src.array.shape[slice_axis]

    vol = load_dicom_series(tmp_path)
    assert vol.array.dtype == np.float32

    # Same voxels on the same world grid, exactly: the index transform is a pure axis permutation/flip.
    assert np.array_equal(align_array(vol.array, vol.affine, expected_affine, src.array.shape), src.array)
    index_map = np.linalg.inv(expected_affine) @ vol.affine
    assert np.allclose(index_map, np.rint(index_map), atol=1e-5)
    if slice_axis == 2:
        # The writer flips rows so slices advance along +normal: k order kept, j reversed.
        flip_j = np.eye(4)
        flip_j[1, 1], flip_j[1, 3] = -1, src.array.shape[1] - 1
        assert np.allclose(vol.affine, expected_affine @ flip_j, atol=1e-4)
        assert np.array_equal(vol.array, src.array[:, ::-1, :])

    # World coordinates of a few voxels agree with the DICOM standard's formula on the files.
    by_uid = {ds.SOPInstanceUID: ds for ds in (pydicom.dcmread(p, stop_before_pixels=True) for p in paths)}
    rng = np.random.default_rng(0)
    shape = np.array(vol.array.shape)
    for i, j, k in [(0, 0, 0), tuple(shape - 1), *(rng.integers(0, shape) for _ in range(5))]:
        ds = by_uid[vol.frames[k].sop_instance_uid]
        lps = dicom_voxel_lps(ds, i, j)
        ras = vol.affine @ np.array([i, j, k, 1.0])
        assert np.allclose(ras[:3], [-lps[0], -lps[1], lps[2]], atol=1e-4)
        src_index = np.linalg.inv(expected_affine) @ ras
        assert np.allclose(src_index[:3], np.rint(src_index[:3]), atol=1e-4)
        assert vol.array[i, j, k] == src.array[tuple(np.rint(src_index[:3]).astype(int))]

    # Frames map slice k to the instance whose position is k-th along the normal.
    assert len(vol.frames) == vol.array.shape[2]
    assert all(f.frame_number == 1 and f.sop_class_uid == "1.2.840.10008.5.1.4.1.1.4" for f in vol.frames)
    assert len({f.sop_instance_uid for f in vol.frames}) == len(vol.frames)

    # File order does not matter.
    shuffled = list(paths)
    random.Random(1).shuffle(shuffled)
    again = load_dicom_series(shuffled)
    assert np.array_equal(again.array, vol.array)
    assert np.array_equal(again.affine, vol.affine)
    assert again.frames == vol.frames


def test_oblique_series_is_really_oblique(sag: Volume, tmp_path: Path) -> None:
    paths = write_series(sag, tmp_path, rotate_deg=15, uid_seed="obl")
    iop = [float(v) for v in pydicom.dcmread(paths[0], stop_before_pixels=True).ImageOrientationPatient]
    straight_path = write_series(sag, tmp_path / "s", uid_seed="s")[0]
    straight = [float(v) for v in pydicom.dcmread(straight_path).ImageOrientationPatient]
    n1, n0 = np.cross(iop[:3], iop[3:]), np.cross(straight[:3], straight[3:])
    assert np.degrees(np.arccos(np.clip(abs(n1 @ n0), -1, 1))) == pytest.approx(15, abs=1e-6)
    assert min(abs(c) for c in iop if abs(c) > 1e-3) < 0.97  # not axis-aligned
    assert orientation_label(iop) == "sagittal"  # 15 degrees: still a sagittal(-oblique) series
    assert orientation_label(iop, tolerance=0.02) == "oblique"


def test_volume_to_nifti_to_nibabel(sag: Volume, tmp_path: Path) -> None:
    write_series(sag, tmp_path / "dcm", rotate_deg=15, uid_seed="n")
    vol = load_volume(tmp_path / "dcm")
    out = save_nifti(vol.array, vol.affine, tmp_path / "v.nii.gz")
    img = nib.load(str(out))
    assert np.allclose(img.affine, vol.affine, atol=1e-4)
    assert np.array_equal(np.asarray(img.dataobj), vol.array)
    assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
    back = load_volume(out)
    assert np.array_equal(back.array, vol.array) and np.allclose(back.affine, vol.affine, atol=1e-4)
    mask = save_nifti(vol.array > 300, vol.affine, tmp_path / "m.nii.gz")
    assert nib.load(str(mask)).get_data_dtype() == np.uint8


def test_real_siemens_series_sorted_by_position_not_instance_number() -> None:
    folder = require_shared(SIEMENS_SAG)
    vol = load_dicom_series(folder)
    assert vol.array.shape == (256, 256, 35)
    assert np.allclose(vol.spacing, (1.015625, 1.015625, 4.8), atol=1e-4)
    files = sorted(glob.glob(str(folder / "*.dcm")))
    dss = {ds.SOPInstanceUID: ds for ds in (pydicom.dcmread(f) for f in files)}
    first = dss[vol.frames[0].sop_instance_uid]
    assert orientation_label(first.ImageOrientationPatient) == "sagittal"
    normal = np.cross(*np.reshape([float(v) for v in first.ImageOrientationPatient], (2, 3)))
    along = [float(np.array(dss[f.sop_instance_uid].ImagePositionPatient, dtype=float) @ normal) for f in vol.frames]
    assert np.all(np.diff(along) > 0)
    numbers = [int(dss[f.sop_instance_uid].InstanceNumber) for f in vol.frames]
    assert numbers != sorted(numbers)  # interleaved acquisition: InstanceNumber order would be wrong
    # Pixels are the stored values of the right file.
    ds = dss[vol.frames[7].sop_instance_uid]
    assert np.array_equal(vol.array[:, :, 7], ds.pixel_array.T.astype(np.float32))


@pytest.mark.filterwarnings("ignore:The string \"HFS\" is unlikely")
def test_enhanced_legacy_converted_multiframe_equals_single_frame() -> None:
    from highdicom.legacy import LegacyConvertedEnhancedMRImage
    from pydicom.uid import generate_uid

    folder = require_shared(SIEMENS_SAG)
    datasets = [pydicom.dcmread(f) for f in sorted(glob.glob(str(folder / "*.dcm")))]
    single = volume_from_datasets(datasets)
    multi = LegacyConvertedEnhancedMRImage(
        datasets, series_instance_uid=generate_uid(), series_number=99,
        sop_instance_uid=generate_uid(), instance_number=1)
    multi = pydicom.dcmread(io.BytesIO(_to_bytes(multi)))
    vol = volume_from_datasets([multi])
    assert vol.array.shape == single.array.shape == (256, 256, 35)
    assert np.array_equal(vol.array, single.array)
    assert np.allclose(vol.affine, single.affine, atol=1e-6)
    assert all(f.sop_instance_uid == multi.SOPInstanceUID for f in vol.frames)
    assert sorted(f.frame_number for f in vol.frames) == list(range(1, 36))
    # frame f's per-frame position is the position of slice k
    for k in (0, 17, 34):
        f = vol.frames[k].frame_number
        plane = multi.PerFrameFunctionalGroupsSequence[f - 1].PlanePositionSequence[0]
        ipp = [float(v) for v in plane.ImagePositionPatient]
        assert np.allclose(vol.affine[:3, 3] + vol.affine[:3, 2] * k, [-ipp[0], -ipp[1], ipp[2]], atol=1e-4)
        assert np.array_equal(vol.array[:, :, k], multi.pixel_array[f - 1].T.astype(np.float32))

    # Pixel Value Transformation in the shared groups is applied.
    from pydicom.dataset import Dataset
    item = Dataset()
    item.RescaleSlope, item.RescaleIntercept, item.RescaleType = "2", "-10", "US"
    shared = multi.SharedFunctionalGroupsSequence[0]
    shared.PixelValueTransformationSequence = [item]
    for frame in multi.PerFrameFunctionalGroupsSequence:
        if "PixelValueTransformationSequence" in frame:
            del frame.PixelValueTransformationSequence
    scaled = volume_from_datasets([multi])
    assert np.array_equal(scaled.array, single.array * 2 - 10)


def _to_bytes(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_enhanced_mr_without_functional_groups_is_refused() -> None:
    path = require_shared("dicom/pydicom-data/emri_small.dcm")  # real file, geometry stripped by its publisher
    with pytest.raises(VolumeError, match="Functional Groups"):
        load_volume(path)


# ---------------------------------------------------------------- refusals


@pytest.fixture()
def small_series(tmp_path: Path) -> list[pydicom.Dataset]:
    rng = np.random.default_rng(3)
    array = rng.integers(0, 1000, (16, 12, 6)).astype(np.float32)
    affine = np.array([[0.0, 0, 3.0, -10], [-0.8, 0, 0, 20], [0, 0.9, 0, -30], [0, 0, 0, 1]])
    return [pydicom.dcmread(p) for p in write_series(Volume(array, affine), tmp_path, uid_seed="err")]


def _ipp(ds: pydicom.Dataset) -> np.ndarray:
    return np.array([float(v) for v in ds.ImagePositionPatient])


def test_small_series_loads(small_series: list[pydicom.Dataset]) -> None:
    vol = volume_from_datasets(small_series)
    assert vol.array.shape == (16, 12, 6)
    assert np.allclose(vol.spacing, (0.8, 0.9, 3.0))


def test_mixed_orientation(small_series: list[pydicom.Dataset]) -> None:
    small_series[3].ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    with pytest.raises(VolumeError, match="mixed orientations"):
        volume_from_datasets(small_series)


@pytest.mark.parametrize("spacing", [[-0.8, 0.0], [0.8, 0.0], [0.8, float("nan")]])
def test_pixel_spacing_that_is_not_two_positive_distances_is_refused(small_series: list[pydicom.Dataset],
                                                                     spacing: list[float]) -> None:
    # issue 23: [-0.8, 0] used to pass here and crash deep in reorientation, then be retried
    for ds in small_series:
        ds.PixelSpacing = spacing
    with pytest.raises(VolumeError, match="PixelSpacing"):
        volume_from_datasets(small_series)


def test_missing_slice_is_non_uniform(small_series: list[pydicom.Dataset]) -> None:
    with pytest.raises(VolumeError, match="non-uniform slice spacing"):
        volume_from_datasets(small_series[:2] + small_series[3:])


def test_spacing_tolerance_is_configurable(small_series: list[pydicom.Dataset]) -> None:
    normal = np.array([-1.0, 0, 0])  # slice step direction in LPS for this affine
    small_series[2].ImagePositionPatient = list(_ipp(small_series[2]) + 0.005 * normal)
    volume_from_datasets(small_series)  # 0.005 mm: within the default 1 % / 0.01 mm
    small_series[2].ImagePositionPatient = list(_ipp(small_series[2]) + 0.2 * normal)
    with pytest.raises(VolumeError, match="non-uniform slice spacing.*tolerance 0.030"):
        volume_from_datasets(small_series)
    volume_from_datasets(small_series, spacing_rel_tol=0.1)  # 0.3 mm allowed


def test_duplicate_positions(small_series: list[pydicom.Dataset]) -> None:
    small_series[4].ImagePositionPatient = small_series[1].ImagePositionPatient
    with pytest.raises(VolumeError, match="duplicate slice positions"):
        volume_from_datasets(small_series)


def test_missing_pixel_data(small_series: list[pydicom.Dataset]) -> None:
    del small_series[2].PixelData
    with pytest.raises(VolumeError, match="has no Pixel Data"):
        volume_from_datasets(small_series)


def test_short_pixel_data(small_series: list[pydicom.Dataset]) -> None:
    small_series[2].PixelData = small_series[2].PixelData[:-40]
    with pytest.raises(VolumeError, match="truncated data or a wrong header"):
        volume_from_datasets(small_series)


def test_forged_matrix_is_refused_before_allocation(small_series: list[pydicom.Dataset]) -> None:
    """Rows x Columns of 60000 with the real (short) pixel data: refused from the header, no 14 GB array."""
    for ds in small_series:
        ds.Rows = ds.Columns = 60000
    with pytest.raises(VolumeError, match="60000 x 60000 x 1 x 16/8 needs"):
        volume_from_datasets(small_series)


def test_voxel_cap(small_series: list[pydicom.Dataset], monkeypatch: pytest.MonkeyPatch) -> None:
    import inference.volume as volume_module

    monkeypatch.setattr(volume_module, "MAX_VOXELS", 1000)
    with pytest.raises(VolumeError, match="more than the 1000 a volume may have"):
        volume_from_datasets(small_series)


def test_single_slice(small_series: list[pydicom.Dataset]) -> None:
    with pytest.raises(VolumeError, match="single slice"):
        volume_from_datasets(small_series[:1])
    with pytest.raises(VolumeError, match="no DICOM instances"):
        volume_from_datasets([])


def test_mismatched_matrix(small_series: list[pydicom.Dataset]) -> None:
    ds = small_series[2]
    ds.PixelData = ds.pixel_array[:-2].tobytes()
    ds.Rows = ds.Rows - 2
    with pytest.raises(VolumeError, match="mismatched matrix"):
        volume_from_datasets(small_series)


def test_mismatched_pixel_spacing(small_series: list[pydicom.Dataset]) -> None:
    small_series[5].PixelSpacing = [0.9, 0.85]
    with pytest.raises(VolumeError, match="mismatched PixelSpacing"):
        volume_from_datasets(small_series)


@pytest.mark.parametrize("key", ["ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing"])
def test_missing_geometry(small_series: list[pydicom.Dataset], key: str) -> None:
    delattr(small_series[1], key)
    with pytest.raises(VolumeError, match=f"{key} is missing"):
        volume_from_datasets(small_series)


def test_several_series_mixed(small_series: list[pydicom.Dataset]) -> None:
    small_series[3].SeriesInstanceUID = "1.2.3.4"
    with pytest.raises(VolumeError, match="2 series mixed"):
        volume_from_datasets(small_series)


def test_not_an_image(small_series: list[pydicom.Dataset]) -> None:
    sr = pydicom.dcmread(require_shared("dicom/highdicom/sr_document.dcm"))
    with pytest.raises(VolumeError):
        volume_from_datasets([sr])


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(VolumeError, match="no DICOM files"):
        load_dicom_series(tmp_path)
    (tmp_path / "notes.txt").write_text("not dicom")
    with pytest.raises(VolumeError, match="no DICOM files"):
        load_dicom_series(tmp_path)
    with pytest.raises(VolumeError, match="not a DICOM file"):
        load_dicom_series([tmp_path / "notes.txt"])
    with pytest.raises(VolumeError, match="no such file"):
        load_volume(tmp_path / "missing.nii.gz")


# ---------------------------------------------------------------- compressed transfer syntaxes


@pytest.mark.parametrize("ts", ["rle", "jpegls", "j2k"])
def test_compressed_series_decode_equal(axial: Volume, tmp_path: Path, ts: str) -> None:
    plain = load_dicom_series(write_series(axial, tmp_path / "plain", uid_seed="c"))
    paths = write_series(axial, tmp_path / ts, transfer_syntax=ts, uid_seed="c")
    assert pydicom.dcmread(paths[0], stop_before_pixels=True).file_meta.TransferSyntaxUID.is_compressed
    vol = load_dicom_series(paths)
    assert np.array_equal(vol.array, plain.array)
    assert np.array_equal(vol.affine, plain.affine)


def test_jpeg_baseline_decodes(axial: Volume, tmp_path: Path) -> None:
    """pydicom has no JPEG baseline encoder: encode 8-bit slices with Pillow, decode through pydicom."""
    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    eight = np.round(axial.array / axial.array.max() * 255).astype(np.float32)
    paths = write_series(Volume(eight, axial.affine), tmp_path, uid_seed="j")
    for p in paths:
        ds = pydicom.dcmread(p)
        buf = io.BytesIO()
        Image.fromarray(ds.pixel_array.astype(np.uint8)).save(buf, format="JPEG", quality=95)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = encapsulate([buf.getvalue()])
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.LossyImageCompression = "01"
        ds.save_as(p, enforce_file_format=True)
    vol = load_dicom_series(paths)
    plain = align_array(eight, axial.affine, vol.affine, vol.array.shape)
    assert np.abs(vol.array - plain).mean() < 2.0  # lossy, but the same image in the same place
    assert np.corrcoef(vol.array.ravel(), plain.ravel())[0, 1] > 0.99


# ---------------------------------------------------------------- helpers


@pytest.mark.parametrize("iop,label", [
    ([1, 0, 0, 0, 1, 0], "axial"),
    ([0, 1, 0, 0, 0, -1], "sagittal"),
    ([1, 0, 0, 0, 0, -1], "coronal"),
    ([0.7071, 0.7071, 0, 0, 0, -1], "oblique"),
    ([0.7071, 0.7071, 0, -0.7071, 0.7071, 0], "axial"),  # in-plane rotation keeps the plane
])
def test_orientation_label(iop: list[float], label: str) -> None:
    assert orientation_label(iop) == label


def test_align_array_refuses_resampling() -> None:
    arr = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    with pytest.raises(VolumeError, match="axis order and flips"):
        align_array(arr, aff, np.diag([2.0, 1.0, 1.0, 1.0]), (1, 3, 4))
    shifted = aff.copy()
    shifted[0, 3] = 1
    with pytest.raises(VolumeError, match="different regions"):
        align_array(arr, shifted, aff, (2, 3, 4))


def test_load_nifti_matches_nibabel() -> None:
    path = require_shared(AXIAL)
    vol = load_nifti(path)
    img = nib.load(str(path))
    assert vol.array.dtype == np.float32 and vol.frames == []
    assert np.array_equal(vol.array, img.get_fdata())
    assert np.array_equal(vol.affine, img.affine)
    assert isinstance(FrameRef("1.2"), FrameRef)
