"""The cord's own coordinates, shared by every lesion family: anatomy, not lesion shape.

Why: each family describes its lesions where a radiologist would, along the cord and across
its cross-section ("a 30 mm fusiform lesion filling the central cord", "a 6 mm ovoid lesion in
the dorsal column"). This module turns a cord mask into those coordinates once per painting,
and offers the one geometric change that families may ask of the cord itself: widening
(swelling) or narrowing (atrophy) over a stretch, with the CSF pushed aside or filling in.

Arrays are RAS-ordered (axis 0 right-left, 1 antero-posterior, 2 the cord's axis), spacing in
mm, as everywhere in `inference.train`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class CordFrame:
    """Per axial slice: cord centre (voxels) and half-widths (mm), smoothed along the cord.

    `present[z]` is False where the slice holds no cord; centres and half-widths there are
    interpolated from the nearest cord slices so that coordinates stay defined.
    """

    spacing: tuple[float, float, float]
    present: np.ndarray  # (Z,) bool
    cx: np.ndarray  # (Z,) float, voxel index along axis 0
    cy: np.ndarray  # (Z,) float, voxel index along axis 1
    half_lr: np.ndarray  # (Z,) mm
    half_ap: np.ndarray  # (Z,) mm

    @property
    def cord_slices(self) -> np.ndarray:
        return np.flatnonzero(self.present)

    def offsets_mm(self, box: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(lr, ap, z) mm offsets of every voxel of `box` from the cord centre of its slice.

        lr and ap are measured from that slice's cord centre; z is the slice's own position in
        mm from the first slice of the volume (families subtract their lesion's centre).
        """
        sx, sy, sz = self.spacing
        xs = np.arange(box[0].start, box[0].stop, dtype=np.float32)
        ys = np.arange(box[1].start, box[1].stop, dtype=np.float32)
        zs = np.arange(box[2].start, box[2].stop)
        lr = (xs[:, None, None] - self.cx[zs][None, None, :]) * sx
        ap = (ys[None, :, None] - self.cy[zs][None, None, :]) * sy
        z = (zs.astype(np.float32) * sz)[None, None, :]
        shape = (len(xs), len(ys), len(zs))
        return (np.broadcast_to(lr, shape), np.broadcast_to(ap, shape), np.broadcast_to(z, shape))


def stretch_box(frame: CordFrame, shape: tuple[int, ...], zc: int, half_mm: float) -> tuple[slice, slice, slice]:
    """Whole axial slices from `half_mm` below to `half_mm` above slice `zc` (one slice margin)."""
    sz = frame.spacing[2]
    z0 = max(int(np.floor(zc - half_mm / sz)) - 1, 0)
    z1 = min(int(np.ceil(zc + half_mm / sz)) + 2, shape[2])
    return (slice(0, shape[0]), slice(0, shape[1]), slice(z0, z1))


