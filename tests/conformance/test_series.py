"""The series generator: conformance (dciodvfy), identity and attributes, determinism, CLI."""
from __future__ import annotations

import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import UID

from dicom_node.cli import main as cli_main
from inference.volume import Volume, VolumeError, align_array, load_dicom_series
from testbed.series import TRANSFER_SYNTAXES, rotated_affine, write_series
from tests.helpers.env import require_shared, require_tool

SAG = "spine-t2-sag/errsm_11/t2.nii.gz"


@pytest.fixture(scope="module")
def sag() -> Volume:
    img = nib.load(str(require_shared(SAG))).slicer[100:180, 60:124, 20:32]
    return Volume(np.asarray(img.get_fdata(dtype=np.float32)), np.asarray(img.affine, dtype=np.float64))


def dciodvfy_report(path: Path) -> tuple[list[str], list[str]]:
    """(errors, warnings) lines of dciodvfy for one file."""
    tool = require_tool("dciodvfy")
    proc = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60)
    lines = (proc.stdout + proc.stderr).splitlines()
    return [ln for ln in lines if ln.startswith(("Error", "Abort"))], [ln for ln in lines if ln.startswith("Warning")]


@pytest.mark.integration
@pytest.mark.parametrize("ts", sorted(TRANSFER_SYNTAXES))
def test_dciodvfy_no_errors(sag: Volume, tmp_path: Path, ts: str) -> None:
    paths = write_series(sag, tmp_path, transfer_syntax=ts, rotate_deg=15, uid_seed="v")
    errors, warnings = dciodvfy_report(paths[0])
    assert errors == [], errors
    assert warnings == [], warnings


@pytest.mark.integration
def test_dciodvfy_rescaled_float_data(tmp_path: Path) -> None:
    """Non-integer data needs Rescale Slope/Intercept: no error, only dciodvfy's 'not in MR IOD' warnings."""
    rng = np.random.default_rng(0)
    vol = Volume(rng.normal(size=(20, 18, 3)).astype(np.float32), np.diag([0.7, 0.7, 4.0, 1.0]))
    paths = write_series(vol, tmp_path, uid_seed="f")
    errors, warnings = dciodvfy_report(paths[0])
    assert errors == []
    assert warnings and all("Rescale" in w or "Standard Extended" in w for w in warnings), warnings
    back = load_dicom_series(paths)
    step = float(pydicom.dcmread(paths[0]).RescaleSlope)
    aligned = align_array(back.array, back.affine, vol.affine, vol.array.shape)
    assert np.abs(aligned - vol.array).max() <= step / 2 + 1e-6


def test_series_attributes(sag: Volume, tmp_path: Path) -> None:
    paths = write_series(sag, tmp_path / "s", series_description="T2 SAG SPINE", patient_id="P42",
                         patient_name="Doe^Jane", body_part="CSPINE", series_number=7)
    assert [p.name for p in paths] == [f"IM{k:04d}.dcm" for k in range(1, 13)]
    dss = [pydicom.dcmread(p) for p in paths]
    for k, ds in enumerate(dss, start=1):
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4"
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert int(ds.InstanceNumber) == k and int(ds.ImagesInAcquisition) == 12
        assert ds.Modality == "MR" and ds.ScanningSequence == "SE" and ds.BodyPartExamined == "CSPINE"
        assert 80 <= float(ds.EchoTime) <= 130 and float(ds.RepetitionTime) >= 1000
        assert ds.PatientID == "P42" and str(ds.PatientName) == "Doe^Jane" and int(ds.SeriesNumber) == 7
        assert (ds.Rows, ds.Columns) == (64, 80) and ds.BitsAllocated == 16
        assert float(ds.SliceThickness) == pytest.approx(1.0) and float(ds.SpacingBetweenSlices) == pytest.approx(1.0)
        for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.FrameOfReferenceUID):
            assert UID(uid).is_valid
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        assert len({ds.get(key) for ds in dss}) == 1
    assert len({ds.SOPInstanceUID for ds in dss}) == 12
    # Slice locations advance along the normal in InstanceNumber order (scanner-like stack).
    assert np.all(np.diff([float(ds.SliceLocation) for ds in dss]) > 0)
    # Windowing is set from the data.
    assert float(dss[0].WindowWidth) > 0


