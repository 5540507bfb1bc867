"""`dicom-node analyze-lesion`: JSON on the real masks, one-line errors on bad input."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dicom_node.cli import main
from tests.helpers.env import REPO, require_shared

LESION = "lesion-example/t2_fake_lesion_lesion_seg.nii.gz"
CORD = "lesion-example/t2_fake_lesion_sc_seg.nii.gz"


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    import nibabel as nib

    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_writes_reference_json_and_summary(tmp_path, capsys):
    out_json = tmp_path / "m.json"
    code, out, err = run(["analyze-lesion", "--lesion", str(require_shared(LESION)),
                          "--cord", str(require_shared(CORD)), "--json", str(out_json)], capsys)
    assert code == 0, err
    result = json.loads(out_json.read_text())
    (lesion,) = result["lesions"]
    assert lesion["volume_mm3"] == pytest.approx(83.456114752, rel=1e-6)
    assert lesion["max_axial_damage_ratio"] == pytest.approx(0.28409090909090906, rel=1e-6)
    assert result["interpolated_midsagittal_slice"] == pytest.approx(13.120445250646725, rel=1e-6)
    assert result["total_length_mm"] == pytest.approx(10.39329544277186, rel=1e-6)
    assert "1 lesion(s)" in out and "83.46 mm3" in out


def test_non_binary_lesion_fails_with_one_line(tmp_path, capsys):
    bad = save_nifti(tmp_path / "bad.nii.gz", np.full((4, 4, 4), 2, dtype=np.uint8), np.eye(4))
    cord = save_nifti(tmp_path / "cord.nii.gz", np.ones((4, 4, 4), dtype=np.uint8), np.eye(4))
    code, out, err = run(["analyze-lesion", "--lesion", str(bad), "--cord", str(cord),
                          "--json", str(tmp_path / "m.json")], capsys)
    assert code != 0
    assert len(err.strip().splitlines()) == 1 and "0 and 1" in err
    assert not (tmp_path / "m.json").exists()


def test_shape_mismatch_and_missing_file_fail_with_one_line(tmp_path, capsys):
    lesion = save_nifti(tmp_path / "l.nii.gz", np.zeros((4, 4, 4), dtype=np.uint8), np.eye(4))
    cord = save_nifti(tmp_path / "c.nii.gz", np.ones((4, 4, 5), dtype=np.uint8), np.eye(4))
    code, _out, err = run(["analyze-lesion", "--lesion", str(lesion), "--cord", str(cord),
                           "--json", str(tmp_path / "m.json")], capsys)
    assert code != 0 and len(err.strip().splitlines()) == 1 and "shape" in err
    code, _out, err = run(["analyze-lesion", "--lesion", str(tmp_path / "nope.nii.gz"), "--cord", str(cord),
                           "--json", str(tmp_path / "m.json")], capsys)
    assert code != 0 and len(err.strip().splitlines()) == 1 and "not found" in err


def test_empty_lesion_mask_writes_zero_totals(tmp_path, capsys):
    lesion = save_nifti(tmp_path / "l.nii.gz", np.zeros((4, 4, 4), dtype=np.uint8), np.eye(4))
    cord = save_nifti(tmp_path / "c.nii.gz", np.ones((4, 4, 4), dtype=np.uint8), np.eye(4))
    code, out, _err = run(["analyze-lesion", "--lesion", str(lesion), "--cord", str(cord),
                           "--json", str(tmp_path / "m.json")], capsys)
    assert code == 0
    assert json.loads((tmp_path / "m.json").read_text())["lesions"] == []
    assert "0 lesion(s)" in out


def test_console_script_prints_no_traceback(tmp_path):
    bad = save_nifti(tmp_path / "bad.nii.gz", np.full((4, 4, 4), 3, dtype=np.uint8), np.eye(4))
    proc = subprocess.run(
        [sys.executable, "-m", "dicom_node.cli", "analyze-lesion", "--lesion", str(bad), "--cord", str(bad),
         "--json", str(tmp_path / "m.json")],
        capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
