"""Each step of SCT's lesion pipeline (inference.sct) against SCT's own rules, on arrays whose answer is known."""
from __future__ import annotations

import math

import numpy as np
import pytest

from inference.sct import resample
from inference.sct.centerline import (
    CenterlineError,
    centerline_from_heatmap,
    centres_from_mask,
    fill_centres,
    heatmap,
    reject_outliers,
)
from inference.sct.crop import crop, crop_start_end, uncrop
from inference.sct.normalize import exp_tail, landmark_normalize, scale_intensity, standardize
from inference.sct.params import CONTRASTS, LANDMARK_PERCENTILES
from inference.sct.patches import segment_3d, z_patches

LANDMARKS = CONTRASTS["t2_ax"].landmarks


# ------------------------------------------------------------------ intensity normalisation

def test_landmark_normalize_maps_the_deciles_onto_the_standard_scale_linearly_between() -> None:
    image = np.arange(0, 1001, dtype=np.float32)
    out = landmark_normalize(image, LANDMARKS)
    # np.percentile of 0..1000 is 10 * q exactly: p1 = 10, p10 = 100, ..., p99 = 990
    for q, std in zip(LANDMARK_PERCENTILES, LANDMARKS):
        assert out[10 * q] == pytest.approx(std, rel=1e-6)
    # halfway between p50 (500) and p60 (600) is halfway between their landmarks
    assert out[550] == pytest.approx((LANDMARKS[5] + LANDMARKS[6]) / 2, rel=1e-6)


def test_landmark_tails_follow_scts_exponential_model() -> None:
    """Above p99: y = s99 + beta exp(gamma x) through (p90, s90) with the p80-p90 slope (SCT's exp_model)."""
    image = np.arange(0, 1001, dtype=np.float32)
    out = landmark_normalize(image, LANDMARKS)
    x1, x2, y1, y2, s = 800.0, 900.0, LANDMARKS[8], LANDMARKS[9], LANDMARKS[10]
    m = (y2 - y1) / (x2 - x1)
    omega = m * x2 - s + (y1 - m * x1)
    expected = s + omega * math.exp(-m * x2 / omega) * math.exp(m / omega * 1000.0)
    assert out[1000] == pytest.approx(expected, rel=1e-6)
    # below p1 (= 10): the model through (p10, s10) with the p1-p10 slope, tending to s1 = 0
    x1, x2, y1, y2, s = 10.0, 100.0, LANDMARKS[0], LANDMARKS[1], LANDMARKS[0]
    m = (y2 - y1) / (x2 - x1)
    omega = m * x2 - s + (y1 - m * x1)
    assert out[3] == pytest.approx(s + omega * math.exp(-m * x2 / omega) * math.exp(m / omega * 3.0), rel=1e-6)


def test_exp_tail_meets_the_line_with_its_slope() -> None:
    f = exp_tail((800.0, 900.0), (1268.8, 1687.1), 2611.0)
    assert float(f(np.array(900.0))) == pytest.approx(1687.1)
    slope = (float(f(np.array(900.001))) - float(f(np.array(899.999)))) / 0.002
    assert slope == pytest.approx((1687.1 - 1268.8) / 100.0, rel=1e-4)


def test_landmark_normalize_refuses_a_wrong_number_of_landmarks() -> None:
    with pytest.raises(ValueError, match="11 landmarks"):
        landmark_normalize(np.ones(10), (0.0, 1.0))


def test_scale_intensity_maps_p2_p98_to_0_255_and_clips() -> None:
    image = np.arange(0, 1001, dtype=np.float32)  # p2 = 20, p98 = 980
    out = scale_intensity(image)
    assert out[20] == pytest.approx(0.0) and out[980] == pytest.approx(255.0)
    assert out[500] == pytest.approx(255.0 * 480 / 960)
    assert out[0] == 0.0 and out[1000] == pytest.approx(255.0)


def test_standardize() -> None:
    assert standardize(np.array([835.592 + 528.386]), 835.592, 528.386)[0] == pytest.approx(1.0)


# ------------------------------------------------------------------ resampling

def test_sct_shape_rounds_like_sct() -> None:
    # t2_ms_axial: 320 x 256 x 19 voxels of 0.6875 x 0.6875 x 7.5 mm -> 0.5 mm in plane
    assert resample.sct_shape((320, 256, 19), (0.6875, 0.6875, 7.5), (0.5, 0.5, 7.5)) == (440, 352, 19)
    assert resample.sct_shape((48, 48, 19), (0.5, 0.5, 7.5), (0.5, 0.5, 0.5)) == (48, 48, 285)
    with pytest.raises(ValueError, match="empty axis"):
        resample.sct_shape((2, 2, 2), (1, 1, 1), (10, 1, 1))