def test_uid_seed_gives_identical_files(sag: Volume, tmp_path: Path) -> None:
    a = write_series(sag, tmp_path / "a", uid_seed="same", transfer_syntax="rle")
    b = write_series(sag, tmp_path / "b", uid_seed="same", transfer_syntax="rle")
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    c = write_series(sag, tmp_path / "c", uid_seed="other")
    assert pydicom.dcmread(c[0]).SOPInstanceUID != pydicom.dcmread(a[0]).SOPInstanceUID
    d = write_series(sag, tmp_path / "d")
    e = write_series(sag, tmp_path / "e")
    assert pydicom.dcmread(d[0]).SeriesInstanceUID != pydicom.dcmread(e[0]).SeriesInstanceUID


def test_given_study_and_series_uids_are_used(sag: Volume, tmp_path: Path) -> None:
    paths = write_series(sag, tmp_path, study_uid="1.2.826.0.1.3680043.8.498.1",
                         series_uid="1.2.826.0.1.3680043.8.498.2",
                         extra={"InstitutionName": "Spine Centre", "EchoTime": "95"})
    ds = pydicom.dcmread(paths[3])
    assert (ds.StudyInstanceUID == "1.2.826.0.1.3680043.8.498.1"
            and ds.SeriesInstanceUID == "1.2.826.0.1.3680043.8.498.2")
    assert ds.InstitutionName == "Spine Centre" and float(ds.EchoTime) == 95


def test_signed_values_kept_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    arr = rng.integers(-500, 2000, (16, 16, 3)).astype(np.float32)
    paths = write_series(Volume(arr, np.diag([-1.0, 1.0, 2.0, 1.0])), tmp_path, flip_rows=False)
    ds = pydicom.dcmread(paths[0])
    assert ds.PixelRepresentation == 1 and "RescaleSlope" not in ds
    vol = load_dicom_series(paths)
    assert np.array_equal(vol.array, arr[:, :, ::-1])  # flip_rows=False on this affine: k runs against the normal


def test_rotation_keeps_spacing_and_centre(sag: Volume) -> None:
    rot = rotated_affine(sag.affine, sag.array.shape, 15, "row")
    assert np.allclose(np.linalg.norm(rot[:3, :3], axis=0), np.linalg.norm(sag.affine[:3, :3], axis=0))
    centre = (np.array(sag.array.shape) - 1) / 2
    assert np.allclose(rot[:3, :3] @ centre + rot[:3, 3], sag.affine[:3, :3] @ centre + sag.affine[:3, 3])
    cos = rot[:3, 2] @ sag.affine[:3, 2] / np.linalg.norm(rot[:3, 2]) ** 2
    assert np.degrees(np.arccos(cos)) == pytest.approx(15)
    with pytest.raises(ValueError, match="rotate axis"):
        rotated_affine(sag.affine, sag.array.shape, 15, "diagonal")


def test_refusals(sag: Volume, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no encoder"):
        write_series(sag, tmp_path, transfer_syntax="1.2.840.10008.1.2.4.50")  # JPEG baseline: no pydicom encoder
    with pytest.raises(ValueError, match="not a DICOM keyword"):
        write_series(sag, tmp_path, extra={"EchoTimeMs": 5})
    with pytest.raises(ValueError, match="slice_axis"):
        write_series(sag, tmp_path, slice_axis=3)
    small = Volume(np.zeros((20, 20, 3), np.float32), np.eye(4))
    with pytest.raises(ValueError, match="at least 32 rows"):
        write_series(small, tmp_path, transfer_syntax="j2k")
    nan = Volume(np.full((4, 4, 2), np.nan, np.float32), np.eye(4))
    with pytest.raises(VolumeError, match="NaN"):
        write_series(nan, tmp_path)
    sheared = np.eye(4)
    sheared[0, 1] = 0.5
    with pytest.raises(VolumeError, match="not perpendicular"):
        write_series(Volume(np.zeros((4, 4, 2), np.float32), sheared), tmp_path)
    assert not list(tmp_path.glob("*.dcm"))


def test_cli_make_series(tmp_path: Path) -> None:
    src = require_shared("lesion-example")
    nifti = sorted(p for p in src.glob("*.nii.gz") if "seg" not in p.name)[0]
    out = tmp_path / "series"
    rc = cli_main(["make-series", str(nifti), str(out), "--description", "T2 SAG OBL", "--rotate-deg", "15",
                   "--seed", "cli", "--transfer-syntax", "jpegls"])
    assert rc == 0
    files = sorted(out.glob("IM*.dcm"))
    assert len(files) == nib.load(str(nifti)).shape[2]
    assert pydicom.dcmread(files[0]).SeriesDescription == "T2 SAG OBL"
    assert cli_main(["make-series", str(tmp_path / "missing.nii.gz"), str(out)]) == 2
