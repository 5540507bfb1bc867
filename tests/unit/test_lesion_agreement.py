"""Lesion-wise agreement of two masks: matched groups, misses, F1, Dice and volumes on masks built by hand."""
from __future__ import annotations

import numpy as np
import pytest

from inference.lesion_agreement import compare_lesions

AFFINE = np.diag([0.5, 0.5, 2.0, 1.0])  # 0.5 mm³ voxels


def _masks() -> tuple[np.ndarray, np.ndarray]:
    a = np.zeros((30, 30, 10), np.uint8)
    b = np.zeros_like(a)
    a[2:6, 2:6, 1:3] = 1  # A1: 32 voxels; B1 covers half of it
    b[2:6, 2:4, 1:3] = 1
    a[10:20, 10:12, 4:6] = 1  # A2: 40 voxels; B splits it into B2 and B3
    b[10:13, 10:12, 4:6] = 1
    b[16:20, 10:12, 4:6] = 1
    a[25:27, 25:27, 8:9] = 1  # A3: missed by B
    b[25:28, 2:5, 8:10] = 1  # B4: not in A
    return a, b


def test_groups_misses_and_rates() -> None:
    a, b = _masks()
    agree = compare_lesions(a, b, AFFINE)
    assert agree.a_count == 3 and agree.b_count == 4
    assert agree.a_volumes_mm3 == (16.0, 20.0, 2.0)
    assert [(g.a_labels, g.b_labels) for g in agree.groups] == [((1,), (1,)), ((2,), (2, 3))]
    first, second = agree.groups
    assert (first.a_volume_mm3, first.b_volume_mm3, first.volume_difference_mm3) == (16.0, 8.0, -8.0)
    assert first.dice == pytest.approx(2 * 16 / (32 + 16))
    assert (second.a_volume_mm3, second.b_volume_mm3) == (20.0, 14.0)
    assert agree.a_only == (3,) and agree.b_only == (4,)
    assert agree.recall == pytest.approx(2 / 3) and agree.precision == pytest.approx(3 / 4)
    assert agree.f1 == pytest.approx(2 * (2 / 3) * (3 / 4) / (2 / 3 + 3 / 4))
    overlap = int((a & b).sum())
    assert agree.dice == pytest.approx(2 * overlap / (int(a.sum()) + int(b.sum())))
    assert agree.to_json()["matched_groups"][1]["b_labels"] == [2, 3]


def test_identical_masks_agree_fully_and_empty_ones_are_undefined() -> None:
    a, _ = _masks()
    same = compare_lesions(a, a, AFFINE)
    assert same.f1 == 1.0 and same.dice == 1.0 and not same.a_only and not same.b_only
    empty = np.zeros_like(a)
    none = compare_lesions(empty, empty, AFFINE)
    assert none.f1 is None and none.dice is None and none.recall is None
    one_sided = compare_lesions(a, empty, AFFINE)
    assert one_sided.f1 == 0.0 and one_sided.recall == 0.0 and one_sided.precision is None


def test_a_lesion_bridging_two_of_the_other_joins_them_in_one_group() -> None:
    a = np.zeros((20, 5, 5), np.uint8)
    b = np.zeros_like(a)
    a[0:4, 2, 2] = 1
    a[8:12, 2, 2] = 1
    b[2:10, 2, 2] = 1
    agree = compare_lesions(a, b, AFFINE)
    assert [(g.a_labels, g.b_labels) for g in agree.groups] == [((1, 2), (1,))]


def test_masks_of_different_grids_are_refused() -> None:
    with pytest.raises(ValueError, match="different grids"):
        compare_lesions(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)), AFFINE)