def cord_frame(cord: np.ndarray, spacing: tuple[float, float, float], smooth_mm: float = 4.0) -> CordFrame:
    """CordFrame of a cord mask (RAS, cord along axis 2); ValueError if the mask is empty."""
    cord = np.asarray(cord) > 0
    if not cord.any():
        raise ValueError("cord_frame: the cord mask is empty; crop around the cord first")
    sx, sy, sz = spacing
    nz = cord.shape[2]
    count = cord.sum(axis=(0, 1)).astype(np.float64)
    present = count > 0
    xs = np.arange(cord.shape[0], dtype=np.float64)
    ys = np.arange(cord.shape[1], dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = (cord.sum(axis=1) * xs[:, None]).sum(0) / count
        cy = (cord.sum(axis=0) * ys[:, None]).sum(0) / count
    lr_any, ap_any = cord.any(axis=1), cord.any(axis=0)  # (X, Z), (Y, Z)
    half_lr = np.where(present, lr_any.sum(0) * sx / 2.0, np.nan)
    half_ap = np.where(present, ap_any.sum(0) * sy / 2.0, np.nan)
    z = np.arange(nz)
    idx = np.flatnonzero(present)
    out = []
    for arr in (cx, cy, half_lr, half_ap):
        filled = np.interp(z, idx, arr[idx])
        out.append(ndimage.gaussian_filter1d(filled, sigma=max(smooth_mm / sz, 0.5), mode="nearest"))
    return CordFrame(spacing=(float(sx), float(sy), float(sz)), present=present, cx=out[0], cy=out[1],
                     half_lr=np.maximum(out[2], sx / 2.0), half_ap=np.maximum(out[3], sy / 2.0))


def radial_warp(image: np.ndarray, cord: np.ndarray, frame: CordFrame, factor: np.ndarray,
                reach: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Scale the cord's cross-section by `factor[z]` (>1 swelling, <1 atrophy), CSF following.

    Within `factor[z]` cord radii of the centre the image is magnified by `factor[z]` about
    the cord centre; the displacement fades to none over `reach` more radii, so the canal
    around it is compressed (swelling) or widened (atrophy) and bone stays put. Slices with
    factor 1 are untouched. Returns (new image, new cord mask).
    """
    factor = np.asarray(factor, np.float64)
    zs = np.flatnonzero(np.abs(factor - 1.0) > 1e-3)
    if len(zs) == 0:
        return image, cord
    sx, sy, _ = frame.spacing
    z0, z1 = int(zs.min()), int(zs.max()) + 1
    rad_vox = float(max(frame.half_lr[z0:z1].max() / sx, frame.half_ap[z0:z1].max() / sy))
    grow = float(max(factor.max(), 1.0)) + reach + 0.5
    x0 = max(int(np.floor(frame.cx[z0:z1].min() - grow * rad_vox)), 0)
    x1 = min(int(np.ceil(frame.cx[z0:z1].max() + grow * rad_vox)) + 1, image.shape[0])
    y0 = max(int(np.floor(frame.cy[z0:z1].min() - grow * rad_vox)), 0)
    y1 = min(int(np.ceil(frame.cy[z0:z1].max() + grow * rad_vox)) + 1, image.shape[1])
    box = (slice(x0, x1), slice(y0, y1), slice(z0, z1))
    lr, ap, _ = frame.offsets_mm(box)
    a = frame.half_lr[z0:z1][None, None, :]
    b = frame.half_ap[z0:z1][None, None, :]
    rho = np.sqrt((lr / a) ** 2 + (ap / b) ** 2)
    g = factor[z0:z1][None, None, :]
    taper = np.clip(1.0 - (rho - g) / reach, 0.0, 1.0)  # 1 inside the scaled cord, 0 beyond the reach
    shrink = 1.0 - (1.0 - 1.0 / g) * taper  # source radius / output radius
    src_x = frame.cx[z0:z1][None, None, :] + lr * shrink / sx
    src_y = frame.cy[z0:z1][None, None, :] + ap * shrink / sy
    src_z = np.broadcast_to(np.arange(z0, z1, dtype=np.float64)[None, None, :], lr.shape)
    coords = np.stack([src_x, src_y, src_z])
    new_image = np.array(image, dtype=np.float32, copy=True)
    new_cord = np.array(cord, dtype=bool, copy=True)
    new_image[box] = ndimage.map_coordinates(np.asarray(image, np.float32), coords, order=1, mode="nearest")
    new_cord[box] = ndimage.map_coordinates(np.asarray(cord, np.float32), coords, order=1, mode="nearest") > 0.5
    return new_image, new_cord


def stretch_profile(nz: int, center_z: float, half_len_vox: float, amplitude: float) -> np.ndarray:
    """A smooth bump over slices: 1 + amplitude at `center_z`, 1 beyond `half_len_vox` slices."""
    t = (np.arange(nz) - center_z) / max(half_len_vox, 1.0)
    bump = np.where(np.abs(t) < 1.0, np.cos(np.clip(t, -1, 1) * np.pi / 2.0) ** 2, 0.0)
    return 1.0 + amplitude * bump


def pick_center_slice(frame: CordFrame, rng: np.random.Generator, focus: tuple[slice, ...] | None,
                      cord: np.ndarray) -> int:
    """A cord slice for a lesion's centre, inside `focus` along the cord when it holds cord."""
    zs = frame.cord_slices
    if focus is not None:
        inside = zs[(zs >= focus[2].start) & (zs < focus[2].stop)]
        sub = cord[focus].any()
        if len(inside) and sub:
            zs = inside
    return int(zs[rng.integers(len(zs))])
