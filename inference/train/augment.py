"""Patch augmentation (torch, CPU-cheap): nnU-Net's recipe plus simulated clinical acquisitions.

Why the clinical part: the training volumes are 1 mm isotropic sagittal T2 and 0.5 mm axial
T2*, but the node sees 3-4 mm sagittal and 3-8 mm axial T2 series, anisotropic pixels,
receive-coil bias fields and cut-off fields of view. Each is simulated on the image only
(labels stay at full resolution: the network must recover the true anatomy), the same way
the engine will see such a series: thick slices averaged, then linearly resampled to the
model grid.

Tensors are (C, X, Y, Z) in RAS order: X = right-left, Y = antero-posterior, Z = cord axis.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from inference.segmentation import all_channels


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges (nnU-Net defaults where they exist, narrower where spine anatomy says so)."""

    p_rotate: float = 0.3
    rot_deg: tuple[float, float, float] = (20.0, 10.0, 15.0)  # about X (sagittal tilt), Y, Z
    p_scale: float = 0.3
    scale: tuple[float, float] = (0.8, 1.25)
    p_elastic: float = 0.2
    elastic_mm: float = 2.5
    p_mirror_lr: float = 0.5
    p_noise: float = 0.15
    noise_sd: tuple[float, float] = (0.0, 0.15)
    p_blur: float = 0.2
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    p_brightness: float = 0.15
    p_contrast: float = 0.15
    p_lowres: float = 0.2
    p_gamma: float = 0.3
    p_thick_sag: float = 0.2  # 3-4 mm sagittal slices: averaged along X
    p_thick_ax: float = 0.2  # thick axial slices: averaged along Z
    thick_ax_mm: tuple[float, float] = (3.0, 8.0)  # their thickness (models before 1.3 were trained with 3-6)
    p_aniso_inplane: float = 0.15
    p_bias: float = 0.25
    p_partial_fov: float = 0.1


# ---------------------------------------------------------------- spatial

