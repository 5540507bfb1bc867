"""SCT's t2_ax_lesion model, read from the shared .h5 files, on a crop of the real MS scan t2_ms_axial.

A crop (128 x 128 voxels in plane, 8 of 19 slices around the lesions SCT finds on the whole scan)
keeps it to a few seconds; the whole scan is the bench's (bench/sct_lesion.py) and the doc's.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from inference.sct.models import load_sct_model
from inference.sct.params import IN_PLANE_MM
from inference.sct.pipeline import run
from inference.volume import Volume, load_volume
from tests.helpers.env import require_shared

torch.set_num_threads(min(2, torch.get_num_threads()))
START = (96, 52, 4)
SIZE = (128, 128, 8)


@pytest.fixture(scope="module")
def crop() -> Volume:
    volume = load_volume(require_shared("unlabelled/t2_ms_axial.nii.gz"))
    box = tuple(slice(s, s + n) for s, n in zip(START, SIZE))
    affine = volume.affine.copy()
    affine[:3, 3] = volume.affine[:3, :3] @ np.array(START, float) + volume.affine[:3, 3]
    return Volume(array=np.ascontiguousarray(volume.array[box]), affine=affine)


def test_the_pipeline_runs_on_real_data_and_returns_a_mask_in_the_native_grid(crop: Volume) -> None:
    model = load_sct_model("sct:t2_ax_lesion", [require_shared("sct-models")])
    result = run(crop, model)
    assert result.mask.shape == crop.array.shape and result.mask.dtype == np.uint8
    assert set(np.unique(result.mask)) == {0, 1}
    assert result.centerline == "cnn" and np.isfinite(result.centres_rpi).all()  # the cord is in every slice
    # the centerline runs smoothly (< 3 mm per 7.5 mm slice) and every lesion lies within 12 mm of it
    # (LAS: RPI x, y are the input's i, j; the centres are on the 0.5 mm grid)
    centres = result.centres_rpi * IN_PLANE_MM / np.array(crop.spacing[:2])
    assert np.abs(np.diff(centres, axis=0) * np.array(crop.spacing[:2])).max() < 3.0
    i, j, k = np.nonzero(result.mask)
    assert i.size > 0
    distance_mm = np.hypot((i - centres[k, 0]) * crop.spacing[0], (j - centres[k, 1]) * crop.spacing[1])
    assert distance_mm.max() < 12.0
