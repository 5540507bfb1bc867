"""`dicom-node segment`: files with the input's shape and affine, one-line errors, QC picture."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from dicom_node.cli import main
from inference.volume import save_nifti
from testbed.tiny_model import make_tiny_model
from tests.unit.test_engine import PSR, _phantom

torch.set_num_threads(min(2, torch.get_num_threads()))


def _error_lines(err: str) -> list[str]:
    """stderr minus the "[  1.2s] stage" progress lines."""
    return [line for line in err.splitlines() if not line.startswith("[")]


@pytest.fixture()
def nifti(tmp_path):
    img, _ = _phantom(PSR, (40, 50, 12))
    return save_nifti(img.astype(np.int16), PSR, tmp_path / "t2.nii.gz")


def test_segment_writes_every_file_in_the_input_geometry(tmp_path, nifti, capsys) -> None:
    model = make_tiny_model(tmp_path / "model")
    out = tmp_path / "out"
    rc = main(["segment", str(nifti), "--out", str(out), "--model", str(model), "--device", "cpu", "--qc-png"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    src = nib.load(str(nifti))
    for name, dtype in (("cord.nii.gz", np.uint8), ("lesion.nii.gz", np.uint8), ("cord_prob.nii.gz", np.float32)):
        img = nib.load(str(out / name))
        assert img.shape == src.shape, name
        assert np.allclose(img.affine, src.affine, atol=1e-5), name
        assert img.get_data_dtype() == dtype, name
    cord = np.asanyarray(nib.load(str(out / "cord.nii.gz")).dataobj)
    lesion = np.asanyarray(nib.load(str(out / "lesion.nii.gz")).dataobj)
    assert set(np.unique(cord)) <= {0, 1} and not (lesion & (1 - cord)).any()
    m = json.loads((out / "measurements.json").read_text())
    for key in ("lesions", "total_volume_mm3", "cord_csa_mm2_mean", "cord_csa_mm2_per_slice",
                "cord_volume_mm3", "lesion_count"):
        assert key in m
    assert m["cord_volume_mm3"] == pytest.approx(cord.sum() * 0.8 * 0.9 * 3.0)
    with Image.open(out / "qc.png") as png:
        assert png.mode == "RGB" and png.width > 200 and png.height > 200
    assert "sliding window" in captured.err and "tiles" in captured.err
    assert "model tiny-test 0.0.1" in captured.out and "lesions:" in captured.out


def test_segment_refuses_an_untrained_model(tmp_path, nifti, capsys) -> None:
    model = make_tiny_model(tmp_path / "model", trained=False)
    rc = main(["segment", str(nifti), "--out", str(tmp_path / "out"), "--model", str(model)])
    err = capsys.readouterr().err
    assert rc != 0
    assert len(_error_lines(err)) == 1 and "not trained" in _error_lines(err)[0]
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_segment_unreadable_input_is_one_line(tmp_path, capsys) -> None:
    model = make_tiny_model(tmp_path / "model")
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a nifti")
    rc = main(["segment", str(bad), "--out", str(tmp_path / "out"), "--model", str(model)])
    err = capsys.readouterr().err
    assert rc != 0 and len(_error_lines(err)) == 1 and "bad.nii.gz" in _error_lines(err)[0]


def test_segment_missing_model_folder_is_one_line(tmp_path, nifti, capsys) -> None:
    rc = main(["segment", str(nifti), "--out", str(tmp_path / "out"), "--model", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err
    assert rc != 0 and len(_error_lines(err)) == 1 and "model.json" in _error_lines(err)[0]


def test_qc_overlay_colours_and_radiological_orientation() -> None:
    from inference.qc import CORD_RGB, LESION_RGB, SAG_HEIGHT, render_overlay

    shape = (40, 50, 12)  # PSR: i -> posterior, j -> superior, k -> right
    img = np.full(shape, 10.0, np.float32)
    img[:8, 40:, :] = 200.0  # anterior (low i) and superior (high j): must show top-left
    cord = np.zeros(shape, np.uint8)
    cord[18:24, 5:45, 4:8] = 1
    lesion = np.zeros(shape, np.uint8)
    lesion[19:22, 20:25, 5:7] = 1
    png = np.asarray(render_overlay(img, cord, lesion, PSR, title="t"))
    assert (png == CORD_RGB.astype(np.uint8)).all(-1).any()
    assert (png == LESION_RGB.astype(np.uint8)).all(-1).any()
    sag = png[16:16 + SAG_HEIGHT, : int(round(40 * 0.8 * SAG_HEIGHT / (50 * 0.9)))].mean(-1)
    h, w = sag.shape
    assert sag[: h // 4, : w // 4].mean() > 100 > sag[-h // 4:, -w // 4:].mean()


def test_segment_a_dicom_series_folder(tmp_path, nifti, capsys) -> None:
    """DICOM input: the outputs carry the geometry the DICOM reader gives the series."""
    from inference.volume import load_volume
    from testbed.series import write_series

    series = tmp_path / "series"
    write_series(nifti, series, uid_seed="segment-test")
    model = make_tiny_model(tmp_path / "model")
    out = tmp_path / "out"
    rc = main(["segment", str(series), "--out", str(out), "--model", str(model), "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    ref = load_volume(series)
    for name in ("cord.nii.gz", "lesion.nii.gz", "cord_prob.nii.gz"):
        img = nib.load(str(out / name))
        assert img.shape == ref.array.shape and np.allclose(img.affine, ref.affine, atol=1e-4), name


def test_segment_min_lesion_volume_drops_components_and_refuses_a_negative_one(tmp_path, nifti, capsys) -> None:
    model = make_tiny_model(tmp_path / "model")
    out = tmp_path / "out"
    rc = main(["segment", str(nifti), "--out", str(out), "--model", str(model), "--device", "cpu",
               "--min-lesion-volume", "1e9"])
    assert rc == 0, capsys.readouterr().err
    m = json.loads((out / "measurements.json").read_text())
    assert m["min_lesion_volume_mm3"] == 1e9 and m["lesion_count"] == 0 and m["lesions"] == []
    assert not np.asanyarray(nib.load(str(out / "lesion.nii.gz")).dataobj).any()

    rc = main(["segment", str(nifti), "--out", str(tmp_path / "neg"), "--model", str(model),
               "--min-lesion-volume", "-2"])
    err = capsys.readouterr().err
    assert rc != 0 and len(_error_lines(err)) == 1 and "--min-lesion-volume" in _error_lines(err)[0]
    assert not (tmp_path / "neg").exists()


@pytest.mark.parametrize("command, not_loaded", [
    ("segment", ("pynetdicom", "highdicom", "yaml", "pydicom", "torch")),  # torch comes when it runs
    ("status", ("torch", "pynetdicom", "highdicom")),
])
def test_a_command_imports_only_its_own_modules(command, not_loaded) -> None:
    """`segment` is run once per case and `status` by hand: neither pays for the other's imports."""
    import subprocess
    import sys

    probe = ("import sys\nfrom dicom_node.cli import main\ntry:\n    main([%r, '--help'])\nexcept SystemExit:\n"
             "    pass\nprint(' '.join(sorted(m for m in %r if m in sys.modules)), file=sys.stderr)"
             ) % (command, not_loaded)
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "usage: dicom-node " + command in proc.stdout
    assert proc.stderr.strip() == "", f"dicom-node {command} imported {proc.stderr.strip()}"
