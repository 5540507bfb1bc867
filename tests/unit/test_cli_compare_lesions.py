"""`dicom-node compare-lesions` and the `segment --model sct:NAME` options that need no network."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from dicom_node.cli import main
from inference.volume import save_nifti
from tests.helpers.env import require_shared
from tests.helpers.sct import cropped_ms_scan

AFFINE = np.diag([-0.5, 0.5, 2.0, 1.0])


def _write(tmp_path: Path) -> tuple[Path, Path]:
    a = np.zeros((20, 20, 6), np.uint8)
    b = np.zeros_like(a)
    a[2:6, 2:6, 1:3] = 1
    b[3:6, 2:6, 1:3] = 1  # overlaps A's lesion
    b[12:14, 12:14, 4] = 1  # B only
    return save_nifti(a, AFFINE, tmp_path / "a.nii.gz"), save_nifti(b, AFFINE, tmp_path / "b.nii.gz")


def test_compare_lesions_prints_and_writes_the_agreement(tmp_path: Path, capsys) -> None:
    a, b = _write(tmp_path)
    out = tmp_path / "agreement.json"
    assert main(["compare-lesions", str(a), str(b), "--names", "ours,sct", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "ours: 1 lesion(s), 16.0 mm3" in text and "sct: 2 lesion(s), 14.0 mm3" in text
    assert "F1 0.67" in text and "difference -4.0 mm3" in text and "only sct: [2]" in text
    data = json.loads(out.read_text())
    assert data["names"] == ["ours", "sct"] and data["recall"] == 1.0 and data["precision"] == 0.5


def test_compare_lesions_draws_the_slices_with_lesions(tmp_path: Path, capsys) -> None:
    a, b = _write(tmp_path)
    image = save_nifti(np.random.default_rng(0).random((20, 20, 6)).astype(np.float32), AFFINE, tmp_path / "t2.nii.gz")
    png = tmp_path / "cmp.png"
    assert main(["compare-lesions", str(a), str(b), "--png", str(png), "--image", str(image)]) == 0
    with Image.open(png) as picture:
        assert picture.mode == "RGB" and picture.height > 3 * 240  # slices 1, 2 and 4 hold lesions
        pixels = np.asarray(picture)
    assert (pixels == (255, 170, 0)).all(axis=2).any() and (pixels == (0, 200, 255)).all(axis=2).any()
    assert main(["compare-lesions", str(a), str(b), "--png", str(png)]) == 1
    assert "--png needs --image" in capsys.readouterr().err


def test_compare_lesions_refuses_masks_of_different_grids(tmp_path: Path, capsys) -> None:
    a, _ = _write(tmp_path)
    other = save_nifti(np.zeros((20, 20, 5), np.uint8), AFFINE, tmp_path / "c.nii.gz")
    assert main(["compare-lesions", str(a), str(other)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("compare-lesions:") and "not on the same grid" in err and "\n" not in err


def test_segment_with_an_sct_model_names_the_missing_file(tmp_path: Path, capsys) -> None:
    image = save_nifti(np.ones((10, 10, 3), np.float32), AFFINE, tmp_path / "t2.nii.gz")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "t2_ax_lesion.h5").write_bytes(b"")
    rc = main(["segment", str(image), "--out", str(tmp_path / "out"), "--model", "sct:t2_ax_lesion",
               "--sct-data-dir", str(tmp_path / "models")])
    assert rc == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("[")]
    assert len(errors) == 1 and "t2_ctr.h5 not found in" in errors[0]


@pytest.mark.slow
def test_segment_with_an_sct_model_measures_a_cohort(tmp_path: Path) -> None:
    """Several inputs with --model sct:NAME: one load of both models, a folder per case, the tables."""
    models = require_shared("sct-models")
    scan = cropped_ms_scan(tmp_path / "in" / "ms.nii.gz")
    img = nib.load(str(scan))
    flipped = save_nifti(np.asanyarray(img.dataobj)[::-1].copy(), img.affine @ np.array(
        [[-1, 0, 0, img.shape[0] - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]), tmp_path / "in" / "ms_flip.nii.gz")
    rc = main(["segment", str(scan), str(flipped), "--out", str(tmp_path / "out"), "--model", "sct:t2_ax_lesion",
               "--sct-data-dir", str(models), "--sct-centerline", "cord", "--min-lesion-volume", "0"])
    assert rc == 0
    with open(tmp_path / "out" / "cohort.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["measured", "measured"]
    counts = [int(r["lesion_count"]) for r in rows]
    assert counts[0] > 0  # SCT's model finds lesions in this MS scan
    with open(tmp_path / "out" / "lesions.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == sum(counts)
    # the same anatomy stored in the other right-left order gives the same lesions, voxel for voxel
    lesion, lesion_flip = (np.asanyarray(nib.load(str(tmp_path / "out" / name / "lesion.nii.gz")).dataobj)
                           for name in ("ms", "ms_flip"))
    assert int(lesion.sum()) > 0 and np.array_equal(lesion_flip[::-1], lesion)
