"""SCT's three intensity normalisations, each where its network needs it.

- ``landmark_normalize``: the lesion network's input. Nyúl-style piecewise-linear mapping of the
  crop's own 1st, 10th ... 90th, 99th percentiles onto learned standard intensities
  (``params.Contrast.landmarks``), with SCT's exponential tails below the 1st and above the 99th.
  The percentiles are taken over the whole crop (every slice, zeros of slices without a
  centerline included), as SCT does.
- ``scale_intensity``: the centerline network's input: the 2nd..98th percentile range to 0..255.
- ``standardize``: (x - mean) / std with the training set's numbers, on every tile or patch.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from inference.sct.params import LANDMARK_PERCENTILES


def exp_tail(xs: Sequence[float] | np.ndarray, ys: Sequence[float] | np.ndarray,
             limit: float) -> Callable[[np.ndarray], np.ndarray]:
    """SCT's ``exp_model``: alpha + beta * exp(gamma * x) through (x2, y2) with the slope of the segment
    (x1, y1)-(x2, y2) there, tending to ``limit`` (the outermost landmark). It keeps intensities beyond
    the outer percentiles ordered without letting them run past the standard scale."""
    x1, x2 = np.float64(xs[0]), np.float64(xs[1])
    y1, y2 = np.float64(ys[0]), np.float64(ys[1])
    # two equal percentiles give inf/NaN here as in SCT (numpy's float arithmetic there too); with the zeros of
    # slices without a centerline p1 is the minimum, so no voxel lies below it and the lower tail is never used
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        m = (y2 - y1) / (x2 - x1)
        b = y1 - m * x1
        omega = m * x2 - np.float64(limit) + b
        beta = omega * np.exp(-m * x2 / omega)
        gamma = m / omega

    def tail(x: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore", invalid="ignore"):
            return np.float64(limit) + beta * np.exp(gamma * np.asarray(x, dtype=np.float64))

    return tail


def landmark_normalize(image: np.ndarray, landmarks: Sequence[float]) -> np.ndarray:
    """The image's landmark percentiles mapped linearly onto ``landmarks``; exponential tails outside.

    scipy's interp1d is used as SCT uses it, so duplicate percentiles (a crop that is mostly zeros)
    behave as they do in SCT.
    """
    from scipy.interpolate import interp1d

    if len(landmarks) != len(LANDMARK_PERCENTILES):
        raise ValueError(f"need {len(LANDMARK_PERCENTILES)} landmarks (percentiles {LANDMARK_PERCENTILES}), "
                         f"got {len(landmarks)}")
    img = np.asarray(image, dtype=np.float32)
    std = np.asarray(landmarks, dtype=np.float64)
    current = np.percentile(img, LANDMARK_PERCENTILES)
    out = np.asarray(interp1d(current, std, bounds_error=False)(img), dtype=np.float64)
    below = img < current[0]
    out[below] = exp_tail(current[:2], std[:2], std[0])(img[below])
    above = img > current[-1]
    out[above] = exp_tail(current[-3:-1], std[-3:-1], std[-1])(img[above])
    return out.astype(np.float32)


def scale_intensity(image: np.ndarray, out_max: float = 255.0) -> np.ndarray:
    """The 2nd..98th percentile range to 0..out_max, clipped outside (SCT's ``scale_intensity``)."""
    from skimage.exposure import rescale_intensity

    img = np.asarray(image, dtype=np.float32)
    p2, p98 = np.percentile(img, (2, 98))
    return np.asarray(rescale_intensity(img, in_range=(float(p2), float(p98)), out_range=(0.0, out_max)),
                      dtype=np.float32)


def standardize(array: np.ndarray, mean: float, std: float) -> np.ndarray:
    """(x - mean) / std with the training set's mean and std (SCT's ``_normalize_data``)."""
    return ((np.asarray(array, dtype=np.float32) - np.float32(mean)) / np.float32(std)).astype(np.float32)
