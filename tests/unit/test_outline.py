"""Outlines along pixel edges: closed, exact area, and they map back onto the mask."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from dicom_node.results.outline import OutlineError, largest_region, polygon_area, trace_outline


def inside(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pixels whose centre (column + 0.5, row + 0.5) lies inside the closed polyline (even-odd rule)."""
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    x, y = cols + 0.5, rows + 0.5
    out = np.zeros(shape, dtype=bool)
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        crosses = (y0 > y) != (y1 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        out ^= crosses & (x < x_at)
    return out


def test_one_pixel_is_its_four_corners_closed():
    mask = np.zeros((5, 6), dtype=bool)
    mask[2, 3] = True  # row 2, column 3
    points = trace_outline(mask)
    assert points.tolist() == [[3, 2], [4, 2], [4, 3], [3, 3], [3, 2]]
    assert polygon_area(points) == 1.0


def test_l_shape_keeps_only_corners():
    mask = np.zeros((6, 6), dtype=bool)
    mask[1:5, 1] = True
    mask[4, 1:4] = True
    points = trace_outline(mask)
    assert len(points) == 7  # six corners of an L, first repeated
    assert polygon_area(points) == mask.sum()
    np.testing.assert_array_equal(inside(points, mask.shape), mask)


def test_hole_is_filled_and_largest_component_wins():
    mask = np.zeros((12, 12), dtype=bool)
    mask[1:6, 1:6] = True
    mask[3, 3] = False  # a hole: the outline is the outer boundary
    mask[8:10, 8:10] = True  # a smaller second component: not outlined
    points = trace_outline(mask)
    assert polygon_area(points) == 25
    np.testing.assert_array_equal(inside(points, mask.shape), largest_region(mask))


@pytest.mark.parametrize("seed", range(20))
def test_random_blobs_round_trip(seed):
    rng = np.random.default_rng(seed)
    mask = ndimage.binary_opening(rng.random((40, 30)) < 0.55, iterations=1)
    mask |= ndimage.binary_dilation(rng.random((40, 30)) < 0.01, iterations=3)
    if not mask.any():
        pytest.skip("empty draw")
    points = trace_outline(mask)
    region = largest_region(mask)
    assert (points[0] == points[-1]).all()
    assert polygon_area(points) == region.sum()  # exact: the outline runs along pixel edges
    np.testing.assert_array_equal(inside(points, mask.shape), region)
    assert set(np.unique(points)) <= set(range(0, 41))  # integer corners inside the image
    steps = np.diff(points, axis=0)
    assert ((steps == 0).sum(axis=1) == 1).all()  # axis-parallel edges, no repeated points


def test_diagonal_touch_is_two_regions():
    mask = np.zeros((4, 4), dtype=bool)
    mask[1, 1] = mask[2, 2] = True
    assert largest_region(mask).sum() == 1
    assert polygon_area(trace_outline(mask)) == 1.0


def test_empty_mask_says_so():
    with pytest.raises(OutlineError, match="empty"):
        trace_outline(np.zeros((3, 3), dtype=bool))
