"""`dicom-node segment` on several inputs: one model load, a folder per case, cohort.csv and
lesions.csv, a failed case does not stop the others, a second run skips what is whole."""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import torch

from dicom_node.cli import main
from inference.files import replaced_atomically
from inference.volume import save_nifti
from testbed.tiny_model import make_tiny_model
from tests.unit.test_engine import PSR, _phantom

torch.set_num_threads(min(2, torch.get_num_threads()))


def _table(path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture()
def cohort(tmp_path):
    """Two phantom cases of different sizes and one file that is not an image."""
    inputs = []
    for name, shape in (("sub-01_T2w", (40, 50, 12)), ("sub-02_T2w", (36, 48, 10))):
        img, _ = _phantom(PSR, shape)
        inputs.append(save_nifti(img.astype(np.int16), PSR, tmp_path / "in" / f"{name}.nii.gz"))
    broken = tmp_path / "in" / "sub-03_T2w.nii.gz"
    broken.write_bytes(b"not a nifti")
    return [*inputs, broken]


def test_a_cohort_gets_a_folder_per_case_and_two_tables(tmp_path, cohort, capsys) -> None:
    model = make_tiny_model(tmp_path / "model")
    out = tmp_path / "out"
    rc = main(["segment", *map(str, cohort), "--out", str(out), "--model", str(model), "--device", "cpu"])
    captured = capsys.readouterr()
    assert rc == 1  # one case failed; the others were measured
    assert "2 case(s) measured, 0 measured before, 1 failed" in captured.out
    assert "case 3/3 sub-03_T2w: failed:" in captured.err and "sub-03_T2w.nii.gz" in captured.err
    assert sorted(p.name for p in out.iterdir()) == ["cohort.csv", "lesions.csv", "sub-01_T2w", "sub-02_T2w"]
    rows = _table(out / "cohort.csv")
    assert [(r["case"], r["status"]) for r in rows] == [
        ("sub-01_T2w", "measured"), ("sub-02_T2w", "measured"), ("sub-03_T2w", "failed")]
    assert rows[2]["error"] and rows[2]["lesion_count"] == ""
    lesions = _table(out / "lesions.csv")
    for row in rows[:2]:
        folder = out / row["case"]
        assert sorted(p.name for p in folder.iterdir()) == ["cord.nii.gz", "cord_prob.nii.gz", "lesion.nii.gz",
                                                            "measurements.json"]
        m = json.loads((folder / "measurements.json").read_text())
        for key in ("lesion_count", "total_volume_mm3", "cord_volume_mm3", "cord_csa_mm2_mean"):
            assert float(row[key]) == m[key], key  # the table holds the same numbers, at full precision
        mine = [r for r in lesions if r["case"] == row["case"]]
        assert len(mine) == m["lesion_count"]
        for r, lesion in zip(mine, m["lesions"]):
            assert float(r["volume_mm3"]) == lesion["volume_mm3"]
            assert float(r["centroid_ras_z_mm"]) == lesion["centroid_ras_mm"][2]
    assert rows[0]["cord_volume_mm3"] != rows[1]["cord_volume_mm3"]  # two different cases, not one twice


def test_a_second_run_skips_whole_cases_and_redoes_a_stopped_one(tmp_path, cohort, capsys) -> None:
    model = make_tiny_model(tmp_path / "model")
    out = tmp_path / "out"
    args = ["segment", *map(str, cohort[:2]), "--out", str(out), "--model", str(model), "--device", "cpu"]
    assert main(args) == 0
    kept = (out / "sub-01_T2w" / "cord.nii.gz").stat().st_mtime_ns
    first = _table(out / "cohort.csv")
    # a run stopped in the middle of sub-02: its folder was never renamed into place
    os.replace(out / "sub-02_T2w", out / ".sub-02_T2w.partial")
    (out / ".sub-02_T2w.partial" / "measurements.json").unlink()
    capsys.readouterr()
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "sub-01_T2w: already in" in err and "case 2/2 sub-02_T2w:" in err
    assert (out / "sub-01_T2w" / "cord.nii.gz").stat().st_mtime_ns == kept
    assert not (out / ".sub-02_T2w.partial").exists() and (out / "sub-02_T2w" / "measurements.json").is_file()
    again = _table(out / "cohort.csv")
    assert [r["status"] for r in again] == ["measured before", "measured"]
    assert [r["total_volume_mm3"] for r in again] == [r["total_volume_mm3"] for r in first]


def test_clashing_case_names_are_refused_before_anything_runs(tmp_path, capsys) -> None:
    img, _ = _phantom(PSR, (40, 50, 12))
    a = save_nifti(img.astype(np.int16), PSR, tmp_path / "a" / "t2.nii.gz")
    b = save_nifti(img.astype(np.int16), PSR, tmp_path / "b" / "t2.nii")
    rc = main(["segment", str(a), str(b), "--out", str(tmp_path / "out"), "--model", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err
    assert rc == 1 and "would both be case 't2'" in err and "model.json" not in err
    assert not (tmp_path / "out").exists()


def test_replaced_atomically_leaves_the_old_file_or_the_new_one(tmp_path) -> None:
    target = tmp_path / "measurements.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with replaced_atomically(target) as tmp:
            assert tmp.name.endswith(".partial.json") and tmp.parent == tmp_path
            tmp.write_text("half")
            raise RuntimeError("stopped")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["measurements.json"]
    with replaced_atomically(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["measurements.json"]
