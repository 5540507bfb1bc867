"""Random-weight trained-model folders in nnU-Net v2's own format (tests and bench only).

nnunetv2 builds the network and writes the checkpoint, so the folder is exactly what a site
would download; plans are written by hand (small network, chosen spacing and patch) in either
the current `architecture` block or the older plain-field format.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np


def plans_dict(spacing: Sequence[float], patch: Sequence[int], features: Sequence[int],
               strides: Sequence[Sequence[int]], *, old_format: bool = False,
               transpose: Sequence[int] = (0, 1, 2), norm: str = "ZScoreNormalization",
               use_mask: bool = False, n_conv: int = 2) -> dict[str, Any]:
    n = len(features)
    conf: dict[str, Any] = {
        "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2, "patch_size": list(patch), "median_image_size_in_voxels": [100, 100, 30],
        "spacing": list(spacing), "normalization_schemes": [norm], "use_mask_for_norm": [use_mask],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "batch_dice": False,
    }
    kernels = [[3, 3, 3]] * n
    if old_format:
        conf.update({"UNet_class_name": "PlainConvUNet", "UNet_base_num_features": features[0],
                     "unet_max_num_features": features[-1], "n_conv_per_stage_encoder": [n_conv] * n,
                     "n_conv_per_stage_decoder": [n_conv] * (n - 1), "num_pool_per_axis": [n - 1] * 3,
                     "pool_op_kernel_sizes": [list(s) for s in strides], "conv_kernel_sizes": kernels})
    else:
        conf["architecture"] = {
            "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {
                "n_stages": n, "features_per_stage": list(features), "conv_op": "torch.nn.modules.conv.Conv3d",
                "kernel_sizes": kernels, "strides": [list(s) for s in strides], "n_conv_per_stage": [n_conv] * n,
                "n_conv_per_stage_decoder": [n_conv] * (n - 1), "conv_bias": True,
                "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
                "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
        }
    back = [int(i) for i in np.argsort(transpose)]
    return {
        "dataset_name": "Dataset901_RandomCord", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": list(spacing), "original_median_shape_after_transp": [100, 100, 30],
        "image_reader_writer": "NibabelIO", "transpose_forward": list(transpose), "transpose_backward": back,
        "configurations": {"3d_fullres": conf}, "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": {
            "max": 4000.0, "mean": 900.0, "median": 850.0, "min": 0.0, "percentile_00_5": 40.0,
            "percentile_99_5": 2500.0, "std": 400.0}},
    }


def dataset_dict(regions: bool, orientation: str | None) -> dict[str, Any]:
    ds: dict[str, Any] = {"channel_names": {"0": "T2w"}, "numTraining": 10, "file_ending": ".nii.gz",
                          "name": "RandomCord"}
    if regions:
        ds["labels"] = {"background": 0, "sc": [1, 2], "lesion": 2}
        ds["regions_class_order"] = [1, 2]
    else:
        ds["labels"] = {"background": 0, "sc": 1, "lesion": 2}
    if orientation:
        ds["image_orientation"] = orientation
    return ds


def _make_decisive(net: Any, patch: Sequence[int], scale: float, regions: bool,
                   calib: np.ndarray | None) -> None:
    """Scale the last layer and set its bias from the logits on a calibration patch: random
    weights otherwise give p ~ 0.5 everywhere, or one label everywhere."""
    import torch

    net.eval()
    x = torch.from_numpy(np.asarray(calib, np.float32)) if calib is not None else torch.randn(1, 1, *patch)
    with torch.no_grad():
        last = net.decoder.seg_layers[-1]
        last.weight.mul_(scale)
        last.bias.zero_()
        out = net(x)
        logits = (out[0] if isinstance(out, (list, tuple)) else out)[0].flatten(1)
        if regions:  # region 0 (cord) positive on ~40 % of voxels, later regions on ~15 %
            frac = [0.4] + [0.15] * (logits.shape[0] - 1)
            last.bias.copy_(torch.stack([-torch.quantile(lg, 1 - f) for lg, f in zip(logits, frac)]))
        else:  # every class wins somewhere, background most often
            med = logits.median(dim=1).values
            last.bias.copy_(-med + torch.linspace(1.0, -0.5, logits.shape[0]))
    net.train()


def make_folder(folder: Path, plans: dict[str, Any], dataset: dict[str, Any], folds: Sequence[str],
                mirror_axes: Sequence[int] | None, logit_scale: float = 10.0, seed: int = 0,
                calib: np.ndarray | None = None) -> Path:
    """Write plans.json, dataset.json and fold_X/checkpoint_final.pth with He-initialised random
    weights; the last layer is scaled so outputs are decisive (labels not balanced on p = 0.5)."""
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plans.json").write_text(json.dumps(plans, indent=2))
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    pm = PlansManager(plans)
    cm = pm.get_configuration("3d_fullres")
    heads = pm.get_label_manager(dataset).num_segmentation_heads
    for i, fold in enumerate(folds):
        torch.manual_seed(seed + i)
        net = nnUNetTrainer.build_network_architecture(pm, cm, 1, heads, enable_deep_supervision=True)
        _make_decisive(net, plans["configurations"]["3d_fullres"]["patch_size"], logit_scale,
                       regions="regions_class_order" in dataset, calib=calib)
        ckpt = {
            "network_weights": net.state_dict(), "init_args": {
                "plans": plans, "configuration": "3d_fullres", "fold": fold, "dataset_json": dataset},
            "trainer_name": "nnUNetTrainer",
            "inference_allowed_mirroring_axes": tuple(mirror_axes) if mirror_axes is not None else None,
            # like a real checkpoint: numpy scalars in the training state
            "_best_ema": np.float64(0.5), "current_epoch": 1000,
            "logging": {"ema_fg_dice": [np.float64(0.1), np.float64(0.2)]},
        }
        (folder / f"fold_{fold}").mkdir(exist_ok=True)
        torch.save(ckpt, folder / f"fold_{fold}" / "checkpoint_final.pth")
    return folder


def nnunet_predictor(folder: Path, folds: Sequence[str], mirroring: bool = True,
                     checkpoint: str = "checkpoint_final.pth") -> Any:
    """nnunetv2's own nnUNetPredictor for the folder on CPU, initialised (weights loaded).
    `folds` explicitly: nnU-Net's auto-detection skips fold_all."""
    import os

    import torch

    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ.setdefault(var, str(folder))
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    pred = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirroring,
                           perform_everything_on_device=False, device=torch.device("cpu"),
                           verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    pred.initialize_from_trained_model_folder(str(folder), use_folds=tuple(folds), checkpoint_name=checkpoint)
    return pred


def predictor_predict(pred: Any, image_zyx: np.ndarray, spacing_zyx: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """One case through an initialised predictor (predict_single_npy_array spawns no workers)."""
    # C-contiguous (1, z, y, x) float32, as nnU-Net's own file readers hand it over
    image = np.ascontiguousarray(np.asarray(image_zyx, np.float32)[None])
    seg, probs = pred.predict_single_npy_array(image,
                                               {"spacing": [float(s) for s in spacing_zyx]}, None, None, True)
    return np.asarray(seg), np.asarray(probs)


def nnunet_predict(folder: Path, image_zyx: np.ndarray, spacing_zyx: Sequence[float],
                   folds: Sequence[str], mirroring: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """nnunetv2's own predictor, in process, on one image (labels and probabilities, zyx)."""
    return predictor_predict(nnunet_predictor(folder, folds, mirroring), image_zyx, spacing_zyx)
