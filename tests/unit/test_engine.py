"""Engine and preprocessing: geometry round trips, post-processing, weights cache, real network run."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from nibabel.affines import apply_affine
from nibabel.orientations import aff2axcodes
from scipy import ndimage

from inference import engine, preprocess
from inference.models import registry
from inference.volume import Volume
from testbed.tiny_model import make_tiny_model, pass_through_model

torch.set_num_threads(min(2, torch.get_num_threads()))


def _rot(deg: float, axis: int) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    i, j = [a for a in range(3) if a != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def _affine(columns: np.ndarray, origin=(-20.0, 15.0, -30.0)) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = columns
    a[:3, 3] = origin
    return a


# LAS axial anisotropic; PSR sagittal (i -> posterior, j -> superior, k -> right); oblique PSR
LAS = _affine(np.diag([-0.7, 0.7, 2.5]))
PSR_COLS = np.array([[0, 0, 3.0], [-0.8, 0, 0], [0, 0.9, 0]])
PSR = _affine(PSR_COLS)
OBLIQUE = _affine(_rot(17.0, 0) @ _rot(-9.0, 2) @ PSR_COLS)
CASES = {"LAS": (LAS, (60, 60, 24)), "PSR": (PSR, (56, 70, 14)), "oblique": (OBLIQUE, (56, 70, 14))}


def _phantom(affine: np.ndarray, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Smooth cord-like blob (long along S) in a body slab, air outside; and the blob centre in mm.

    The blob is off the grid centre on purpose: a scaling error of the resampling (corner- vs
    edge-aligned grids) leaves a centred object in place but moves this one.
    """
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    xyz = apply_affine(affine, ijk)
    centre = apply_affine(affine, np.array(shape) * np.array([0.32, 0.36, 0.33])) + np.array([0.3, -0.4, 0.2])
    d = (xyz - centre) / np.array([4.0, 4.0, 12.0])
    blob = 40.0 * np.exp(-0.5 * (d ** 2).sum(1))
    # body: a slab in A-P around the cord, air (0) in front of it
    body = (xyz[:, 1] > centre[1] - 12.0).astype(np.float32) * 10.0
    img = (body + blob * (body > 0)).reshape(shape).astype(np.float32)
    return img, centre


def _z_threshold(img: np.ndarray, affine: np.ndarray, spacing, raw: float) -> float:
    model_img, _ = preprocess.to_model_space(img, affine, spacing)
    mean, std = preprocess.zscore_params(model_img)
    return (raw - mean) / std


def _ras_spacing(affine: np.ndarray) -> tuple[float, ...]:
    return preprocess.voxel_sizes(preprocess.reorient_to_ras(affine, (2, 2, 2)).affine_ras)


# ---------------------------------------------------------------- preprocess

@pytest.mark.parametrize("name", list(CASES))
def test_reorientation_round_trip_is_exact_and_ras(name: str) -> None:
    affine, shape = CASES[name]
    arr = np.random.default_rng(0).random(shape).astype(np.float32)
    reo = preprocess.reorient_to_ras(affine, shape)
    ras = reo.forward(arr)
    assert aff2axcodes(reo.affine_ras) == ("R", "A", "S")
    assert np.array_equal(reo.backward(ras), arr)
    # the same voxel sits at the same place in mm in both grids
    idx = np.array([3, 5, 7])
    ras_idx = np.round(np.linalg.solve(reo.affine_ras, np.r_[apply_affine(affine, idx), 1])[:3]).astype(int)
    assert ras[tuple(ras_idx)] == arr[tuple(idx)]


@pytest.mark.parametrize("name", list(CASES))
def test_model_space_round_trip_smooth_data(name: str) -> None:
    affine, shape = CASES[name]
    rng = np.random.default_rng(1)
    smooth = ndimage.gaussian_filter(rng.random(shape), sigma=(4, 4, 2)).astype(np.float32)
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    # no resampling: exact
    same, grid = preprocess.to_model_space(smooth, affine, _ras_spacing(affine))
    assert np.allclose(preprocess.from_model_space(same, grid), smooth, atol=1e-6)
    # resampled to 1 mm isotropic and back: exact shape, small error on smooth data
    model_img, grid = preprocess.to_model_space(smooth, affine, (1.0, 1.0, 1.0))
    assert np.allclose(grid.spacing, 1.0, atol=0.1)
    back = preprocess.from_model_space(model_img, grid)
    assert back.shape == smooth.shape
    inner = (slice(2, -2),) * 3  # the edge voxels are extrapolated (mode nearest)
    assert np.abs(back[inner] - smooth[inner]).mean() < 0.003
    assert np.abs(back[inner] - smooth[inner]).max() < 0.02


