"""ROI inference (engine.segment's default) gives the full pass's masks, and falls back to the full
pass when its localiser is unsure or the masks reach the ROI's border.

The real-volume cases run the shipped model (what the node runs) on CPU, once with ``roi=False``
and once with the default, on both demo samples and on the validation volume t2s_9584 (the other
validation volume, errsm_21, is the sagittal demo sample itself). Each pair runs once per module.
The criteria are issue 21's: cord Dice >= 0.995, the same lesion count, each lesion's volume
within 1 %; and, what the design promises on CPU, model-space probabilities bit-identical to the
full pass wherever the ROI pass computed them (0 elsewhere).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from inference import engine
from inference.lesion_filter import label_lesions, voxel_volume_mm3
from inference.volume import Volume, load_nifti
from testbed.demo import SAMPLE_DIR
from testbed.tiny_model import make_tiny_model, pass_through_model

torch.set_num_threads(min(2, torch.get_num_threads()))

MODEL = "builtin:spinecord-t2"
CASES = {  # name -> (path or shared-data key, expected decision prefix)
    "sagittal": (SAMPLE_DIR / "errsm_21_t2.nii.gz", "cord:"),  # = validation volume errsm_21
    "lesion": (SAMPLE_DIR / "t2_fake_lesion.nii.gz", "full:"),  # one tile: nothing to skip
    "t2s_9584": ("t2s_9584", "cord:"),  # validation volume, axial T2*
}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * float((a & b).sum()) / max(int(a.sum()) + int(b.sum()), 1)


def _volume(source: Path | str) -> Volume:
    if isinstance(source, Path):
        return load_nifti(source)
    from inference.train.data import BY_KEY
    from tests.helpers.env import require_shared

    return load_nifti(require_shared(BY_KEY[source].image))


@pytest.fixture(scope="module")
def model():
    from inference.models.registry import load_model

    return load_model(MODEL, device="cpu")


@pytest.fixture(scope="module")
def pairs(model):
    """name -> (volume, full Segmentation, ROI Segmentation, full and ROI model-space probabilities),
    each computed on first use."""
    cache: dict[str, tuple] = {}

    def get(name: str) -> tuple:
        if name not in cache:
            vol = _volume(CASES[name][0])
            probs: list[np.ndarray] = []
            real = engine.predict_model_space

            def spy(*a, **k):
                out = real(*a, **k)
                probs.append(out)
                return out

            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(engine, "predict_model_space", spy)
                full = engine.segment(vol, model, roi=False)
                roi = engine.segment(vol, model)
            cache[name] = (vol, full, roi, *probs)
        return cache[name]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_roi_pass_gives_the_full_pass_masks(pairs, name: str) -> None:
    vol, full, roi, _, _ = pairs(name)
    assert full.info["roi"] == "off"
    assert str(roi.info["roi"]).startswith(CASES[name][1]), roi.info["roi"]
    assert roi.info["tiles_run"] + roi.info["tiles_skipped"] == roi.info["tiles"] == full.info["tiles"]
    if CASES[name][1] == "cord:":
        assert roi.info["tiles_run"] < full.info["tiles_run"]
    d = _dice(full.cord_mask, roi.cord_mask)
    assert full.cord_mask.sum() > 1000 and d >= 0.995, f"{name}: cord Dice {d:.5f}"
    la, na = label_lesions(full.lesion_mask)
    lb, nb = label_lesions(roi.lesion_mask)
    assert na == nb, f"{name}: {na} lesions in the full pass, {nb} with the ROI"
    voxel = voxel_volume_mm3(vol.affine)
    for k in range(1, na + 1):  # each full-pass lesion against the ROI lesion it overlaps most
        hit = np.bincount(lb[la == k], minlength=nb + 1)
        hit[0] = 0
        other = int(hit.argmax())
        va, vb = (la == k).sum() * voxel, (lb == other).sum() * voxel
        assert other > 0 and abs(vb - va) <= 0.01 * va, f"{name}: lesion {k} {va:.1f} mm3 vs {vb:.1f} mm3"
    # what the design promises on CPU: the very same masks
    assert np.array_equal(full.cord_mask, roi.cord_mask) and np.array_equal(full.lesion_mask, roi.lesion_mask)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n, (_, kind) in CASES.items() if kind == "cord:"])
def test_roi_probabilities_are_the_full_pass_bits_where_computed(pairs, name: str) -> None:
    _, _, roi, p_full, p_roi = pairs(name)
    computed = (p_roi != 0).any(axis=0)
    assert computed.any() and not computed.all()
    assert np.array_equal(p_roi[:, computed], p_full[:, computed])
    cord = engine.largest_component((p_full[0] >= 0.5) | (p_full[1] >= 0.45)).astype(bool)
    assert cord.any() and computed[cord].all()  # the whole full-pass cord lies in the ROI


# ---------------------------------------------------------------- fallbacks (small, synthetic)

TUBE = (slice(18, 24), slice(56, 64), slice(None))


def _tube() -> tuple[np.ndarray, np.ndarray]:
    """A bright tube along Z (superior-inferior: the 'cord') in a body of lower intensity, air at
    the X borders: 2 x 7 x 7 tiles of the tiny models' 32^3 patch, the tube's region in 2 x 3 x 7."""
    img = np.zeros((40, 120, 120), np.float32)
    img[4:-4] = 10.0
    img[TUBE] = 40.0
    return img, np.eye(4)


def _z(img: np.ndarray, raw: float) -> float:
    from inference import preprocess

    mean, std = preprocess.zscore_params(img)
    return (raw - mean) / std


def _small() -> tuple[np.ndarray, np.ndarray]:
    """The tube, cut to 1 x 1 x 3 tiles (cheap for a real network)."""
    img, affine = _tube()
    return np.ascontiguousarray(img[4:36, 44:76, :64]), affine


class _Nothing(torch.nn.Module):
    """A network that finds nothing anywhere: logits -10 for every region."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], 2, *x.shape[2:]), -10.0)


