"""Cord CSA: sct_process_segmentation's mean on the real mask, angle correction, degenerate slices."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from inference.csa import CsaError, cord_csa
from tests.helpers.env import require_shared

REFERENCE_MEAN_CSA = 45.447524  # mm^2, sct_process_segmentation on lesion-example/t2_fake_lesion_sc_seg


def as_array(values: list[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values])


@pytest.fixture(scope="module")
def example_cord() -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    img = nib.load(require_shared("lesion-example/t2_fake_lesion_sc_seg.nii.gz"))
    return np.asanyarray(img.dataobj), img.affine


def tilted_cylinder(tilt_deg: float, axis: str, radius_mm: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """A binary cylinder on a 0.5x0.5x1 mm RPI grid whose axis leans tilt_deg from z in the x-z or y-z plane."""
    px, py, pz = 0.5, 0.5, 1.0
    shape = (64, 64, 24)
    x, y, z = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    xm, ym, zm = (x - 31.5) * px, (y - 31.5) * py, (z - 11.5) * pz
    t = math.tan(math.radians(tilt_deg))
    c = math.cos(math.radians(tilt_deg))
    if axis == "x":
        d2 = ((xm - zm * t) * c) ** 2 + ym**2
    else:
        d2 = xm**2 + ((ym - zm * t) * c) ** 2
    affine = np.diag([-px, py, pz, 1.0])  # LAS = RPI grid
    return (d2 <= radius_mm**2).astype(np.uint8), affine


def test_mean_csa_matches_sct_reference(example_cord):
    result = cord_csa(*example_cord)
    # the reference is printed to 6 decimals: agree to that
    assert result.mean_mm2 == pytest.approx(REFERENCE_MEAN_CSA, abs=5e-7)


def test_per_slice_is_indexed_by_rpi_z(example_cord):
    cord, affine = example_cord
    result = cord_csa(cord, affine)
    assert len(result.per_slice_mm2) == cord.shape[1]  # PSR input: S-I is axis 1
    assert (result.si_axis, result.si_flipped) == (1, False)
    assert result.input_slice(5) == 5
    has_cord = cord.any(axis=(0, 2))
    assert [v is not None for v in result.per_slice_mm2] == list(has_cord)
    defined = [v for v in result.per_slice_mm2 if v is not None]
    assert result.mean_mm2 == pytest.approx(float(np.mean(defined)), rel=1e-15)
    json.dumps(result.to_json())


@pytest.mark.parametrize("perm,flips", [((2, 0, 1), (0,)), ((0, 2, 1), (1, 2))])
def test_reoriented_input_gives_the_same_slices(example_cord, perm, flips):
    cord, affine = example_cord
    new = np.flip(np.transpose(cord, perm), flips)
    to_old = np.zeros((4, 4))
    to_old[3, 3] = 1
    for k, old_axis in enumerate(perm):
        to_old[old_axis, k] = -1.0 if k in flips else 1.0
        to_old[old_axis, 3] = new.shape[k] - 1 if k in flips else 0.0
    base = cord_csa(cord, affine)
    moved = cord_csa(np.ascontiguousarray(new), affine @ to_old)
    np.testing.assert_allclose(as_array(moved.per_slice_mm2), as_array(base.per_slice_mm2), rtol=1e-12)
    # the S-I axis of the original (axis 1) moved to position perm.index(1)
    assert moved.si_axis == perm.index(1) and moved.si_flipped == (perm.index(1) in flips)
    z = 40
    assert moved.input_slice(z) == (new.shape[moved.si_axis] - 1 - z if moved.si_flipped else z)


def test_straight_cylinder_area_is_its_voxel_area():
    cord, affine = tilted_cylinder(0.0, "y")
    result = cord_csa(cord, affine)
    # no tilt: the partial-volume area of a binary disk is its voxel area (and close to pi r^2)
    assert result.per_slice_mm2 == pytest.approx([cord[:, :, 0].sum() * 0.25] * cord.shape[2], rel=1e-9)
    assert result.mean_mm2 == pytest.approx(math.pi * 16.0, rel=0.04)


@pytest.mark.parametrize("axis", ["x", "y"])
def test_tilted_cord_is_angle_corrected(axis):
    cord, affine = tilted_cylinder(25.0, axis)
    true_area = math.pi * 16.0
    raw_axial_area = cord.sum(axis=(0, 1)).mean() * 0.25
    assert raw_axial_area > true_area * 1.06  # the oblique cut is ~1/cos(25 deg) = 1.10 too large
    inner = cord_csa(cord, affine).per_slice_mm2[3:-3]
    assert np.mean(inner) == pytest.approx(true_area, rel=0.02)


def test_soft_mask_scaled_binary_is_identical_and_blurred_close():
    from scipy import ndimage

    cord, affine = tilted_cylinder(10.0, "y")
    binary = cord_csa(cord, affine)
    scaled = cord_csa(cord.astype(np.float32) * 0.7, affine)
    assert scaled.per_slice_mm2 == pytest.approx(binary.per_slice_mm2, rel=1e-12)
    soft = ndimage.gaussian_filter(cord.astype(np.float64), sigma=(0.7, 0.7, 0))
    soft[soft < 1e-3] = 0.0  # a soft map must be zero away from the cord
    assert cord_csa(soft, affine).mean_mm2 == pytest.approx(binary.mean_mm2, rel=0.05)


def test_slice_with_two_regions_is_undefined():
    cord, affine = tilted_cylinder(0.0, "y")
    cord[2:6, 2:6, 10] = 1  # a second, separate piece in slice 10
    result = cord_csa(cord, affine)
    assert result.per_slice_mm2[10] is None
    assert result.per_slice_mm2[9] is not None and result.per_slice_mm2[11] is not None
    assert math.isfinite(result.mean_mm2)


def test_empty_cord_gives_no_values():
    result = cord_csa(np.zeros((8, 8, 5), dtype=np.uint8), np.eye(4))
    assert result.per_slice_mm2 == [None] * 5
    assert math.isnan(result.mean_mm2)
    assert result.to_json() == {"per_slice_mm2": [None] * 5, "mean_mm2": None}


def test_bad_input_is_an_error():
    with pytest.raises(CsaError, match="3D"):
        cord_csa(np.zeros((8, 8)), np.eye(4))
    with pytest.raises(CsaError):
        cord_csa(np.zeros((8, 8, 5)), np.zeros((4, 4)))


def test_warping_only_the_cords_box_gives_the_whole_slices_numbers(example_cord, monkeypatch):
    """cord_csa warps a box around the cord (issue 21: speed); the whole-slice warp is the reference."""
    from inference import csa as csa_module

    cord, affine = example_cord
    fast = cord_csa(cord, affine)
    whole = csa_module.corrected_slice
    monkeypatch.setattr(csa_module, "corrected_slice", lambda image, scale: whole(image, scale, whole=True))
    slow = cord_csa(cord, affine)
    assert [v is None for v in fast.per_slice_mm2] == [v is None for v in slow.per_slice_mm2]
    np.testing.assert_allclose(as_array(fast.per_slice_mm2), as_array(slow.per_slice_mm2), rtol=1e-12, atol=0)
    tilted = np.zeros((40, 40, 30))
    for z in range(30):  # a cord leaning 30 degrees, touching the image's edge at the top
        x = 5 + int(z * np.tan(np.radians(30)))
        tilted[max(x - 3, 0):x + 3, 0:6, z] = 1.0
    reference = cord_csa(tilted, np.diag([0.8, 0.8, 1.0, 1.0]))  # still the whole-slice warp
    monkeypatch.setattr(csa_module, "corrected_slice", whole)
    boxed = cord_csa(tilted, np.diag([0.8, 0.8, 1.0, 1.0]))
    assert any(v is not None for v in boxed.per_slice_mm2)
    np.testing.assert_allclose(as_array(boxed.per_slice_mm2), as_array(reference.per_slice_mm2), rtol=1e-12)