@pytest.mark.parametrize("name", list(CASES))
def test_model_grid_affine_places_voxels_where_they_were(name: str) -> None:
    affine, shape = CASES[name]
    img, _ = _phantom(affine, shape)
    blob_in = img > 30
    model_img, grid = preprocess.to_model_space(img, affine, (1.0, 1.0, 1.0))
    blob_model = model_img > 30
    c_in = apply_affine(affine, np.argwhere(blob_in).mean(0))
    c_model = apply_affine(grid.affine, np.argwhere(blob_model).mean(0))
    assert np.linalg.norm(c_in - c_model) < 0.3, (c_in, c_model)


# ---------------------------------------------------------------- engine geometry

@pytest.mark.parametrize("name", list(CASES))
def test_pass_through_network_reproduces_mask_exactly_without_resampling(tmp_path, name: str) -> None:
    affine, shape = CASES[name]
    img, _ = _phantom(affine, shape)
    spacing = _ras_spacing(affine)
    model = pass_through_model(tmp_path, spacing=spacing, z_threshold=_z_threshold(img, affine, spacing, 30.0))
    seg = engine.segment(Volume(img, affine), model)
    expected = img >= 30.0
    assert seg.cord_mask.shape == img.shape and seg.cord_mask.dtype == np.uint8
    assert np.array_equal(seg.cord_mask.astype(bool), expected)
    assert np.array_equal(seg.lesion_mask.astype(bool), expected)


@pytest.mark.parametrize("name", list(CASES))
def test_pass_through_network_with_resampling_keeps_mask_in_place(tmp_path, name: str) -> None:
    affine, shape = CASES[name]
    img, _ = _phantom(affine, shape)
    spacing = (1.0, 1.0, 1.0)
    model = pass_through_model(tmp_path, spacing=spacing, z_threshold=_z_threshold(img, affine, spacing, 30.0))
    seg = engine.segment(Volume(img, affine), model)
    expected = img >= 30.0
    got = seg.cord_mask.astype(bool)
    dice = 2 * (got & expected).sum() / (got.sum() + expected.sum())
    assert dice > 0.96, dice
    c_exp = apply_affine(affine, np.argwhere(expected).mean(0))
    c_got = apply_affine(affine, np.argwhere(got).mean(0))
    assert np.linalg.norm(c_exp - c_got) < 0.15, (c_exp, c_got)


def test_air_is_cropped_and_skipped_without_changing_the_result(tmp_path) -> None:
    affine, shape = LAS, (60, 200, 24)  # 140 mm A-P, the body only in the posterior part
    img, _ = _phantom(affine, shape)
    img[:, 110:] = 0.0
    spacing = _ras_spacing(affine)
    model = pass_through_model(tmp_path, spacing=spacing, z_threshold=_z_threshold(img, affine, spacing, 30.0))
    fast = engine.segment(Volume(img, affine), model)
    full = engine.segment(Volume(img, affine), model, skip_background=False)
    assert fast.info["crop_shape"][1] < full.info["crop_shape"][1] == 200
    assert fast.info["tiles"] - fast.info["tiles_skipped"] < full.info["tiles"]
    assert np.array_equal(fast.cord_mask, full.cord_mask) and fast.cord_mask.sum() > 0
    assert fast.cord_prob[:, 150:].max() == 0.0  # air far from the body: not computed, probability 0


# ---------------------------------------------------------------- tiling and post-processing

def test_tile_starts_cover_with_overlap() -> None:
    assert engine.tile_starts(20, 32) == [0]
    assert engine.tile_starts(32, 32) == [0]
    s = engine.tile_starts(100, 32)
    assert s[0] == 0 and s[-1] == 68
    assert all(b - a <= 16 for a, b in zip(s, s[1:]))


def test_gaussian_importance_peaks_in_the_centre() -> None:
    g = engine.gaussian_importance((9, 12, 7))
    assert g.shape == (9, 12, 7) and g.min() > 0
    assert g[4, 5, 3] == pytest.approx(g.max())
    assert g[0, 0, 0] < 0.01


