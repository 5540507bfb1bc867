"""Our nnU-Net runtime against nnunetv2's own nnUNetPredictor on the same random-weight folder.

Two folders in nnU-Net's own format, made by nnunetv2 (test-only dependency):
  A  region-based SCIseg-style labels, image_orientation RPI, two folds, mirroring on 3 axes,
     z-score inside the non-zero mask, anisotropic target spacing (separate-z resampling)
  B  softmax labels, older plain-field plans, fold_all, CTNormalization, transpose_forward
     [2, 0, 1], no mirroring
The volume is a real sagittal T2 (99 x 99 x 29) with zeroed borders so crop-to-non-zero acts.
"""
from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

from inference.models.registry import ModelError
from inference.volume import Volume, load_nifti
from tests.helpers.env import IN_CI, require_shared

LABEL_AGREEMENT = 0.999
PROB_TOL = 1e-3


def _need_nnunet() -> None:
    try:
        import nnunetv2  # noqa: F401
    except ImportError:
        if IN_CI:
            pytest.fail("nnunetv2 is required in CI (pip install -e '.[test]')")
        pytest.skip("nnunetv2 not installed")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Both predictors on one thread: equal footing, and no oversubscription on a shared box."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def volume() -> Volume:
    vol = load_nifti(require_shared("lesion-example/t2_fake_lesion.nii.gz"))
    arr = vol.array.copy()
    arr[:6] = 0  # a zero border on two axes: crop-to-non-zero must be undone exactly
    arr[:, -4:] = 0
    return Volume(array=arr, affine=vol.affine)


@pytest.fixture(scope="module")
def folder_a(tmp_path_factory) -> Path:
    _need_nnunet()
    from testbed.nnunet_folder import dataset_dict, make_folder, plans_dict

    plans = plans_dict([1.0, 0.9, 2.8], [32, 48, 8], [4, 8, 16], [[1, 1, 1], [2, 2, 1], [2, 2, 2]], use_mask=True)
    root = tmp_path_factory.mktemp("nnA") / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    return make_folder(root, plans, dataset_dict(True, "RPI"), ["0", "1"], (0, 1, 2))


