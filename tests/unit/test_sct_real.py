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


def test_scts_centerline_with_our_optic_replacement_finds_the_manually_segmented_cord() -> None:
    """sct:t2s_lesion's centerline network on a healthy axial T2* (0.5 mm, 17 slices) with a manual cord mask:
    the centre in every slice within 1.5 mm of the manual cord's (measured: median 0.23, max 0.49 mm)."""
    import nibabel as nib

    from inference import rpi
    from inference.sct import resample
    from inference.sct.centerline import centerline_from_heatmap, centres_from_mask, heatmap

    folder = require_shared("t2star-axial/sub-9418")
    volume = load_volume(folder / "T2starw.nii.gz")
    cord = np.asanyarray(nib.load(str(folder / "T2starw_seg-manual.nii.gz")).dataobj).astype(np.float32)
    model = load_sct_model("sct:t2s_lesion", [require_shared("sct-models")])
    frame = rpi.RpiFrame.from_affine(volume.affine, volume.array.shape)
    shape05 = resample.sct_shape(frame.rpi_shape, frame.spacing, (IN_PLANE_MM, IN_PLANE_MM, frame.spacing[2]))
    spacing05 = resample.sampled_spacing(frame.rpi_shape, frame.spacing, shape05)
    heat, z_max = heatmap(resample.resample(frame.to_rpi(volume.array), shape05), model.ctr_net,
                          model.contrast.ctr_mean, model.contrast.ctr_std)
    found = centerline_from_heatmap(heat, (spacing05[0], spacing05[1], spacing05[2]), z_max)
    truth = centres_from_mask(resample.resample(frame.to_rpi(cord), shape05))
    assert np.isfinite(found).all() and np.isfinite(truth).all()
    distance_mm = np.hypot((found[:, 0] - truth[:, 0]) * spacing05[0], (found[:, 1] - truth[:, 1]) * spacing05[1])
    assert distance_mm.max() < 1.5