def test_postprocess_keeps_largest_cord_component_and_lesions_inside_it() -> None:
    cord = np.zeros((30, 30, 30), np.float32)
    cord[10:20, 10:20, 2:28] = 0.9  # the cord
    cord[1:4, 1:4, 1:4] = 0.8  # a speck elsewhere
    lesion = np.zeros_like(cord)
    lesion[12:15, 12:15, 10:14] = 0.7  # inside the cord
    lesion[1:3, 1:3, 1:3] = 0.9  # inside the speck: must go with it
    lesion[25:28, 25:28, 25:28] = 0.9  # outside any cord
    c, les = engine.postprocess(cord, lesion, (0.5, 0.5))
    assert c.dtype == np.uint8 and les.dtype == np.uint8
    assert c.sum() == 10 * 10 * 26 and c[2, 2, 2] == 0
    assert les.sum() == 3 * 3 * 4 and not (les & (1 - c)).any()


def test_postprocess_bright_lesion_the_cord_channel_missed_is_cord_and_lesion() -> None:
    """Region semantics (nnU-Net/SCIseg): a lesion-region voxel is cord even where the cord channel
    is low, as long as it touches the cord; a lesion blob away from the cord is still dropped."""
    cord = np.zeros((30, 30, 30), np.float32)
    cord[10:20, 10:20, 2:28] = 0.9
    lesion = np.zeros_like(cord)
    cord[12:16, 12:16, 10:15] = 0.2  # the cord channel misses a bright lesion...
    lesion[12:16, 12:16, 10:15] = 0.8  # ...the lesion channel finds it
    lesion[16:22, 12:16, 10:15] = 0.8  # and it bulges past the cord border (still touching)
    lesion[25:28, 25:28, 25:28] = 0.9  # not touching the cord
    c, les = engine.postprocess(cord, lesion, (0.5, 0.5))
    assert les.sum() == 4 * 4 * 5 + 6 * 4 * 5 and c[13, 13, 12] == 1 and c[21, 13, 12] == 1
    assert c.sum() == 10 * 10 * 26 + 2 * 4 * 5 and les[26, 26, 26] == 0 and c[26, 26, 26] == 0


def test_largest_component_on_empty_mask() -> None:
    assert engine.largest_component(np.zeros((4, 4, 4), bool)).sum() == 0


# ---------------------------------------------------------------- real network and registry

def test_segment_with_random_dynunet_shapes_and_ranges(tmp_path) -> None:
    make_tiny_model(tmp_path, spacing=(1.0, 1.0, 1.0))
    model = registry.load_model(tmp_path, device="cpu")
    img, _ = _phantom(PSR, (40, 50, 12))
    stages: list[tuple[str, int, int]] = []
    seg = engine.segment(Volume(img, PSR), model, progress=lambda *a: stages.append(a))
    for arr in (seg.cord_prob, seg.lesion_prob, seg.cord_mask, seg.lesion_mask):
        assert arr.shape == img.shape
    assert seg.cord_prob.dtype == np.float32 and seg.cord_mask.dtype == np.uint8
    assert 0.0 <= seg.cord_prob.min() and seg.cord_prob.max() <= 1.0
    assert not (seg.lesion_mask & (1 - seg.cord_mask)).any()
    assert set(seg.timings) == {"preprocess", "network", "postprocess"}
    n = seg.info["tiles"] - seg.info["tiles_skipped"]
    assert ("sliding window", n, n) in stages


def test_predict_model_space_channels_first(tmp_path) -> None:
    make_tiny_model(tmp_path)
    model = registry.load_model(tmp_path, device="cpu")
    arr = np.random.default_rng(2).random((20, 36, 10)).astype(np.float32) + 1
    out = engine.predict_model_space(arr, model)
    assert out.shape == (2, 20, 36, 10) and out.dtype == np.float32
    assert 0 < out.min() and out.max() < 1  # every voxel is body here: all covered


def test_weights_load_once_per_process(tmp_path, monkeypatch) -> None:
    make_tiny_model(tmp_path)
    calls = []
    real_load = torch.load
    monkeypatch.setattr(registry.torch, "load", lambda *a, **k: calls.append(a) or real_load(*a, **k))
    first = registry.load_model(tmp_path, device="cpu")
    second = registry.load_model(str(tmp_path), device="cpu")
    assert first is second and len(calls) == 1


def test_cuda_request_without_cuda_is_a_clear_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA present: nothing to refuse")
    with pytest.raises(registry.ModelError, match="CUDA is not available"):
        registry.pick_device("cuda")


def test_single_thin_slice_survives_resampling() -> None:
    arr = np.random.default_rng(3).random((30, 40, 1)).astype(np.float32)
    model_img, grid = preprocess.to_model_space(arr, np.diag([0.5, 0.5, 0.4, 1.0]), (1.0, 1.0, 1.0))
    assert model_img.shape == (15, 20, 1)
    assert preprocess.from_model_space(model_img, grid).shape == arr.shape