@pytest.fixture(scope="module")
def folder_b(tmp_path_factory) -> Path:
    _need_nnunet()
    from testbed.nnunet_folder import dataset_dict, make_folder, plans_dict

    plans = plans_dict([1.2, 1.0, 1.1], [32, 32, 32], [4, 8, 16], [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
                       old_format=True, transpose=(2, 0, 1), norm="CTNormalization")
    root = tmp_path_factory.mktemp("nnB") / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    return make_folder(root, plans, dataset_dict(False, None), ["all"], None, seed=7)


EXACT_PROB_TOL = 1e-6  # default CPU path: nnU-Net's own arithmetic, float32 rounding in the export only


def _assert_parity(ours_labels, ref_labels, ours_probs, ref_probs, exact: bool = False) -> None:
    assert ours_labels.shape == ref_labels.shape and ours_probs.shape == ref_probs.shape
    present = np.unique(ref_labels)
    assert len(present) >= 3, f"reference labels {present}: the folder is not decisive enough for a real test"
    agree = float((ours_labels == ref_labels).mean())
    worst = float(np.abs(ours_probs - ref_probs).max())
    assert agree >= LABEL_AGREEMENT, f"labels agree on {agree:.5%} of voxels"
    assert worst <= PROB_TOL, f"probabilities differ by up to {worst:.2e}"
    if exact:  # the same network calls and float16 sums in the same order: nothing may round differently
        np.testing.assert_array_equal(ours_labels, ref_labels)
        assert worst <= EXACT_PROB_TOL, f"probabilities differ by up to {worst:.2e}: not nnU-Net's arithmetic"


def _nnunet_on_volume(folder: Path, vol: Volume, sct_orientation: str | None, folds, mirroring=True):
    """What SCT does around nnU-Net: reorient (nibabel), transpose to (z, y, x), predict, undo."""
    from testbed.nnunet_folder import nnunet_predict

    img = nib.Nifti1Image(vol.array, vol.affine)
    target = None
    if sct_orientation:
        opposite = {"R": "L", "L": "R", "A": "P", "P": "A", "S": "I", "I": "S"}
        target = axcodes2ornt(tuple(opposite[c] for c in sct_orientation))
        img = img.as_reoriented(ornt_transform(io_orientation(vol.affine), target))
    data = np.asarray(img.dataobj, dtype=np.float32)
    spacing = [float(z) for z in img.header.get_zooms()[:3]][::-1]
    seg, probs = nnunet_predict(folder, data.transpose(2, 1, 0), spacing, folds, mirroring)
    seg_img = nib.Nifti1Image(seg.transpose(2, 1, 0).astype(np.uint8), img.affine)
    probs_xyz = probs.transpose(0, 3, 2, 1)
    if target is not None:
        back = ornt_transform(target, io_orientation(vol.affine))
        seg_img = seg_img.as_reoriented(back)
        probs_xyz = np.stack([np.asarray(nib.Nifti1Image(p, img.affine).as_reoriented(back).dataobj)
                              for p in probs_xyz])
    return np.asarray(seg_img.dataobj), probs_xyz


def test_region_based_folder_through_registry_and_engine_matches_nnunet(folder_a, volume, caplog):
    from inference.engine import segment
    from inference.models.registry import load_model, read_meta

    meta = read_meta(folder_a)
    assert meta.extra["format"] == "nnunetv2" and meta.extra["folds"] == ["0", "1"]
    with caplog.at_level(logging.WARNING):
        model = load_model(folder_a, device="cpu")
    assert not [r for r in caplog.records if "weights_only=False" in r.getMessage()], \
        "nnU-Net checkpoints with numpy scalars must load with the safe unpickler"
    seg = segment(volume, model)
    ref_labels, ref_probs = _nnunet_on_volume(folder_a, volume, "RPI", ["0", "1"])
    ours_labels = seg.info["labels"]
    _assert_parity(ours_labels, ref_labels, np.stack([seg.cord_prob, seg.lesion_prob]), ref_probs, exact=True)
    # our masks are nnU-Net's labels: cord = sc region (labels 1 and 2), lesion = label 2
    np.testing.assert_array_equal(seg.cord_mask, np.isin(ref_labels, [1, 2]).astype(np.uint8))
    np.testing.assert_array_equal(seg.lesion_mask, (ref_labels == 2).astype(np.uint8))
    assert seg.cord_mask.shape == volume.array.shape
    assert seg.lesion_mask.sum() > 0 and (seg.lesion_mask <= seg.cord_mask).all()


def test_softmax_old_plans_fold_all_matches_nnunet(folder_b, volume):
    from inference.engine import segment
    from inference.models.nnunet import load_nnunet

    model = load_nnunet(folder_b, device="cpu")
    assert model.folds == ("all",) and model.mirror_axes == ()
    seg = segment(volume, model)
    ref_labels, ref_probs = _nnunet_on_volume(folder_b, volume, None, ["all"], mirroring=False)
    ours_labels = seg.info["labels"]
    ours_probs = np.stack([1 - seg.cord_prob, seg.cord_prob - seg.lesion_prob, seg.lesion_prob])
    _assert_parity(ours_labels, ref_labels, ours_probs, ref_probs, exact=True)
    np.testing.assert_array_equal(seg.cord_mask, np.isin(ref_labels, [1, 2]).astype(np.uint8))


FAST_PROB_SHARE = 0.999  # fast_cpu: probabilities within PROB_TOL of nnU-Net's on this share of voxels
# and nowhere wildly off: where one tile's tiny Gaussian weights (float16 subnormals) hold a border
# voxel, nnU-Net's own float16 logits are coarse and a float32 change can move p by a few 1e-2
FAST_PROB_MAX = 0.1


@pytest.mark.parametrize("which", ["a", "b"])
def test_fast_cpu_same_labels_probabilities_within_float16_steps(which, folder_a, folder_b, volume):
    """fast_cpu (channels-last, fused norms, batched passes) changes float32 rounding in the
    network; nnU-Net's float16 tile sums then round some voxels the other way. Labels stay."""
    from inference.engine import segment
    from inference.models.nnunet import InstanceNormAct, load_nnunet

    folder, orientation, folds, mirroring = ((folder_a, "RPI", ["0", "1"], True) if which == "a"
                                             else (folder_b, None, ["all"], False))
    model = load_nnunet(folder, device="cpu", fast_cpu=True)
    assert model.fast_cpu and any(isinstance(m, InstanceNormAct) for m in model.networks[0].modules())
    seg = segment(volume, model)
    assert seg.info["batch"] == 2
    ref_labels, ref_probs = _nnunet_on_volume(folder, volume, orientation, folds, mirroring)
    ours = np.stack([seg.cord_prob, seg.lesion_prob]) if which == "a" else \
        np.stack([1 - seg.cord_prob, seg.cord_prob - seg.lesion_prob, seg.lesion_prob])
    agree = float((seg.info["labels"] == ref_labels).mean())
    diff = np.abs(ours - ref_probs)
    assert agree >= LABEL_AGREEMENT, f"labels agree on {agree:.5%} of voxels"
    assert float((diff <= PROB_TOL).mean()) >= FAST_PROB_SHARE and float(diff.max()) <= FAST_PROB_MAX, \
        f"max {diff.max():.2e}, {(diff > PROB_TOL).mean():.4%} over {PROB_TOL}"


@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
@pytest.mark.parametrize("batch", [1, 3])
def test_fused_instance_norm_is_instance_norm_and_leaky_relu(layout, batch):
    import copy

    from inference.models.nnunet import InstanceNormAct, fuse_norms

    torch.manual_seed(batch)
    block = torch.nn.Sequential(torch.nn.Conv3d(3, 6, 3, padding=1), torch.nn.InstanceNorm3d(6, affine=True),
                                torch.nn.LeakyReLU(0.01, inplace=True),
                                torch.nn.Conv3d(6, 5, 3, padding=1), torch.nn.InstanceNorm3d(5, affine=True))
    for m in block:
        if isinstance(m, torch.nn.InstanceNorm3d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_()
    fmt = torch.channels_last_3d if layout == "channels_last" else torch.contiguous_format
    x = (torch.randn(batch, 3, 9, 20, 14) * 4 + 3).contiguous(memory_format=fmt)
    with torch.inference_mode():
        ref = copy.deepcopy(block).double()(x.double())
        fused = copy.deepcopy(block).to(memory_format=fmt)
        assert fuse_norms(fused) == 2
        assert isinstance(fused[1], InstanceNormAct) and isinstance(fused[2], torch.nn.Identity)
        got = fused(x)
        plain = block(x)
    assert torch.allclose(got.double(), ref, atol=3e-6), float((got.double() - ref).abs().max())
    assert float((got.double() - ref).abs().max()) <= 4 * float((plain.double() - ref).abs().max()) + 1e-6
    tracked = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3), torch.nn.InstanceNorm3d(2, track_running_stats=True))
    assert fuse_norms(tracked) == 0  # running statistics: not an instance norm at inference, left alone


