"""Lesion metrics: the sct_analyze_lesion reference on real masks, invariances, and edge cases."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from inference.biomarkers import LesionReport, MetricsError, analyze_lesions
from tests.helpers.env import require_shared

# sct_analyze_lesion (SCT 7.x) on lesion-example, from /shared/data/README.md.
REFERENCE = {
    "volume_mm3": 83.456114752,
    "length_mm": 10.39329544277186,
    "width_mm": 5.174868720027355,
    "max_equivalent_diameter_mm": 4.336505046218873,
    "max_axial_damage_ratio": 0.28409090909090906,
    "midsagittal_length_mm": 8.373964261509414,
    "midsagittal_width_mm": 4.4323386974538606,
    "dorsal_bridge_mm": 1.3894927257153027,
    "ventral_bridge_mm": 1.476412431815768,
    "total_bridge_mm": 2.8659051575310706,
    "dorsal_bridge_ratio_pct": 48.4835557821574,
    "ventral_bridge_ratio_pct": 51.516444217842604,
}
REFERENCE_X_STAR = 13.120445250646725
LESION_KEYS = {"label", "volume_mm3", "length_mm", "width_mm", "max_equivalent_diameter_mm",
               "max_axial_damage_ratio", "midsagittal_length_mm", "midsagittal_width_mm",
               "dorsal_bridge_mm", "ventral_bridge_mm", "total_bridge_mm", "dorsal_bridge_ratio_pct",
               "ventral_bridge_ratio_pct", "centroid_ras_mm", "level_span",  # level_span: null until levels run
               "max_axial_area_slice"}
TOP_KEYS = {"lesions", "interpolated_midsagittal_slice", "total_volume_mm3", "total_length_mm",
            "max_axial_damage_ratio"}
LAS_1MM = np.diag([-1.0, 1.0, 1.0, 1.0])  # already RPI (x right->left), 1 mm


@pytest.fixture(scope="module")
def example() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import nibabel as nib

    lesion = nib.load(require_shared("lesion-example/t2_fake_lesion_lesion_seg.nii.gz"))
    cord = nib.load(require_shared("lesion-example/t2_fake_lesion_sc_seg.nii.gz"))
    return np.asanyarray(lesion.dataobj), np.asanyarray(cord.dataobj), lesion.affine


@pytest.fixture(scope="module")
def example_report(example) -> LesionReport:
    return analyze_lesions(*example)


def reorient(array: np.ndarray, affine: np.ndarray, perm: tuple[int, int, int], flips: tuple[int, ...]):
    """The same voxels on a permuted/flipped grid, with the affine that keeps them in place."""
    new = np.flip(np.transpose(array, perm), flips) if flips else np.transpose(array, perm)
    to_old = np.zeros((4, 4))
    to_old[3, 3] = 1.0
    for k, old_axis in enumerate(perm):
        if k in flips:
            to_old[old_axis, k] = -1.0
            to_old[old_axis, 3] = new.shape[k] - 1
        else:
            to_old[old_axis, k] = 1.0
    return np.ascontiguousarray(new), affine @ to_old


def cylinder_cord(shape=(21, 21, 30), center=(10, 10), radius=5) -> np.ndarray:
    """A straight cord along z (RPI grid): angles are 0, so every metric has a closed form."""
    x, y = np.mgrid[: shape[0], : shape[1]]
    disk = (x - center[0]) ** 2 + (y - center[1]) ** 2 <= radius**2
    return np.repeat(disk[:, :, None], shape[2], axis=2).astype(np.uint8)


# --- the reference case -------------------------------------------------------------------------

@pytest.mark.parametrize("key", sorted(REFERENCE))
def test_reference_metric_matches_sct(example_report, key):
    assert len(example_report.lesions) == 1
    assert getattr(example_report.lesions[0], key) == pytest.approx(REFERENCE[key], rel=1e-6)


def test_reference_midsagittal_slice_and_totals(example_report):
    assert example_report.interpolated_midsagittal_slice == pytest.approx(REFERENCE_X_STAR, rel=1e-6)
    assert example_report.total_volume_mm3 == pytest.approx(REFERENCE["volume_mm3"], rel=1e-6)
    assert example_report.total_length_mm == pytest.approx(REFERENCE["length_mm"], rel=1e-6)
    assert example_report.max_axial_damage_ratio == pytest.approx(REFERENCE["max_axial_damage_ratio"], rel=1e-6)


def test_reference_volume_uses_float32_resolution_of_voxel_size(example_report):
    # pz is stored as 0.80000114 (float32): SCT rounds it to 0.8000011. Rounding to 6 decimals
    # (0.800001) would be 1.25e-7 off, so hold the volume much tighter than 1e-6.
    assert example_report.spacing_rpi_mm == (0.8000011, 0.8, 0.8)
    assert example_report.lesions[0].volume_mm3 == pytest.approx(REFERENCE["volume_mm3"], rel=1e-12)


def test_json_schema_is_exact_and_serialisable(example_report):
    result = json.loads(json.dumps(example_report.to_json()))
    assert set(result) == TOP_KEYS
    assert [set(les) for les in result["lesions"]] == [LESION_KEYS]
    les = result["lesions"][0]
    assert les["label"] == 1 and isinstance(les["label"], int)
    assert len(les["centroid_ras_mm"]) == 3
    assert result["interpolated_midsagittal_slice"] == pytest.approx(REFERENCE_X_STAR, rel=1e-6)


def test_label_map_is_in_input_grid(example, example_report):
    lesion, cord, affine = example
    assert example_report.label_map.dtype == np.int32
    assert example_report.label_map.shape == lesion.shape
    np.testing.assert_array_equal(example_report.label_map, (lesion * cord).astype(np.int32))


def test_centroid_is_in_scanner_ras(example, example_report):
    lesion, _cord, affine = example
    ijk = np.argwhere(lesion > 0).mean(axis=0)
    expected = (affine @ np.append(ijk, 1.0))[:3]
    np.testing.assert_allclose(example_report.lesions[0].centroid_ras_mm, expected, atol=1e-9)


# --- invariances --------------------------------------------------------------------------------

@pytest.mark.parametrize("perm,flips",
                         [((0, 1, 2), (0,)), ((2, 0, 1), ()), ((1, 2, 0), (0, 2)), ((2, 1, 0), (0, 1, 2))])
def test_reorientation_gives_identical_results(example, example_report, perm, flips):
    lesion, cord, affine = example
    new_lesion, new_affine = reorient(lesion, affine, perm, flips)
    new_cord, _ = reorient(cord, affine, perm, flips)
    report = analyze_lesions(new_lesion, new_cord, new_affine)
    for key in REFERENCE:
        assert getattr(report.lesions[0], key) == pytest.approx(getattr(example_report.lesions[0], key), rel=1e-12)
    np.testing.assert_allclose(report.lesions[0].centroid_ras_mm, example_report.lesions[0].centroid_ras_mm, atol=1e-9)
    # x* is an index along the input's R-L axis (axis 2 of the original): follow that axis.
    rl_axis = perm.index(2)
    expected = REFERENCE_X_STAR if rl_axis not in flips else new_lesion.shape[rl_axis] - 1 - REFERENCE_X_STAR
    assert report.interpolated_midsagittal_slice == pytest.approx(expected, rel=1e-12)
    # the label map follows the new grid
    relabelled, _ = reorient(example_report.label_map, affine, perm, flips)
    np.testing.assert_array_equal(report.label_map, relabelled)


def test_anisotropic_voxels_scale_volume_exactly(example):
    lesion, cord, _affine = example
    # PSR grid like the example, with voxel sizes 0.5 (A-P), 1.25 (S-I), 3.0 (R-L) mm.
    affine = np.array([[0, 0, 3.0, 0], [-0.5, 0, 0, 0], [0, 1.25, 0, 0], [0, 0, 0, 1.0]])
    report = analyze_lesions(lesion, cord, affine)
    n_voxels = int((lesion * cord).sum())
    assert report.lesions[0].volume_mm3 == pytest.approx(n_voxels * 0.5 * 1.25 * 3.0, rel=1e-15)
    # voxel-count ratios do not depend on voxel size
    assert report.lesions[0].max_axial_damage_ratio == pytest.approx(REFERENCE["max_axial_damage_ratio"], rel=1e-12)


# --- closed-form cases on a straight cylinder ---------------------------------------------------

def test_straight_cord_closed_form_metrics():
    cord = cylinder_cord()
    lesion = np.zeros_like(cord)
    lesion[9:12, 8:11, 10:16] = 1  # x 9..11, y 8..10 (cord y 5..15 at x=10), z 10..15
    spacing = (0.5, 0.7, 2.0)
    affine = np.diag([-spacing[0], spacing[1], spacing[2], 1.0])
    report = analyze_lesions(lesion, cord, affine)
    (les,) = report.lesions
    assert les.volume_mm3 == pytest.approx(54 * 0.5 * 0.7 * 2.0, rel=1e-12)
    assert les.length_mm == pytest.approx(6 * 2.0, rel=1e-12)
    assert les.width_mm == pytest.approx(3 * 0.7, rel=1e-12)
    assert les.max_equivalent_diameter_mm == pytest.approx(2 * math.sqrt(9 * 0.5 * 0.7 / math.pi), rel=1e-12)
    assert les.max_axial_damage_ratio == pytest.approx(9 / cord[:, :, 0].sum(), rel=1e-12)
    assert report.interpolated_midsagittal_slice == pytest.approx(10.0, abs=1e-12)
    assert les.midsagittal_length_mm == pytest.approx(12.0, rel=1e-12)
    assert les.midsagittal_width_mm == pytest.approx(3 * 0.7, rel=1e-12)
    assert les.dorsal_bridge_mm == pytest.approx(3 * 0.7, rel=1e-12)  # lesion y 8, cord y 5
    assert les.ventral_bridge_mm == pytest.approx(5 * 0.7, rel=1e-12)  # cord y 15, lesion y 10
    assert les.total_bridge_mm == pytest.approx(8 * 0.7, rel=1e-12)
    assert les.dorsal_bridge_ratio_pct == pytest.approx(37.5, rel=1e-12)
    assert les.ventral_bridge_ratio_pct == pytest.approx(62.5, rel=1e-12)


def test_max_axial_area_slice_is_the_slice_of_the_equivalent_diameter():
    cord = cylinder_cord()
    lesion = np.zeros_like(cord)
    lesion[9:12, 9:12, 10:16] = 1  # 3x3 on z 10..15
    lesion[8:13, 8:13, 13] = 1  # 5x5 on z 13: the largest axial area
    affine = np.diag([-0.5, 0.7, 2.0, 1.0])
    (les,) = analyze_lesions(lesion, cord, affine).lesions
    assert les.max_axial_area_slice == 13
    assert les.max_equivalent_diameter_mm == pytest.approx(2 * math.sqrt(25 * 0.5 * 0.7 / math.pi), rel=1e-12)
    # an input whose S-I axis runs the other way (and comes first) names the same slice in its own indices
    flipped, flipped_affine = reorient(lesion, affine, (2, 0, 1), (0,))
    flipped_cord, _ = reorient(cord, affine, (2, 0, 1), (0,))
    (again,) = analyze_lesions(flipped, flipped_cord, flipped_affine).lesions
    assert again.max_axial_area_slice == cord.shape[2] - 1 - 13
    assert flipped[again.max_axial_area_slice].sum() == 25


def test_fractional_midsagittal_slice_interpolates_lesion_and_bridges():
    cord = np.zeros((22, 21, 30), dtype=np.uint8)
    cord[5:17, 5:16, :] = 1  # straight box, x 5..16: x centre 10.5 -> x* = 10.5
    lesion = np.zeros_like(cord)
    lesion[10, 8:11, 10:14] = 1  # in s1 = 10 only: y 8..10
    lesion[11, 9:11, 12:16] = 1  # in s2 = 11 only: y 9..10, overlapping z 12..13
    report = analyze_lesions(lesion, cord, LAS_1MM)
    assert report.interpolated_midsagittal_slice == pytest.approx(10.5, abs=1e-12)
    (les,) = report.lesions
    # M = 0.5*L[10] + 0.5*L[11]: z 10..15 non-empty, column means 0.5 or 1 (y 9..10 at z 12,13)
    assert les.midsagittal_length_mm == pytest.approx(0.5 * 2 + (2 * 1.0 + 0.5) / 3 * 2 + 0.5 * 2, rel=1e-12)
    assert les.midsagittal_width_mm == pytest.approx(0.5 * 3 + 0.5 * 2, rel=1e-12)
    # dorsal widths: s1 = 8-5 = 3, s2 = 9-5 = 4; a z missing in one slice borrows the other's width
    assert les.dorsal_bridge_mm == pytest.approx(3.0, rel=1e-12)
    assert les.ventral_bridge_mm == pytest.approx(5.0, rel=1e-12)


def test_lesion_beside_midsagittal_slice_leaves_whole_cord_as_bridge():
    cord = cylinder_cord()
    lesion = np.zeros_like(cord)
    lesion[6:8, 9:12, 5:9] = 1  # x 6..7 only; x* = 10
    (les,) = analyze_lesions(lesion, cord, LAS_1MM).lesions
    assert les.midsagittal_length_mm == 0.0 and les.midsagittal_width_mm == 0.0
    assert les.dorsal_bridge_mm == pytest.approx(11 / 2, rel=1e-12)  # cord y 5..15 at x = 10
    assert les.ventral_bridge_mm == pytest.approx(11 / 2, rel=1e-12)
    assert les.dorsal_bridge_ratio_pct == pytest.approx(50.0)


# --- labelling ----------------------------------------------------------------------------------

def test_several_lesions_are_labelled_in_rpi_order_and_totals_add_up():
    cord = cylinder_cord()
    rpi = np.zeros_like(cord)
    rpi[7:9, 9:11, 20:25] = 1  # first in RPI raster order (smallest x), and the largest
    rpi[10:12, 7:10, 3:6] = 1
    rpi[10:12, 7:10, 7:9] = 1
    rpi[10, 13, 12] = 1  # single voxel
    # Give the masks to analyze_lesions on a PSR grid so input order differs from RPI order.
    psr_perm, psr_flips = (1, 2, 0), (0, 2)
    lesion_psr, affine_psr = reorient(rpi, LAS_1MM, psr_perm, psr_flips)
    cord_psr, _ = reorient(cord, LAS_1MM, psr_perm, psr_flips)
    report = analyze_lesions(lesion_psr, cord_psr, affine_psr)
    assert [les.label for les in report.lesions] == [1, 2, 3, 4]
    assert [les.volume_mm3 for les in report.lesions] == pytest.approx([20.0, 18.0, 12.0, 1.0])
    assert report.total_volume_mm3 == pytest.approx(51.0)
    assert report.total_length_mm == pytest.approx(5 + 3 + 2 + 1)
    assert report.max_axial_damage_ratio == pytest.approx(max(les.max_axial_damage_ratio for les in report.lesions))
    label_rpi, _ = reorient(report.label_map, affine_psr, (2, 0, 1), (0, 1))  # PSR -> RPI (inverse of the above)
    assert (label_rpi[7, 9, 20] == 1 and label_rpi[10, 7, 3] == 2 and label_rpi[10, 7, 7] == 3
            and label_rpi[10, 13, 12] == 4)
    # x* (cord centre near the largest lesion) is reported along the PSR grid's R-L axis (axis 2, flipped)
    assert report.interpolated_midsagittal_slice == pytest.approx(cord.shape[0] - 1 - 10.0, abs=1e-12)


def test_each_of_many_specks_measures_as_it_does_alone():
    """Lesions are measured together (one pass over all of them); each must get exactly the
    numbers it gets when it is the only small lesion beside the same largest one (which fixes x*)."""
    from scipy import ndimage

    rng = np.random.default_rng(3)
    shape = (24, 22, 40)
    x, y, z = np.indices(shape)
    cx, cy = 11.3 + 3.0 * np.sin(z / 9.0), 10.0 + 2.0 * np.cos(z / 13.0)  # curved: angles are not 0
    cord = ((x - cx) / 6.0) ** 2 + ((y - cy) / 5.0) ** 2 <= 1.0
    largest = np.zeros(shape, dtype=bool)
    largest[9:14, 8:12, 16:24] = True
    largest &= cord
    connectivity = ndimage.generate_binary_structure(3, 2)  # lesions are 18-connected
    specks = (rng.random(shape) < 0.04) & cord & ~ndimage.binary_dilation(largest, connectivity)
    # axes permuted and flipped, so the RPI frame is not the input grid
    affine = np.array([[0.0, 0.0, -0.9, 10.0], [-0.8, 0.0, 0.0, 3.0], [0.0, 0.8, 0.0, -7.0], [0.0, 0.0, 0.0, 1.0]])
    together = analyze_lesions((largest | specks).astype(np.uint8), cord.astype(np.uint8), affine)
    assert len(together.lesions) > 40
    by_centroid = {les.centroid_ras_mm: les for les in together.lesions}
    labels, n = ndimage.label(specks, structure=connectivity)
    for k in range(1, n + 1):
        alone = analyze_lesions((largest | (labels == k)).astype(np.uint8), cord.astype(np.uint8), affine)
        assert alone.interpolated_midsagittal_slice == together.interpolated_midsagittal_slice
        (speck,) = [les for les in alone.lesions if les.volume_mm3 < max(le.volume_mm3 for le in alone.lesions)]
        assert {**speck.to_json(), "label": 0} == {**by_centroid[speck.centroid_ras_mm].to_json(), "label": 0}


def test_corner_contact_is_two_lesions_edge_contact_is_one():
    cord = cylinder_cord()
    corner = np.zeros_like(cord)
    corner[9, 9, 10] = 1
    corner[10, 10, 11] = 1  # shares only a corner: 26- but not 18-connected
    assert len(analyze_lesions(corner, cord, LAS_1MM).lesions) == 2
    edge = np.zeros_like(cord)
    edge[9, 9, 10] = 1
    edge[10, 9, 11] = 1  # shares an edge
    assert len(analyze_lesions(edge, cord, LAS_1MM).lesions) == 1


def test_voxels_outside_cord_are_not_counted():
    cord = cylinder_cord()
    lesion = np.zeros_like(cord)
    lesion[10, 13:18, 10] = 1  # y 13..15 inside the cord (radius 5 around y=10), 16..17 outside
    lesion[0, 0, 0] = 1  # a lesion wholly outside the cord vanishes
    report = analyze_lesions(lesion, cord, LAS_1MM)
    (les,) = report.lesions
    assert les.label == 1
    assert les.volume_mm3 == pytest.approx(3.0)
    assert report.label_map[10, 16, 10] == 0 and report.label_map[0, 0, 0] == 0
    assert int((report.label_map > 0).sum()) == 3


def test_labelling_happens_before_cord_masking():
    cord = cylinder_cord()
    lesion = np.zeros_like(cord)
    lesion[10, 14:17, 10] = 1  # y 14, 15 in cord; 16 outside ...
    lesion[10, 16, 11] = 1
    lesion[10, 14:17, 12] = 1  # ... bridging two in-cord parts through voxels outside the cord
    (les,) = analyze_lesions(lesion, cord, LAS_1MM).lesions
    assert les.volume_mm3 == pytest.approx(4.0)


def test_soft_cord_is_binarised_at_half():
    cord = cylinder_cord().astype(np.float32) * 0.9
    lesion = np.zeros(cord.shape, dtype=np.uint8)
    lesion[9:12, 9:12, 10:12] = 1
    (les,) = analyze_lesions(lesion, cord, LAS_1MM).lesions
    assert les.volume_mm3 == pytest.approx(18.0)


# --- degenerate input ---------------------------------------------------------------------------

def test_empty_lesion_mask_gives_zero_lesions():
    cord = cylinder_cord()
    report = analyze_lesions(np.zeros_like(cord), cord, LAS_1MM)
    assert report.lesions == []
    assert report.total_volume_mm3 == 0.0 and report.total_length_mm == 0.0 and report.max_axial_damage_ratio == 0.0
    result = json.loads(json.dumps(report.to_json()))
    assert result == {"lesions": [], "interpolated_midsagittal_slice": None, "total_volume_mm3": 0.0,
                      "total_length_mm": 0.0, "max_axial_damage_ratio": 0.0}
    assert not report.label_map.any()


def test_non_binary_lesion_is_an_error_with_one_line_message():
    cord = cylinder_cord()
    lesion = cord * 2
    with pytest.raises(MetricsError) as info:
        analyze_lesions(lesion, cord, LAS_1MM)
    assert "0 and 1" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(MetricsError):
        analyze_lesions(cord * 0.5, cord, LAS_1MM)


def test_shape_mismatch_is_an_error():
    cord = cylinder_cord()
    with pytest.raises(MetricsError, match="shape"):
        analyze_lesions(np.zeros((21, 21, 29), dtype=np.uint8), cord, LAS_1MM)
    assert issubclass(MetricsError, ValueError)
