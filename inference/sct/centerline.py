"""Where the cord is, slice by slice: SCT's centerline network and what replaces OptiC.

``heatmap`` is SCT's ``deepseg_sc.core.heatmap`` (``-centerline cnn``): the 0.5 mm in-plane image is
scaled to 0..255 (2nd..98th percentile), cut into non-overlapping 80x80 tiles, and the 2D
centerline network (``*_ctr.h5``) runs slice by slice from the bottom up: on the tile centred on the
previous slice's cord when there was one, else on every tile of the slice (the tile that held the
most cord goes first next time). Where the output is > 0.5, the distance to the edge of that region
is the heatmap. With SCT's ``brain_bool`` (on by default, ``-brain 1``), more than 10 consecutive
slices scanned in full stop the search (the brain has been reached) and the centerline is cut
below the last slice with cord (``z_max``).

SCT then hands the heatmap to OptiC (``isct_spine_detect`` with its own model files), a
minimal-path search not available here. ``centerline_from_heatmap`` replaces it: per slice the
heatmap-weighted centre of the region holding the heatmap's maximum; points farther than
OUTLIER_MM in plane from the median of their neighbours within OUTLIER_WINDOW_MM along z are
dropped; the remaining points are joined linearly and held constant beyond the first and last,
so every slice gets a centre as OptiC's path gives one; the centres are rounded to voxels (OptiC
returns a voxel per slice). ``centres_from_mask`` is SCT's ``-centerline file`` with a cord mask:
the centre of mass of the (linearly resampled) mask in each slice, none where it is empty.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from inference.sct.crop import crop_start_end
from inference.sct.normalize import scale_intensity, standardize
from inference.sct.params import CTR_DETECTED, CTR_MISSES_BEFORE_BRAIN, CTR_PATCH
from inference.sct.patches import Network

OUTLIER_MM = 10.0  # a centre this far (in plane) from its neighbours' median is dropped
OUTLIER_WINDOW_MM = 20.0  # neighbours: slices within this distance along z


class CenterlineError(ValueError):
    """The centerline network found no spinal cord in the image."""


def _predict_tiles(net: Network, tiles: list[np.ndarray], mean: float, std: float) -> np.ndarray:
    """The network on 2D tiles (channels last as the Keras file stores them) -> (n, 80, 80)."""
    x = standardize(np.stack(tiles), mean, std)[..., None]
    y = np.asarray(net(x))
    if y.shape != x.shape:
        raise ValueError(f"centerline network returned {y.shape}, expected {x.shape}")
    return y[..., 0]


def _largest_component_centre(detected: np.ndarray) -> tuple[int, int]:
    """Truncated centre of mass of the largest 4-connected region (SCT's ``scan_slice``)."""
    labels, _ = ndimage.label(detected)
    largest = int(np.bincount(labels.ravel())[1:].argmax()) + 1
    cx, cy = ndimage.center_of_mass(labels == largest)
    return int(cx), int(cy)


def _scan_slice(slice_img: np.ndarray, net: Network, mean: float, std: float, coords: list[list[int]],
                out_shape: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int] | None]:
    """Every tile of one (padded) slice; reorders ``coords`` so the tile with most cord goes first."""
    px, py = CTR_PATCH
    out = np.zeros(out_shape, dtype=np.float64)
    preds = _predict_tiles(net, [slice_img[c[0]:c[2], c[1]:c[3]] for c in coords], mean, std)
    sums = []
    for c, pred in zip(coords, preds):
        x_end = px - (c[2] - out_shape[0]) if c[2] > out_shape[0] else px
        y_end = py - (c[3] - out_shape[1]) if c[3] > out_shape[1] else py
        out[c[0]:c[2], c[1]:c[3]] = pred[:x_end, :y_end]
        sums.append(float(np.sum(pred[:x_end, :y_end])))
    coords.insert(0, coords.pop(int(np.argmax(sums))))
    if out.max() > CTR_DETECTED:
        return out, _largest_component_centre(out > CTR_DETECTED)
    return out, None


