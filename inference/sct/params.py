"""Spinal Cord Toolbox's constants for its MS lesion models, as SCT 5.6 runs them (one place).

Why a table of numbers copied as facts: the networks were trained on images prepared with exactly
these values (landmark intensities, patch mean and std, crop size, thresholds); any other value
feeds them images unlike their training data. Source: spinalcordtoolbox 5.x
``deepseg_lesion/core.py`` (apply_intensity_normalization, segment_3d, deep_segmentation_MSlesion)
and ``deepseg_sc/core.py`` (find_centerline, heatmap); the same numbers are in SCT 6/7's
``deepseg_/lesion.py`` and ``deepseg_/sc.py``, which run the ONNX conversions of these files.
"""
from __future__ import annotations

from dataclasses import dataclass

# deciles (and the 1st/99th percentiles) that the landmark normalisation maps onto its standard scale
LANDMARK_PERCENTILES = (1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99)

IN_PLANE_MM = 0.5  # the image is resampled to 0.5 mm in plane before the centerline and the crop
ISO_MM = 0.5  # the crop is resampled to 0.5 mm isotropic before the 3D network
CROP_SIZE = 48  # in-plane crop around the centerline (0.5 mm voxels: 24 mm)
PATCH_Z = 48  # the 3D network sees 48x48x48 patches, tiled along z only
LESION_THRESHOLD = 0.1  # the network's sigmoid > 0.1 is lesion
NATIVE_THRESHOLD = 0.1  # the mask linearly resampled back to the native grid, >= 0.1 is lesion
CTR_PATCH = (80, 80)  # the centerline network's 2D tile
CTR_DETECTED = 0.5  # heatmap > 0.5 is cord
CTR_MISSES_BEFORE_BRAIN = 10  # more consecutive slices without cord than this: brain reached, stop (brain_bool)


@dataclass(frozen=True)
class Contrast:
    """What SCT uses for one lesion model: its files, normalisation and centerline network."""

    name: str  # SCT's -c value: t2_ax or t2s
    lesion_file: str  # in deepseg_lesion_models/
    ctr_file: str  # in deepseg_sc_models/ (the centerline contrast: -c split at "_")
    landmarks: tuple[float, ...]  # standard intensities of LANDMARK_PERCENTILES
    patch_mean: float  # 3D patch standardisation (after the landmark mapping)
    patch_std: float
    ctr_mean: float  # 2D centerline tile standardisation (after scaling to 0..255)
    ctr_std: float
    training: str  # what the lesion network was trained on (Gros et al. 2019; SCT's README)


CONTRASTS: dict[str, Contrast] = {
    "t2_ax": Contrast(
        name="t2_ax", lesion_file="t2_ax_lesion.h5", ctr_file="t2_ctr.h5",
        landmarks=(0.000000, 112.195357, 291.611185, 446.727066, 581.103970, 702.979079, 833.318257,
                   1011.856313, 1268.801813, 1687.137075, 2611.000000),
        patch_mean=835.592, patch_std=528.386, ctr_mean=51.1417, ctr_std=57.4408,
        training="211 axial T2w volumes of MS patients (Gros et al., NeuroImage 2019)"),
    "t2s": Contrast(
        name="t2s", lesion_file="t2s_lesion.h5", ctr_file="t2s_ctr.h5",
        landmarks=(0.000000, 123.246969, 226.422561, 338.361023, 532.341924, 788.693675, 1096.975553,
                   1407.979466, 1716.524530, 2079.788451, 2611.000000),
        patch_mean=1011.31, patch_std=678.985, ctr_mean=68.8591, ctr_std=71.4659,
        training="416 T2*w volumes of MS patients (Gros et al., NeuroImage 2019)"),
}
