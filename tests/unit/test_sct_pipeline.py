"""SCT's pipeline end to end with stand-in networks, and the model files by name.

The stand-in lesion network marks the middle of every patch (where SCT's crop puts the
centerline), so the mask that comes back must sit on the cord's centre in every slice of the
native grid, whatever the orientation: this checks orientation, both resamplings, crop and uncrop
together. The real networks run in test_sct_models.py.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inference.model_identity import ModelIdentity
from inference.models.spec import ModelError
from inference.sct import models
from inference.sct.models import SctLesionModel, find_file, model_files
from inference.sct.params import CONTRASTS
from inference.sct.pipeline import run, segment_lesions
from inference.volume import Volume
from tests.helpers.env import require_shared


def _ctr_net(x: np.ndarray) -> np.ndarray:
    return (x > 1.0).astype(np.float32)  # the bright disk is cord (0..255 scaling, then standardised)


def _centre_net(x: np.ndarray) -> np.ndarray:
    out = np.zeros_like(x)
    out[:, :, 22:25, 22:25, :] = 1.0  # crop index 23 is the centerline voxel (int(c) - 24 + 1 = c - 23)
    return out


def _model() -> SctLesionModel:
    return SctLesionModel(contrast=CONTRASTS["t2_ax"], lesion_net=_centre_net, ctr_net=_ctr_net,
                          identity=ModelIdentity("sct:t2_ax_lesion", "test"), files=(Path("a"), Path("b")))


def _volume(affine: np.ndarray, centres: list[tuple[int, int]], shape: tuple[int, int] = (110, 95)) -> Volume:
    image = np.full((*shape, len(centres)), 100.0, np.float32)
    i, j = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    for z, (ci, cj) in enumerate(centres):
        image[:, :, z][(i - ci) ** 2 + (j - cj) ** 2 <= 9 ** 2] = 1000.0  # 6 mm radius
    return Volume(array=image, affine=affine)


@pytest.mark.parametrize("affine", [
    np.diag([-0.6875, 0.6875, 7.5, 1.0]),  # LAS, as t2_ms_axial
    np.diag([0.6875, -0.6875, 7.5, 1.0]),  # RPS: both in-plane axes flipped on the way to RPI
], ids=["LAS", "RPS"])
def test_the_mask_comes_back_on_the_cord_centre_in_the_native_grid(affine: np.ndarray) -> None:
    # the cord must lie in the posterior 40 mm: SCT's heatmap drops the anterior rest of the last 80-pixel tile
    posterior_j = (lambda j: j) if affine[1, 1] > 0 else (lambda j: 94 - j)
    centres = [(50 + 3 * z, posterior_j(30 + z)) for z in range(5)]
    volume = _volume(affine, centres)
    result = run(volume, _model())
    assert result.centerline == "cnn" and result.mask.shape == volume.array.shape and result.mask.dtype == np.uint8
    for z, (ci, cj) in enumerate(centres):
        ii, jj = np.nonzero(result.mask[:, :, z])
        assert ii.size, f"slice {z}: empty"
        assert abs(ii.mean() - ci) <= 1.5 and abs(jj.mean() - cj) <= 1.5, (z, ii.mean(), jj.mean(), ci, cj)
    np.testing.assert_array_equal(segment_lesions(volume, _model()), result.mask)


def test_a_cord_mask_places_the_crop_instead_of_the_centerline_network() -> None:
    centres = [(40, 60), (45, 62), (50, 64)]
    volume = _volume(np.diag([-0.6875, 0.6875, 7.5, 1.0]), centres)
    cord = (volume.array > 500).astype(np.uint8)
    cord[:, :, 1] = 0  # a slice without cord gets no crop, hence no lesion

    def no_ctr(x: np.ndarray) -> np.ndarray:
        raise AssertionError("the centerline network must not run when a cord mask is given")

    model = SctLesionModel(CONTRASTS["t2_ax"], _centre_net, no_ctr, ModelIdentity("x", "y"), (Path("a"), Path("b")))
    result = run(volume, model, cord_mask=cord)
    assert result.centerline == "cord mask"
    assert not result.mask[:, :, 1].any()
    for z in (0, 2):
        ii, jj = np.nonzero(result.mask[:, :, z])
        assert abs(ii.mean() - centres[z][0]) <= 1.5 and abs(jj.mean() - centres[z][1]) <= 1.5
    with pytest.raises(ValueError, match="not on the volume's grid"):
        run(volume, model, cord_mask=cord[:, :, :2])


# ------------------------------------------------------------------ model files by name

def test_model_files_by_name_in_the_shared_copy() -> None:
    folder = require_shared("sct-models")
    assert model_files("sct:t2_ax_lesion", [folder]) == (folder / "t2_ax_lesion.h5", folder / "t2_ctr.h5")
    assert model_files("sct:t2s_lesion", [folder]) == (folder / "t2s_lesion.h5", folder / "t2s_ctr.h5")


def test_sct_install_layout_is_found_from_its_data_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "deepseg_lesion_models").mkdir()
    (tmp_path / "deepseg_sc_models").mkdir()
    (tmp_path / "deepseg_lesion_models" / "t2s_lesion.h5").write_bytes(b"x")
    (tmp_path / "deepseg_sc_models" / "t2s_ctr.h5").write_bytes(b"y")
    assert model_files("sct:t2s_lesion", [tmp_path]) == (tmp_path / "deepseg_lesion_models" / "t2s_lesion.h5",
                                                           tmp_path / "deepseg_sc_models" / "t2s_ctr.h5")
    monkeypatch.setenv("SCT_DIR", str(tmp_path.parent))
    assert models.default_data_dirs() == [tmp_path.parent / "data"]


def test_a_missing_file_is_named_with_where_it_was_looked_for(tmp_path: Path) -> None:
    (tmp_path / "t2_ax_lesion.h5").write_bytes(b"x")
    with pytest.raises(ModelError, match=r"t2_ctr\.h5 not found in .*deepseg_sc_models"):
        model_files("sct:t2_ax_lesion", [tmp_path])
    with pytest.raises(ModelError, match="SCT_DIR"):
        find_file("t2_ctr.h5", [])


def test_unknown_names_list_the_known_ones() -> None:
    with pytest.raises(ModelError, match="sct:t2_ax_lesion, sct:t2s_lesion"):
        model_files("sct:t1_lesion", [])
    assert models.is_sct_spec("sct:t2s_lesion") and not models.is_sct_spec("builtin:spinecord-t2")


def test_identity_names_the_files_version_and_training_set() -> None:
    folder = require_shared("sct-models")
    ident = models.identity("sct:t2_ax_lesion", folder / "t2_ax_lesion.h5", folder / "t2_ctr.h5")
    assert ident.name == "sct:t2_ax_lesion" and ident.version.startswith("sha256:") and len(ident.version) == 19
    assert "211 axial T2w" in ident.description and "t2_ctr.h5" in ident.description


def test_analyze_measures_scts_lesions_inside_our_cord_and_names_scts_model(tmp_path: Path) -> None:
    import dataclasses

    from inference import pipeline
    from testbed.tiny_model import pass_through_model
    from tests.unit.test_engine import PSR, _phantom, _ras_spacing, _z_threshold

    shape = (56, 70, 14)
    img, _ = _phantom(PSR, shape)
    spacing = _ras_spacing(PSR)
    cord_z = 1.0 / (1.0 + np.exp(-_z_threshold(img, PSR, spacing, 30.0)))
    model = pass_through_model(tmp_path, spacing=spacing)
    model = dataclasses.replace(model, meta=dataclasses.replace(model.meta, thresholds=(float(cord_z), 1.0)))
    volume = Volume(img, PSR)
    result = pipeline.analyze(volume, model, lesion_model=_model(), sct_centerline="cord")
    cord = result.cord_mask.astype(bool)
    assert cord.any() and result.lesion_mask.any()
    assert not (result.lesion_mask.astype(bool) & ~cord).any()  # measured inside our cord only
    raw = segment_lesions(volume, _model(), cord_mask=result.cord_mask)
    np.testing.assert_array_equal(result.lesion_mask, raw & result.cord_mask)
    assert result.lesion_model is not None and result.lesion_model.name == "sct:t2_ax_lesion"
    assert result.model.name != "sct:t2_ax_lesion" and "sct lesions" in result.timings
    assert result.metrics.lesion_count >= 1
    with pytest.raises(ValueError, match="cnn or cord"):
        pipeline.analyze(volume, model, lesion_model=_model(), sct_centerline="optic")


def test_when_scts_centerline_network_finds_no_cord_our_cord_places_the_crop(tmp_path: Path, caplog) -> None:
    """A job whose cord we segmented is not failed for SCT's centerline: SCT's -centerline file mode, logged."""
    import dataclasses
    import logging

    from inference import pipeline
    from testbed.tiny_model import pass_through_model
    from tests.unit.test_engine import PSR, _phantom, _ras_spacing, _z_threshold

    img, _ = _phantom(PSR, (56, 70, 14))
    spacing = _ras_spacing(PSR)
    cord_z = 1.0 / (1.0 + np.exp(-_z_threshold(img, PSR, spacing, 30.0)))
    model = pass_through_model(tmp_path, spacing=spacing)
    model = dataclasses.replace(model, meta=dataclasses.replace(model.meta, thresholds=(float(cord_z), 1.0)))
    blind = dataclasses.replace(_model(), ctr_net=lambda x: np.zeros_like(x))  # sees no cord anywhere
    volume = Volume(img, PSR)
    with caplog.at_level(logging.WARNING, logger="inference.pipeline"):
        result = pipeline.analyze(volume, model, lesion_model=blind)
    assert "centerline network failed" in caplog.text and "our cord's centres" in caplog.text
    via_cord = pipeline.analyze(volume, model, lesion_model=_model(), sct_centerline="cord")
    np.testing.assert_array_equal(result.lesion_mask, via_cord.lesion_mask)
    assert result.lesion_mask.any()
