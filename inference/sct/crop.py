"""SCT's crop around the centerline and its inverse (``crop_image_around_centerline``, ``uncrop_image``).

Each axial slice with a centerline point is cut to a CROP_SIZE x CROP_SIZE square around it (slices
without one stay zero in the crop and are not written back). The square is shifted inwards at the
image border, and zero-padded where the image is smaller than the square. SCT truncates the
centre to an integer and starts the square at centre - size/2 + 1; so do we, so the network sees
the same pixels.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def crop_start_end(centre: float, size: int, dim: int) -> tuple[int, int]:
    """[start, end) of a ``size`` window around ``centre`` inside [0, dim) (SCT's ``_find_crop_start_end``)."""
    half = size // 2
    start, end = int(centre) - half + 1, int(centre) + half + 1
    if end > dim:
        end = dim
        start = dim - size if dim >= size else 0
    if start < 0:
        start = 0
        end = size if dim >= size else dim
    return start, end


@dataclass(frozen=True)
class CropBoxes:
    """Where each cropped slice came from: slice index and the square's first x and y."""

    shape: tuple[int, int, int]  # the full grid
    size: int
    z: tuple[int, ...]
    x0: tuple[int, ...]
    y0: tuple[int, ...]


def crop(image: np.ndarray, centres: np.ndarray, size: int) -> tuple[np.ndarray, CropBoxes]:
    """(size x size x nz crop, boxes) of ``image`` (x, y, z) around ``centres`` ((nz, 2) x, y; NaN = none)."""
    image = np.asarray(image, dtype=np.float32)
    centres = np.asarray(centres, dtype=np.float64)
    if centres.shape != (image.shape[2], 2):
        raise ValueError(f"need one (x, y) centre per slice: {image.shape[2]} x 2, got {centres.shape}")
    out = np.zeros((size, size, image.shape[2]), dtype=np.float32)
    zs, xs, ys = [], [], []
    for z in range(image.shape[2]):
        if not np.all(np.isfinite(centres[z])):
            continue
        x0, x1 = crop_start_end(centres[z, 0], size, image.shape[0])
        y0, y1 = crop_start_end(centres[z, 1], size, image.shape[1])
        out[:x1 - x0, :y1 - y0, z] = image[x0:x1, y0:y1, z]
        zs.append(z)
        xs.append(x0)
        ys.append(y0)
    shape = (int(image.shape[0]), int(image.shape[1]), int(image.shape[2]))
    return out, CropBoxes(shape, size, tuple(zs), tuple(xs), tuple(ys))


def uncrop(data: np.ndarray, boxes: CropBoxes) -> np.ndarray:
    """The cropped slices written back into a zero image of the full grid (float32)."""
    data = np.asarray(data)
    if data.shape[:2] != (boxes.size, boxes.size) or data.shape[2] != boxes.shape[2]:
        raise ValueError(f"crop data {data.shape} does not fit boxes of {boxes.size} x {boxes.size} x {boxes.shape[2]}")
    out = np.zeros(boxes.shape, dtype=np.float32)
    for z, x0, y0 in zip(boxes.z, boxes.x0, boxes.y0):
        x1 = min(x0 + boxes.size, boxes.shape[0])
        y1 = min(y0 + boxes.size, boxes.shape[1])
        out[x0:x1, y0:y1, z] = data[:x1 - x0, :y1 - y0, z]
    return out