@pytest.mark.parametrize("batch", [1, 3])
def test_in_place_instance_norm_gives_torchs_bits(batch):
    """The default CPU path's norm: same ATen kernel as InstanceNorm3d, written into its input."""
    import copy

    from inference.models.nnunet import InstanceNormInPlace, norms_in_place

    torch.manual_seed(batch)
    block = torch.nn.Sequential(torch.nn.Conv3d(2, 6, 3, padding=1), torch.nn.InstanceNorm3d(6, affine=True),
                                torch.nn.LeakyReLU(0.01, inplace=True), torch.nn.Dropout3d(0.0),
                                torch.nn.Conv3d(6, 4, 3, padding=1), torch.nn.Dropout3d(0.0),
                                torch.nn.InstanceNorm3d(4, affine=True)).eval()
    block[1].weight.data.uniform_(0.5, 1.5)
    block[1].bias.data.normal_()
    mod = copy.deepcopy(block)
    assert norms_in_place(mod) == 1  # the second norm follows a dropout, not the conv: left as built
    assert isinstance(mod[1], InstanceNormInPlace) and type(mod[6]) is torch.nn.InstanceNorm3d
    x = torch.randn(batch, 2, 9, 20, 14) * 4 + 3
    with torch.inference_mode():
        assert torch.equal(mod(x), block(x))