def heatmap(image: np.ndarray, net: Network, mean: float, std: float,
            brain: bool = True) -> tuple[np.ndarray, int | None]:
    """(heatmap of the image's shape, z_max or None) for a 0.5 mm in-plane RPI image (X, Y, Z).

    Follows SCT step for step, including two of its quirks kept on purpose (they change which
    pixels the network sees): the image is cropped at the anterior side to whole tiles, and a
    tracking tile that overhangs the image's right-left end is written back shifted to end at the
    image's edge.
    """
    px, py = CTR_PATCH
    data_im = np.asarray(image, dtype=np.float32)
    data = np.zeros(data_im.shape, dtype=np.float64)
    nx, ny = data_im.shape[:2]
    x_blocks, y_blocks = int(np.ceil(nx / px)), int(ny / py)
    x_pad = x_blocks * px - nx
    if ny > py:
        data_im = data_im[:, :y_blocks * py, :]
        coords = [[xd * px, yd * py, (xd + 1) * px, (yd + 1) * py] for yd in range(y_blocks) for xd in range(x_blocks)]
    else:
        data_im = np.pad(data_im, ((0, 0), (0, py - ny), (0, 0)))
        coords = [[xd * px, 0, (xd + 1) * px, py] for xd in range(x_blocks)]
    data_im = scale_intensity(np.pad(data_im, ((0, x_pad), (0, 0), (0, 0))))

    centre: tuple[int, int] | None = None
    misses = 0
    for z in range(data_im.shape[2]):
        if centre is not None:
            misses = 0
            x0, x1 = crop_start_end(centre[0], px, data_im.shape[0])
            y0, y1 = crop_start_end(centre[1], py, data_im.shape[1])
            pred = _predict_tiles(net, [data_im[x0:x1, y0:y1, z]], mean, std)[0]
            x_end, y_end = px, py
            if x1 > nx:
                x_end, x1, x0 = nx, nx, (nx - px if nx > px else 0)
            if y1 > ny:
                y_end, y1, y0 = ny, ny, (ny - py if ny > py else 0)
            data[x0:x1, y0:y1, z] = pred[:x_end, :y_end]
            detected = data[:, :, z] > CTR_DETECTED
            centre = None
            if detected.any():
                cx, cy = ndimage.center_of_mass(detected)
                centre = (int(cx), int(cy))
        if centre is None:
            data[:, :, z], centre = _scan_slice(data_im[:, :, z], net, mean, std, coords, (nx, ny))
            misses += 1
            if misses > CTR_MISSES_BEFORE_BRAIN and brain:
                break
        plane = data[:, :, z]
        plane[plane < CTR_DETECTED] = 0
        data[:, :, z] = ndimage.distance_transform_edt(plane)
    if not data.any():
        raise CenterlineError("the centerline network found no spinal cord in any slice; is this an axial "
                              "spine image of the model's contrast?")
    with_cord = np.flatnonzero(data.any(axis=(0, 1)))
    z_max = int(with_cord[-1])
    last_slice = int(np.shape(image)[2]) - 1
    return data.astype(np.float32), (None if z_max == last_slice else z_max)


def _heatmap_points(heat: np.ndarray) -> np.ndarray:
    """(nz, 2) per-slice centre of the region holding the maximum, weighted by the heatmap; NaN if empty."""
    points = np.full((heat.shape[2], 2), np.nan)
    for z in range(heat.shape[2]):
        plane = heat[:, :, z]
        if not np.any(plane > 0):
            continue
        labels, _ = ndimage.label(plane > 0)
        peak = labels[np.unravel_index(int(np.argmax(plane)), plane.shape)]
        points[z] = ndimage.center_of_mass(np.where(labels == peak, plane, 0))
    return points


def reject_outliers(points: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """``points`` with NaN where a point lies > OUTLIER_MM in plane from the median of its neighbours."""
    px, py, pz = spacing
    half = max(1, int(round(OUTLIER_WINDOW_MM / pz)))
    out = points.copy()
    present = np.nonzero(np.isfinite(points[:, 0]))[0]
    for z in present:
        near = present[(np.abs(present - z) <= half) & (present != z)]
        if near.size == 0:
            continue
        med = np.median(points[near], axis=0)
        if np.hypot((points[z, 0] - med[0]) * px, (points[z, 1] - med[1]) * py) > OUTLIER_MM:
            out[z] = np.nan
    return out


def fill_centres(points: np.ndarray) -> np.ndarray:
    """Every slice a centre: linear between known points, held constant beyond the ends; voxel-rounded."""
    known = np.nonzero(np.isfinite(points[:, 0]))[0]
    if known.size == 0:
        raise CenterlineError("no slice kept a centerline point")
    z = np.arange(points.shape[0])
    filled = np.stack([np.interp(z, known, points[known, a]) for a in (0, 1)], axis=1)
    return np.round(filled)


def centerline_from_heatmap(heat: np.ndarray, spacing: tuple[float, float, float],
                            z_max: int | None) -> np.ndarray:
    """(nz, 2) centres (x, y) from the heatmap, NaN from ``z_max`` up (SCT cuts the centerline there)."""
    centres = fill_centres(reject_outliers(_heatmap_points(heat), spacing))
    if z_max is not None:
        centres[z_max:] = np.nan
    return centres


def centres_from_mask(mask: np.ndarray) -> np.ndarray:
    """(nz, 2) centre of mass of each slice of a (soft) cord mask, NaN where a slice is empty."""
    mask = np.asarray(mask, dtype=np.float64)
    centres = np.full((mask.shape[2], 2), np.nan)
    for z in range(mask.shape[2]):
        if np.any(mask[:, :, z]):
            centres[z] = ndimage.center_of_mass(mask[:, :, z])
    return centres