def _rotation(angles: np.ndarray) -> np.ndarray:
    ax, ay, az = angles
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def spatial(image: torch.Tensor, labels: torch.Tensor, out_shape: tuple[int, int, int],
            center: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig, air: float,
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample a patch of `out_shape` around `center` (crop voxels) with rotation/scale/elastic.

    One grid_sample does crop + all spatial transforms at once (image trilinear, labels
    trilinear then thresholded at 0.5 by the caller's loss targets).
    """
    out = np.asarray(out_shape)
    lo = np.round(center - (out - 1) / 2.0).astype(int)
    center = lo + (out - 1) / 2.0  # snap to the voxel grid: un-rotated patches need no interpolation
    mat = np.eye(3)
    moved = False
    if rng.random() < cfg.p_rotate:
        mat = _rotation(np.deg2rad(rng.uniform(-1, 1, 3) * np.asarray(cfg.rot_deg))) @ mat
        moved = True
    if rng.random() < cfg.p_scale:
        mat = mat * rng.uniform(*cfg.scale)  # >1 samples a larger region: anatomy looks smaller
        moved = True
    elastic = rng.random() < cfg.p_elastic
    if not moved and not elastic:  # plain crop: no interpolation, much cheaper
        return (_crop_t(image, lo, out, air), _crop_t(labels, lo, out, 0.0))
    size_in = np.asarray(image.shape[1:], float)
    theta = np.diag(1.0 / size_in) @ mat @ np.diag(out.astype(float))  # normalised out -> in
    shift = (2.0 * center + 1.0) / size_in - 1.0
    rev = [2, 1, 0]  # affine_grid works in (W, H, D) = (Z, Y, X) order
    full = np.concatenate([theta[np.ix_(rev, rev)], shift[rev, None]], axis=1).astype(np.float32)
    grid = F.affine_grid(torch.from_numpy(full)[None], [1, 1, *[int(n) for n in out]], align_corners=False)
    if elastic:
        coarse = torch.from_numpy(rng.standard_normal((1, 3, 4, 4, 5)).astype(np.float32)) * cfg.elastic_mm
        disp = F.interpolate(coarse, size=tuple(int(n) for n in out), mode="trilinear", align_corners=True)
        scale = torch.from_numpy((2.0 / size_in[rev]).astype(np.float32))
        grid = grid + disp[0].permute(1, 2, 3, 0) * scale
    stacked = torch.cat([image - air, labels], dim=0)[None]
    res = F.grid_sample(stacked, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    return res[:1] + air, res[1:]


def _crop_t(arr: torch.Tensor, lo: np.ndarray, shape: np.ndarray, fill: float) -> torch.Tensor:
    """Crop (C, X, Y, Z) at integer origin `lo`, padding with `fill` outside."""
    out = torch.full((arr.shape[0], *[int(n) for n in shape]), fill, dtype=arr.dtype)
    src_lo = np.maximum(lo, 0)
    src_hi = np.minimum(lo + shape, arr.shape[1:])
    if np.any(src_hi <= src_lo):
        return out
    dst = tuple(slice(int(a - o), int(b - o)) for a, b, o in zip(src_lo, src_hi, lo))
    src = [slice(int(a), int(b)) for a, b in zip(src_lo, src_hi)]
    out[all_channels(dst)] = arr[all_channels(src)]
    return out


# ---------------------------------------------------------------- intensity

def _gauss_kernel(sigma: float) -> torch.Tensor:
    r = max(1, int(math.ceil(2.5 * sigma)))
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def blur_axis(img: torch.Tensor, sigma: float, axis: int) -> torch.Tensor:
    """Separable Gaussian along one spatial axis (0..2) of a (C, X, Y, Z) tensor."""
    k = _gauss_kernel(sigma)
    x = img.movedim(axis + 1, -1)
    shp = x.shape
    y = F.conv1d(F.pad(x.reshape(-1, 1, shp[-1]), (len(k) // 2, len(k) // 2), mode="replicate"),
                 k.view(1, 1, -1))
    return y.reshape(shp).movedim(-1, axis + 1)


def thick_slices(img: torch.Tensor, axis: int, factor: float) -> torch.Tensor:
    """Average `factor` voxels into one slice along `axis`, then linear back (what the engine sees)."""
    n = img.shape[axis + 1]
    m = max(1, int(round(n / factor)))
    x = img.movedim(axis + 1, -1)
    shp = x.shape
    flat = x.reshape(1, -1, n)
    low = F.adaptive_avg_pool1d(flat, m)
    back = F.interpolate(low, size=n, mode="linear", align_corners=False)
    return back.reshape(shp).movedim(-1, axis + 1)


def as_acquired(before: np.ndarray, after: np.ndarray, slab: tuple[float, float, float]) -> np.ndarray:
    """`after` with the change from `before` seen through thick source voxels.

    Why: a model-space volume made from 3 mm axial slices is already smooth along Z, but a
    lesion painted into it at 1 mm is sharp there, which no scanner can produce; a real lesion
    in that series is averaged over its slice and interpolated like the rest of the image.
    `slab` is the source voxel size over the model spacing per model axis; axes with a factor
    of 1.5 or more get the change averaged into slabs of that many voxels and interpolated back.
    """
    change = torch.from_numpy(np.asarray(after, np.float32) - np.asarray(before, np.float32))[None]
    thick = [(axis, f) for axis, f in enumerate(slab) if f >= 1.5]
    if not thick:
        return np.asarray(after, np.float32)
    for axis, f in thick:
        change = thick_slices(change, axis, f)
    return (np.asarray(before, np.float32) + change[0].numpy()).astype(np.float32)


def bias_field(shape: tuple[int, ...], rng: np.random.Generator, strength: float) -> torch.Tensor:
    """Smooth multiplicative field exp(quadratic polynomial), as receive coils make."""
    axes = [torch.linspace(-1, 1, n) for n in shape]
    g = torch.meshgrid(*axes, indexing="ij")
    c = rng.uniform(-1, 1, 9) * strength
    log = (c[0] * g[0] + c[1] * g[1] + c[2] * g[2] + c[3] * g[0] ** 2 + c[4] * g[1] ** 2
           + c[5] * g[2] ** 2 + c[6] * g[0] * g[1] + c[7] * g[1] * g[2] + c[8] * g[0] * g[2])
    return torch.exp(log)


def intensity(img: torch.Tensor, labels: torch.Tensor, rng: np.random.Generator,
              cfg: AugmentConfig, air: float) -> tuple[torch.Tensor, torch.Tensor]:
    """All image-only augmentations; `labels` only changes for a cut-off field of view."""
    # acquisition first (physics), then nnU-Net's generic intensity transforms
    if rng.random() < cfg.p_bias:
        img = air + (img - air) * bias_field(tuple(img.shape[1:]), rng, rng.uniform(0.1, 0.35))
    if rng.random() < cfg.p_thick_sag:
        img = thick_slices(img, 0, rng.uniform(3.0, 4.0))
    if rng.random() < cfg.p_thick_ax:
        img = thick_slices(img, 2, rng.uniform(*cfg.thick_ax_mm))
    if rng.random() < cfg.p_aniso_inplane:
        img = thick_slices(img, int(rng.integers(0, 3)), rng.uniform(1.3, 2.0))
    if rng.random() < cfg.p_noise:
        img = img + torch.randn_like(img) * float(rng.uniform(*cfg.noise_sd))
    if rng.random() < cfg.p_blur:
        for ax in range(3):
            if rng.random() < 0.5:
                img = blur_axis(img, float(rng.uniform(*cfg.blur_sigma)), ax)
    if rng.random() < cfg.p_brightness:
        img = img * float(rng.uniform(0.75, 1.25))
    if rng.random() < cfg.p_contrast:
        mean = img.mean()
        lo, hi = img.min(), img.max()
        img = ((img - mean) * float(rng.uniform(0.75, 1.25)) + mean).clamp(lo, hi)
    if rng.random() < cfg.p_lowres:
        zoom = rng.uniform(0.5, 1.0)
        shp = img.shape[1:]
        low = F.interpolate(img[None], scale_factor=zoom, mode="nearest")
        img = F.interpolate(low, size=tuple(shp), mode="trilinear", align_corners=False)[0]
    if rng.random() < cfg.p_gamma:
        invert = rng.random() < 0.15
        x = -img if invert else img
        lo, hi = x.min(), x.max()
        rng_ = (hi - lo).clamp_min(1e-6)
        mean, std = x.mean(), x.std()
        x = ((x - lo) / rng_) ** float(rng.uniform(0.7, 1.5)) * rng_ + lo
        x = (x - x.mean()) / x.std().clamp_min(1e-6) * std + mean  # gamma keeps mean/sd (nnU-Net)
        img = -x if invert else x
    if rng.random() < cfg.p_partial_fov:
        ax = int(rng.integers(0, 3))
        n = img.shape[ax + 1]
        cut = int(rng.integers(n // 8, n // 3))
        sl = [slice(None)] * 4
        sl[ax + 1] = slice(0, cut) if rng.random() < 0.5 else slice(n - cut, n)
        img = img.clone()
        labels = labels.clone()
        img[tuple(sl)] = air
        labels[tuple(sl)] = 0.0
    return img, labels


def mirror_lr(img: torch.Tensor, labels: torch.Tensor, rng: np.random.Generator,
              cfg: AugmentConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-right only: anterior/posterior and head/feet are never mirrored in real anatomy."""
    if rng.random() < cfg.p_mirror_lr:
        return img.flip(1), labels.flip(1)
    return img, labels