def test_resampling_matches_nnunet_both_anisotropy_paths():
    _need_nnunet()
    from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg_to_shape

    from inference.nnunet_runtime import resample

    rng = np.random.default_rng(3)
    data = rng.normal(size=(1, 17, 40, 33)).astype(np.float32)
    cases = [((17, 40, 33), (0.8, 0.8, 0.8), (1.0, 0.9, 2.8), 3),   # separate z (target anisotropic)
             ((17, 40, 33), (3.3, 0.7, 0.7), (3.0, 0.5, 0.6), 3),   # separate z (input anisotropic)
             ((17, 40, 33), (1.0, 1.0, 1.2), (1.3, 0.7, 1.0), 3),   # plain 3D, order 3
             ((17, 40, 33), (1.0, 1.0, 1.2), (1.3, 0.7, 1.0), 1)]   # plain 3D, order 1
    for shape, cur, new, order in cases:
        new_shape = tuple(int(round(c / n * s)) for c, n, s in zip(cur, new, shape))
        ref = resample_data_or_seg_to_shape(data, new_shape, cur, new, False, order, 0, None)
        ours = resample(data, new_shape, cur, new, order=order, order_z=0, force_separate_z=None)
        np.testing.assert_allclose(ours, ref, atol=1e-5, err_msg=f"{cur} -> {new}, order {order}")
        half = data.astype(np.float16)
        ref_h = resample_data_or_seg_to_shape(half, new_shape, cur, new, False, 1, 0, None)
        np.testing.assert_array_equal(resample(half, new_shape, cur, new, order=1), ref_h)


def test_gaussian_and_tile_steps_match_nnunet():
    _need_nnunet()
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian, compute_steps_for_sliding_window

    from inference.nnunet_runtime import gaussian_map, tile_steps

    for patch in [(32, 48, 8), (64, 160, 192)[:1] * 3, (20, 31, 9), (64, 160, 192)]:  # last: SCIseg's
        ref = compute_gaussian(tuple(patch), 1.0 / 8, 10, dtype=torch.float16, device=torch.device("cpu"))
        np.testing.assert_array_equal(gaussian_map(tuple(patch)), ref.float().numpy())
    for size, patch in [((79, 88, 8), (32, 48, 8)), ((200, 33, 64), (64, 32, 64)), ((65, 65, 65), (64, 64, 64))]:
        assert tile_steps(size, patch) == compute_steps_for_sliding_window(size, patch, 0.5)