def test_resample_keeps_voxel_zero_in_place_and_samples_i_n_over_n_new() -> None:
    ramp = np.broadcast_to(np.arange(7, dtype=np.float32)[:, None, None], (7, 3, 2))
    out = resample.resample(ramp, (10, 3, 2))
    expected = np.minimum(np.arange(10) * 7 / 10, 6.0)  # nearest value past the last voxel
    np.testing.assert_allclose(out[:, 1, 1], expected, atol=1e-5)


def test_resample_round_trip_to_the_native_grid_is_exact_on_a_linear_image() -> None:
    """Exact but for the last native voxel of each upsampled axis: SCT's grid keeps voxel 0 in place, so its
    last fine voxel lies past the image's end and takes the nearest value (mode 'nearest')."""
    i, j, k = np.meshgrid(np.arange(32), np.arange(25), np.arange(5), indexing="ij")
    image = (3.0 * i - 2.0 * j + 10.0 * k).astype(np.float32)
    fine = resample.resample(image, resample.sct_shape(image.shape, (0.6875, 0.6875, 7.5), (0.5, 0.5, 7.5)))
    assert fine.shape == (44, 34, 5)  # 25 * 0.6875 / 0.5 = 34.375
    back = resample.resample(fine, image.shape)
    assert back.shape == image.shape
    np.testing.assert_allclose(back[:31, :24], image[:31, :24], atol=1e-3)
    assert np.abs(back - image).max() < 1.5  # 3 per voxel along i, 2 along j: within half a voxel


def test_sampled_spacing() -> None:
    assert resample.sampled_spacing((320, 256, 19), (0.6875, 0.6875, 7.5), (440, 352, 19)) == (0.5, 0.5, 7.5)


# ------------------------------------------------------------------ crop

@pytest.mark.parametrize(("centre", "dim", "expected"), [
    (100.7, 440, (77, 125)),  # int(100.7) - 24 + 1
    (3.0, 440, (0, 48)),  # shifted in at the start
    (430.0, 440, (392, 440)),  # shifted in at the end
    (10.0, 30, (0, 30)),  # image narrower than the crop
])
def test_crop_start_end(centre: float, dim: int, expected: tuple[int, int]) -> None:
    assert crop_start_end(centre, 48, dim) == expected


def test_uncrop_restores_the_cropped_pixels_in_the_full_grid() -> None:
    rng = np.random.default_rng(0)
    image = rng.random((60, 40, 4)).astype(np.float32)
    centres = np.array([[30.0, 20.0], [np.nan, np.nan], [2.0, 39.0], [59.0, 1.0]])
    cropped, boxes = crop(image, centres, 16)
    assert cropped.shape == (16, 16, 4) and boxes.z == (0, 2, 3)
    assert not cropped[:, :, 1].any()
    back = uncrop(cropped, boxes)
    inside = np.zeros(image.shape, bool)
    for z, x0, y0 in zip(boxes.z, boxes.x0, boxes.y0):
        inside[x0:x0 + 16, y0:y0 + 16, z] = True
    np.testing.assert_array_equal(back[inside], image[inside])
    assert not back[~inside].any()
    np.testing.assert_array_equal(cropped[:, :, 0], image[23:39, 13:29, 0])  # int(30) - 16 // 2 + 1 = 23


def test_crop_pads_an_image_smaller_than_the_square_with_zeros() -> None:
    image = np.ones((10, 12, 1), np.float32)
    cropped, boxes = crop(image, np.array([[5.0, 6.0]]), 16)
    assert cropped[:10, :12, 0].all() and not cropped[10:, :, 0].any() and not cropped[:, 12:, 0].any()
    np.testing.assert_array_equal(uncrop(cropped, boxes), image)


# ------------------------------------------------------------------ 3D patches

@pytest.mark.parametrize("nz", [1, 47, 48, 49, 285, 300])
def test_z_patches_cover_every_slice_exactly_once(nz: int) -> None:
    count = np.zeros(nz, int)
    for start, stop in z_patches(nz, 48):
        assert 0 < stop - start <= 48
        count[start:stop] += 1
    assert (count == 1).all()