def test_patch_not_multiple_of_the_network_stride_is_refused(tmp_path) -> None:
    make_tiny_model(tmp_path, patch=(32, 30, 32))  # tiny net: strides 1, 2, 2 -> multiples of 4
    model = registry.load_model(tmp_path, device="cpu")
    assert engine.total_stride(model.meta.architecture) == (4, 4, 4)
    with pytest.raises(registry.ModelError, match="multiple of the network's total stride"):
        engine.segment(Volume(np.ones((8, 8, 8), np.float32), np.eye(4)), model)


@pytest.mark.parametrize("rel", [
    "t2star-axial/sub-9418/T2starw_seg-manual.nii.gz",  # LAS axial 0.5 x 0.5 x 3 mm
    "lesion-example/t2_fake_lesion_sc_seg.nii.gz",  # PSR sagittal 0.8 mm
])
def test_real_cord_masks_survive_the_model_space_round_trip(rel: str) -> None:
    import nibabel as nib

    from tests.helpers.env import require_shared

    img = nib.load(str(require_shared(rel)))
    ref = np.asarray(img.dataobj) > 0.5
    model_img, grid = preprocess.to_model_space(ref.astype(np.float32), img.affine, (1.0, 1.0, 1.0))
    back = preprocess.from_model_space(model_img, grid) >= 0.5
    assert back.shape == ref.shape
    assert 2 * (back & ref).sum() / (back.sum() + ref.sum()) > 0.99
    shift = apply_affine(img.affine, np.argwhere(back).mean(0)) - apply_affine(img.affine, np.argwhere(ref).mean(0))
    assert np.linalg.norm(shift) < 0.05


class _Ramp(torch.nn.Module):
    """Logits = input times a ramp along X: not mirror-symmetric, so mirroring changes the result."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(-1.0, 2.0, x.shape[2]).view(1, 1, -1, 1, 1)
        return torch.cat([x * ramp, x * ramp], dim=1)


def test_forward_mirrored_averages_the_logits_of_each_flip() -> None:
    x = torch.rand(2, 1, 6, 5, 4)
    ramp = torch.linspace(-1.0, 2.0, 6).view(1, 1, -1, 1, 1)
    net = _Ramp()
    assert torch.equal(engine.forward_mirrored(net, x, ()), net(x))
    expected = x * (ramp + torch.flip(ramp, [2])) / 2
    assert torch.allclose(engine.forward_mirrored(net, x, (0,)), torch.cat([expected, expected], 1), atol=1e-6)
    # flips along axes the ramp does not vary on change nothing
    assert torch.allclose(engine.forward_mirrored(net, x, (1, 2)), net(x), atol=1e-6)


def test_test_time_mirroring_makes_the_prediction_left_right_equivariant(tmp_path) -> None:
    arr = np.random.default_rng(5).random((32, 40, 36)).astype(np.float32)  # one tile across X
    flipped = np.ascontiguousarray(arr[::-1])
    make_tiny_model(tmp_path / "plain")
    plain = registry.load_model(tmp_path / "plain", device="cpu")
    a, b = (engine.predict_model_space(x, plain, normalized=True) for x in (arr, flipped))
    assert np.abs(a[:, ::-1] - b).max() > 1e-3  # random weights: not symmetric by themselves
    folder = make_tiny_model(tmp_path / "mirrored")
    meta = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps({**meta, "test_time_mirroring": [0]}))
    mirrored = registry.load_model(folder, device="cpu")
    info: dict = {}
    a = engine.predict_model_space(arr, mirrored, normalized=True, info=info)
    b = engine.predict_model_space(flipped, mirrored, normalized=True)
    assert info["mirror_axes"] == [0]
    np.testing.assert_allclose(a[:, ::-1], b, atol=1e-5)


@pytest.mark.parametrize("bad", [[3], [0, 0], "0", [True]])
def test_test_time_mirroring_must_name_distinct_axes(tmp_path, bad) -> None:
    folder = make_tiny_model(tmp_path)
    meta = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps({**meta, "test_time_mirroring": bad}))
    with pytest.raises(registry.ModelError, match="model.json: test_time_mirroring"):
        registry.read_meta(folder)  # refused where the folder is read: config load, /health, worker
    model = registry.LoadedModel(meta=dataclasses.replace(registry.read_meta(make_tiny_model(tmp_path / "ok")),
                                                          extra={"test_time_mirroring": bad}),
                                 network=torch.nn.Identity(), device=torch.device("cpu"))
    with pytest.raises(registry.ModelError, match="test_time_mirroring"):  # a meta built in code
        engine.segment(Volume(np.ones((8, 8, 8), np.float32), np.eye(4)), model)