def test_no_cord_found_runs_the_full_pass_with_a_log_line(tmp_path, caplog) -> None:
    import dataclasses

    from inference.models.registry import load_model

    make_tiny_model(tmp_path)
    model = dataclasses.replace(load_model(tmp_path, device="cpu"), network=_Nothing())
    img, affine = _small()
    with caplog.at_level(logging.INFO, logger="inference.engine"):
        seg = engine.segment(Volume(img, affine), model)
    assert seg.info["roi"] == "full: no cord found (localiser probability < 0.1 everywhere)"
    assert seg.info["tiles_run"] == seg.info["tiles"] - seg.info["tiles_air"] > 1
    assert [r.name for r in caplog.records] == ["inference.engine"] and "full pass over" in caplog.text
    assert not seg.cord_mask.any()


def test_random_model_sees_cord_at_the_side_edges_and_runs_the_full_pass(tmp_path) -> None:
    """The tiny random network gives ~0.5 everywhere: not a cord (a cord leaves the image only at
    its superior and inferior ends)."""
    from inference.models.registry import load_model

    make_tiny_model(tmp_path)
    model = load_model(tmp_path, device="cpu")
    img, affine = _small()
    roi = engine.segment(Volume(img, affine), model)
    full = engine.segment(Volume(img, affine), model, roi=False)
    assert roi.info["roi"] == "full: the localiser's cord touches the image's right-left edge"
    assert roi.info["tiles_run"] == full.info["tiles_run"] == 3
    assert np.array_equal(roi.cord_prob, full.cord_prob)


def test_a_region_over_every_tile_runs_the_full_pass(tmp_path, monkeypatch) -> None:
    img, affine = _small()
    model = pass_through_model(tmp_path, spacing=(1.0, 1.0, 1.0), z_threshold=_z(img, 30.0))
    centre = np.zeros(img.shape, np.float32)
    centre[10:20, 10:20, 20:44] = 1.0  # inside all three tiles along Z (origins 0, 16, 32)
    monkeypatch.setattr(engine, "localise", lambda image, *a, **k: engine.ndimage.zoom(
        centre, 0.5, order=0, grid_mode=True, mode="nearest"))
    seg = engine.segment(Volume(img, affine), model)
    assert seg.info["roi"] == "full: the cord's region touches 3 of 3 tiles" and seg.info["tiles_run"] == 3