def test_segment_3d_thresholds_the_network_and_keeps_only_the_image_part_of_the_last_patch() -> None:
    seen: list[np.ndarray] = []

    def net(x: np.ndarray) -> np.ndarray:  # probability = the standardised input itself
        seen.append(x)
        return x

    image = np.zeros((8, 8, 60), np.float32)
    image[2, 3, 5] = 10.0  # -> (10 - 1) / 2 = 4.5 > 0.1
    image[4, 4, 55] = 1.1  # -> 0.05, under the threshold
    image[5, 5, 58] = 2.0  # -> 0.5
    out = segment_3d(image, net, mean=1.0, std=2.0, threshold=0.1, patch_z=48)
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert set(zip(*np.nonzero(out))) == {(2, 3, 5), (5, 5, 58)}
    batch = seen[0]
    assert batch.shape == (2, 1, 8, 8, 48)
    # the zero fill past the end is standardised too, as in SCT: (0 - 1) / 2
    assert batch[1, 0, 0, 0, 20] == pytest.approx(-0.5)


def test_segment_3d_skips_empty_patches() -> None:
    calls: list[int] = []

    def net(x: np.ndarray) -> np.ndarray:
        calls.append(x.shape[0])
        return np.ones_like(x)

    image = np.zeros((4, 4, 100), np.float32)
    image[0, 0, 50] = 1.0  # only the second patch holds anything
    out = segment_3d(image, net, 0.0, 1.0, 0.1, 48)
    assert calls == [1] and out[:, :, 48:96].all() and not out[:, :, :48].any() and not out[:, :, 96:].any()


# ------------------------------------------------------------------ centerline

def _bright_is_cord(threshold: float):
    """A stand-in centerline network: cord where the standardised tile is above ``threshold``."""
    def net(x: np.ndarray) -> np.ndarray:
        assert x.shape[1:] == (80, 80, 1)  # channels last, as the Keras file stores it
        return (x > threshold).astype(np.float32)
    return net


def _tube(shape: tuple[int, int, int], centres: list[tuple[int, int] | None], radius: float = 20.0) -> np.ndarray:
    """A bright disk per slice on a dark background; wide enough to hold the 98th percentile (0..255 scaling)."""
    image = np.full(shape, 100.0, np.float32)
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    for z, c in enumerate(centres):
        if c is not None:
            image[:, :, z][(x - c[0]) ** 2 + (y - c[1]) ** 2 <= radius ** 2] = 1000.0
    return image


def test_heatmap_follows_a_cord_from_slice_to_slice() -> None:
    centres = [(100 + 2 * z, 60 + z) for z in range(8)]
    image = _tube((200, 170, 8), centres)
    heat, z_max = heatmap(image, _bright_is_cord(1.0), mean=51.1417, std=57.4408)
    assert heat.shape == image.shape and z_max is None
    found = centerline_from_heatmap(heat, (0.5, 0.5, 7.5), z_max)
    np.testing.assert_allclose(found, np.array(centres, float), atol=1.0)


def test_heatmap_stops_after_ten_slices_without_cord_and_cuts_the_centerline() -> None:
    centres: list[tuple[int, int] | None] = [(90, 70)] * 5 + [None] * 14
    image = _tube((180, 160, 19), centres, radius=35.0)  # > 2 % of the padded volume
    heat, z_max = heatmap(image, _bright_is_cord(1.0), mean=51.1417, std=57.4408)
    assert z_max == 4  # last slice with cord
    found = centerline_from_heatmap(heat, (0.5, 0.5, 7.5), z_max)
    assert np.isfinite(found[:4]).all() and np.isnan(found[4:]).all()  # SCT zeroes from z_max on


def test_heatmap_without_any_cord_is_an_error() -> None:
    with pytest.raises(CenterlineError, match="no spinal cord"):
        heatmap(np.full((100, 100, 3), 5.0, np.float32), _bright_is_cord(1e9), 0.0, 1.0)


def test_outliers_are_dropped_and_gaps_filled_linearly() -> None:
    points = np.array([[10, 10], [11, 10], [60, 60], [13, 10], [np.nan, np.nan], [15, 10]], float)
    kept = reject_outliers(points, (0.5, 0.5, 5.0))
    assert np.isnan(kept[2]).all() and np.isfinite(kept[[0, 1, 3, 5]]).all()
    np.testing.assert_array_equal(fill_centres(kept), [[10, 10], [11, 10], [12, 10], [13, 10], [14, 10], [15, 10]])


def test_centres_from_mask_is_each_slices_centre_of_mass() -> None:
    mask = np.zeros((20, 20, 3), np.float32)
    mask[4:7, 10:12, 0] = 1
    mask[15, 2, 2] = 1
    c = centres_from_mask(mask)
    np.testing.assert_allclose(c[0], (5.0, 10.5))
    assert np.isnan(c[1]).all()
    np.testing.assert_allclose(c[2], (15.0, 2.0))