def test_plans_are_data_not_code(folder_a, tmp_path):
    import json
    import shutil

    from inference.models.nnunet import load_nnunet, read_plan

    bad = tmp_path / "bad"
    shutil.copytree(folder_a, bad)
    plans = json.loads((bad / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["architecture"]["network_class_name"] = "os.system"
    (bad / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(ModelError, match="not from dynamic_network_architectures"):
        load_nnunet(bad, device="cpu")
    plans["configurations"]["3d_cascade_fullres"] = {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}
    (bad / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(ModelError, match="cascade"):
        read_plan(bad, "3d_cascade_fullres")
    with pytest.raises(ModelError, match="configuration '2d' not in plans"):
        read_plan(bad, "2d")


def test_config_model_entry_pointing_at_nnunet_folder_runs_analyze(folder_a, volume, tmp_path):
    """`models: {sciseg: {path: FOLDER}}` -> analyze() on the folder, masks = nnU-Net labels."""
    from dicom_node.config import load_config
    from inference.engine import segment
    from inference.models.registry import load_model
    from inference.pipeline import analyze

    cfg_file = tmp_path / "node.yaml"
    cfg_file.write_text(f"models:\n  sciseg:\n    path: {folder_a}\npipelines:\n  spinal_cord:\n    model: sciseg\n")
    cfg = load_config(cfg_file)
    result = analyze(volume, model=cfg.model_path("sciseg"), device="cpu")
    assert result.model.name == "Dataset901_RandomCord" and "3d_fullres" in result.model.version
    seg = segment(volume, load_model(folder_a, device="cpu"))  # cached: same resident networks
    np.testing.assert_array_equal(result.cord_mask, seg.cord_mask)
    np.testing.assert_array_equal(result.lesion_mask, seg.lesion_mask)
    assert result.measurements["lesion_count"] >= 1


def test_labels_from_dataset_json_and_cord_lesion_mapping():
    from inference.models.nnunet import CORD_NAMES, LESION_NAMES, Labels

    sciseg = Labels.from_dataset_json({"labels": {"background": 0, "sc": [1, 2], "lesion": 2},
                                       "regions_class_order": [1, 2]}, "ds")
    assert sciseg.has_regions and sciseg.regions == ((1, 2), (2,)) and sciseg.num_heads == 2
    assert sciseg.label_set(CORD_NAMES) == {1, 2} and sciseg.label_set(LESION_NAMES) == {2}
    cord_only = Labels.from_dataset_json({"labels": {"background": 0, "sc": 1}}, "ds")
    assert not cord_only.has_regions and cord_only.num_heads == 2 and cord_only.label_set(LESION_NAMES) == set()
    with pytest.raises(ModelError, match="regions_class_order"):
        Labels.from_dataset_json({"labels": {"background": 0, "sc": [1, 2], "lesion": 2}}, "ds")
    with pytest.raises(ModelError, match="consecutive"):
        Labels.from_dataset_json({"labels": {"background": 0, "sc": 1, "lesion": 3}}, "ds")


def test_sct_orientation_codes_round_trip_like_nibabel():
    from inference.nnunet_runtime import reorientation, sct_to_nibabel_codes

    assert sct_to_nibabel_codes("RPI") == ("L", "A", "S")
    rng = np.random.default_rng(0)
    arr = rng.normal(size=(7, 5, 3)).astype(np.float32)
    affine = np.array([[0, 0, -0.9, 10], [-0.8, 0, 0, 20], [0, 0.7, 0, -5], [0, 0, 0, 1]], float)  # PSR
    reo = reorientation(affine, arr.shape, "RPI")
    fwd = reo.forward(arr)
    ref = nib.Nifti1Image(arr, affine).as_reoriented(ornt_transform(io_orientation(affine),
                                                                     axcodes2ornt(("L", "A", "S"))))
    np.testing.assert_array_equal(fwd, np.asarray(ref.dataobj))
    np.testing.assert_allclose(reo.spacing_xyz, ref.header.get_zooms()[:3], rtol=1e-6)
    np.testing.assert_array_equal(reo.backward(fwd), arr)
    np.testing.assert_array_equal(reo.backward(np.stack([fwd, 2 * fwd])), np.stack([arr, 2 * arr]))


@pytest.mark.parametrize("reader", ["NibabelIO", "SimpleITKIO"])
def test_nnunet_file_path_prediction_matches_ours(folder_b, volume, tmp_path, reader):
    """nnU-Net reading and writing NIfTI files itself (its readers choose the axis order and
    spacing), sequential predictor: its label file must equal our labels on the same file."""
    import json
    import os
    import shutil

    from inference.engine import segment
    from inference.models.nnunet import load_nnunet
    from inference.volume import save_nifti

    folder = tmp_path / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    shutil.copytree(folder_b, folder)
    plans = json.loads((folder / "plans.json").read_text())
    plans["image_reader_writer"] = reader
    (folder / "plans.json").write_text(json.dumps(plans))
    image = save_nifti(volume.array, volume.affine, tmp_path / "case_0000.nii.gz")
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ.setdefault(var, str(tmp_path))
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    pred = nnUNetPredictor(tile_step_size=0.5, use_mirroring=False, perform_everything_on_device=False,
                           device=torch.device("cpu"), verbose=False, allow_tqdm=False)
    pred.initialize_from_trained_model_folder(str(folder), use_folds=("all",))
    (tmp_path / "out").mkdir()
    pred.predict_from_files_sequential([[str(image)]], [str(tmp_path / "out" / "case")], False)
    ref = np.asarray(nib.load(tmp_path / "out" / "case.nii.gz").dataobj)
    ours = segment(load_nifti(image), load_nnunet(folder, device="cpu")).info["labels"]
    assert ours.shape == ref.shape
    assert float((ours == ref).mean()) >= LABEL_AGREEMENT and len(np.unique(ref)) == 3