def test_pass_through_tube_skips_tiles_and_keeps_the_bits(tmp_path, monkeypatch) -> None:
    img, affine = _tube()
    model = pass_through_model(tmp_path, spacing=(1.0, 1.0, 1.0), z_threshold=_z(img, 30.0))
    truth = np.zeros(img.shape, np.float32)
    truth[TUBE] = 1.0  # a perfect localiser: the tube
    monkeypatch.setattr(engine, "localise", lambda image, *a, **k: engine.ndimage.zoom(
        truth[tuple(slice(0, n) for n in image.shape)], 0.5, order=0, grid_mode=True, mode="nearest"))
    info_full: dict = {}
    info_roi: dict = {}
    full = engine.predict_model_space(img, model, info=info_full)
    roi = engine.predict_model_space(img, model, info=info_roi, roi=True)
    assert info_roi["roi"].startswith("cord:") and 0 < info_roi["tiles_run"] < info_full["tiles_run"]
    computed = (roi != 0).any(axis=0)
    assert np.array_equal(roi[:, computed], full[:, computed]) and computed[TUBE].all()
    assert not computed.all()
    seg = engine.segment(Volume(img, affine), model)
    assert np.array_equal(seg.cord_mask.astype(bool), img >= 30.0)


def test_masks_reaching_the_roi_border_complete_the_full_pass(tmp_path, monkeypatch, caplog) -> None:
    img, affine = _tube()
    model = pass_through_model(tmp_path, spacing=(1.0, 1.0, 1.0), z_threshold=_z(img, 30.0))
    partial = np.zeros(img.shape, np.float32)
    partial[18:24, 56:64, :30] = 1.0  # a localiser that saw only the first quarter of the tube
    monkeypatch.setattr(engine, "localise", lambda image, *a, **k: engine.ndimage.zoom(
        partial, 0.5, order=0, grid_mode=True, mode="nearest"))
    with caplog.at_level(logging.INFO, logger="inference.engine"):
        seg = engine.segment(Volume(img, affine), model)
    full = engine.segment(Volume(img, affine), model, roi=False)
    assert str(seg.info["roi"]).startswith("full: the cord reaches the border of the ROI"), seg.info["roi"]
    assert seg.info["tiles_run"] == full.info["tiles_run"] and seg.info["tiles_skipped"] == full.info["tiles_skipped"]
    assert "completing the full pass" in caplog.text
    assert np.array_equal(seg.cord_prob, full.cord_prob) and np.array_equal(seg.cord_mask, full.cord_mask)


def test_spill_says_why_a_roi_result_could_differ() -> None:
    from inference import roi

    shape = (20, 20, 40)
    cord = np.zeros(shape, bool)
    cord[8:12, 8:12, 5:35] = True
    seen = np.zeros(shape, bool)
    seen[6:14, 6:14, 3:37] = True
    incomplete = np.zeros(shape, bool)
    incomplete[:, :, 37:] = True  # what the ROI pass left out: beyond z 37
    assert roi.spill(cord, cord, incomplete, seen) == ""
    assert roi.spill(cord, cord, np.zeros(shape, bool), seen) == ""  # nothing left out
    assert roi.spill(np.zeros(shape, bool), np.zeros(shape, bool), incomplete, seen).startswith("no cord")
    longer = cord.copy()
    longer[8:12, 8:12, 35:37] = True  # now next to the incomplete voxels
    assert roi.spill(longer, longer, incomplete, seen) == "the cord reaches the border of the ROI"
    elsewhere = np.zeros(shape, bool)
    elsewhere[0:2, 0:2, :] = True
    assert roi.spill(cord, cord, incomplete, elsewhere) == "the cord found lies outside the localiser's region"
    other = cord.copy()
    other[0:4, 0:4, 20:37] = True  # a separate component, a quarter of the cord's size or more, at the border
    assert roi.spill(other, cord, incomplete, seen) == "a component at the border of the ROI could outgrow the cord"
    other[0:4, 0:4, 20:34] = False  # now small: postprocessing drops it whatever lies beyond
    assert roi.spill(other, cord, incomplete, seen) == ""


def test_a_confident_localiser_cord_on_a_side_edge_is_suspect() -> None:
    from inference import roi

    prob = np.zeros((20, 20, 40), np.float32)
    prob[8:12, 8:12, :] = 0.9  # along Z, out of the image at both ends: a cord
    assert roi.at_side_edge(prob > 0.1, prob) == ""
    prob[0:3, 8:12, 10:20] = 0.9  # something confident on the right-left edge
    assert roi.at_side_edge(prob > 0.1, prob) == "the localiser's cord touches the image's right-left edge"
    prob[0:3, 8:12, 10:20] = 0.2  # only the low-probability fringe: fine
    assert roi.at_side_edge(prob > 0.1, prob) == ""
    prob[8:12, 19, 10:20] = 0.9
    assert roi.at_side_edge(prob > 0.1, prob) == "the localiser's cord touches the image's anterior-posterior edge"
