"""Synthetic intramedullary lesions painted into real cords.

Why: no public T2 spine scan with real lesion labels exists (see /work/shared/data/README.md),
so the lesion channel is learnt from lesions painted into real, manually segmented cords.
They follow what SCI/MS/DCM lesions look like on T2: irregular blobs elongated along the
cord, brighter than the cord (towards the CSF level, which is also what makes the rule
contrast-agnostic: on T1 the CSF, and lesions, are dark), an edema-like falloff to the
border, sometimes a dark haemorrhagic core, sometimes touching the cord border, sometimes
several per cord. The label is the painted blob clipped to the cord; the cord label keeps
the lesion (region-based training as SCIseg).

All geometry is in millimetres so the same code paints the 1 mm training crops and the
anisotropic (0.4 x 0.4 x 3 mm) validation volumes. Arrays are RAS-ordered: the cord runs
roughly along axis 2. A 1 mm training crop made from thick slices gets its painted change
averaged through those slices afterwards (`augment.as_acquired`), so that its lesions look
like those of the acquisition rather than sharper than anything else in the image.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class LesionConfig:
    """Ranges the lesion generator samples from (mm, fractions of the CSF-cord contrast)."""

    p_lesion_free: float = 0.25
    max_lesions: int = 3
    length_mm: tuple[float, float] = (2.0, 40.0)  # along the cord, log-uniform
    width_mm: tuple[float, float] = (1.5, 9.0)  # across the cord (full width), log-uniform
    contrast: tuple[float, float] = (0.45, 1.1)  # lesion = cord + c * (csf - cord)
    p_core: float = 0.25  # haemorrhagic (hypointense) core
    core_contrast: tuple[float, float] = (0.3, 1.0)  # core = cord - c * |csf - cord|
    p_border: float = 0.35  # centre placed near the cord border
    irregularity: tuple[float, float] = (0.2, 0.8)  # amplitude of the smoothed noise on r^2
    min_voxels: int = 3  # a lesion smaller than this after clipping is discarded


MIN_CONTRAST = 2.0  # lesion reference at least this many cord SDs from the cord level


@dataclass
class PaintedLesion:
    """What was painted: centre (voxel), size, and the number of labelled voxels."""

    center_vox: tuple[float, float, float]
    length_mm: float
    width_mm: float
    contrast: float
    core: bool
    voxels: int
    extra: dict[str, float] = field(default_factory=dict)


def intensity_levels(image: np.ndarray, cord: np.ndarray, spacing: tuple[float, float, float],
                     sign: float = 1.0) -> tuple[float, float]:
    """(cord level, lesion reference level) from the cord and a 1-3 mm ring around it.

    Why a ring percentile: the ring holds CSF and, where the cord touches it, dura/bone;
    its bright end is the CSF on T2/T2* (`sign` +1: lesions hyperintense), its dark end the
    CSF on T1 (`sign` -1: lesions hypointense). The reference is kept at least
    `MIN_CONTRAST` cord standard deviations away from the cord, on the `sign` side, so a
    lesion is always visible even where the CSF is thin or has partial-volume with bone.
    """
    cord = cord.astype(bool)
    if not cord.any():
        raise ValueError("intensity_levels: the cord mask is empty; crop around the cord first")
    cord_level = float(np.median(image[cord]))
    sl = _bbox(cord, margin=[int(np.ceil(4.0 / s)) for s in spacing])
    c, im = cord[sl], image[sl]
    near = dilate_mm(c, spacing, 1.0)
    far = dilate_mm(c, spacing, 3.0)
    ring = far & ~near
    vals = im[ring] if ring.any() else im[~c]
    ref = float(np.percentile(vals, 85 if sign > 0 else 15))
    spread = MIN_CONTRAST * float(np.std(image[cord]))
    if sign * (ref - cord_level) < spread:
        ref = cord_level + sign * spread
    return cord_level, ref


def paint_lesions(image: np.ndarray, cord: np.ndarray, spacing: tuple[float, float, float],
                  rng: np.random.Generator, cfg: LesionConfig = LesionConfig(),
                  n_lesions: int | None = None,
                  levels: tuple[float, float] | None = None, sign: float = 1.0,
                  focus: tuple[slice, ...] | None = None,
                  ) -> tuple[np.ndarray, np.ndarray, list[PaintedLesion]]:
    """Paint 0..max_lesions lesions; returns (new image, lesion label uint8, what was painted).

    `n_lesions=None` draws the count (lesion-free with probability `p_lesion_free`).
    `sign` +1 paints hyperintense lesions (T2, T2*), -1 hypointense ones (T1).
    `focus` (a box) restricts lesion centres to it when it holds cord: the trainer paints
    a crop larger than its patch and wants the lesions inside the patch.
    The lesion label is inside `cord` by construction.
    """
    cord = cord.astype(bool)
    out = image.astype(np.float32, copy=True)
    label = np.zeros(image.shape, np.uint8)
    if not cord.any():
        return out, label, []
    if n_lesions is None:
        n_lesions = 0 if rng.random() < cfg.p_lesion_free else int(rng.integers(1, cfg.max_lesions + 1))
    if n_lesions == 0:
        return out, label, []
    cord_level, csf = levels if levels is not None else intensity_levels(image, cord, spacing, sign)
    delta = csf - cord_level
    if abs(delta) < 1e-6:
        delta = float(np.std(image[cord])) + 1e-3
    sp = np.asarray(spacing, float)
    cord_idx = np.argwhere(cord)
    if focus is not None:
        lo = np.array([f.start for f in focus])
        hi = np.array([f.stop for f in focus])
        inside = np.all((cord_idx >= lo) & (cord_idx < hi), axis=1)
        if inside.any():
            cord_idx = cord_idx[inside]
    border_idx: np.ndarray | None = None
    painted: list[PaintedLesion] = []
    for _ in range(n_lesions):
        pool = cord_idx
        if rng.random() < cfg.p_border:
            if border_idx is None:
                border_idx = _border_voxels(cord, cord_idx)
            pool = border_idx
        center = pool[rng.integers(len(pool))].astype(float)
        center += rng.uniform(-0.5, 0.5, 3)
        length = float(np.exp(rng.uniform(*np.log(cfg.length_mm))))
        width = float(np.exp(rng.uniform(*np.log(cfg.width_mm))))
        length = max(length, width * rng.uniform(0.8, 1.2))  # elongated along the cord, or round
        lesion = PaintedLesion(center_vox=tuple(center), length_mm=length, width_mm=width,
                               contrast=float(rng.uniform(*cfg.contrast)),
                               core=bool(rng.random() < cfg.p_core), voxels=0)
        _paint_one(out, label, cord, sp, center, lesion, delta, rng, cfg)
        if lesion.voxels >= cfg.min_voxels:
            painted.append(lesion)
    return out, label, painted


def _paint_one(out: np.ndarray, label: np.ndarray, cord: np.ndarray, sp: np.ndarray,
               center: np.ndarray, lesion: PaintedLesion, delta: float,
               rng: np.random.Generator, cfg: LesionConfig) -> None:
    """Paint one lesion in place inside its bounding box (cheap: the box is a few mm wide)."""
    half_len, half_w = lesion.length_mm / 2.0, lesion.width_mm / 2.0
    ap_ratio = rng.uniform(0.6, 1.0)  # the cord is flatter antero-posteriorly
    reach = max(half_len, half_w) * 1.6 + 2.0
    lo = np.maximum(np.floor(center - reach / sp).astype(int), 0)
    hi = np.minimum(np.ceil(center + reach / sp).astype(int) + 1, np.array(out.shape))
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    cbox = cord[box]
    if not cbox.any():
        return
    tangent = cord_tangent(cord, center, sp)
    u = np.cross(tangent, [0.0, 1.0, 0.0])  # left-right direction orthogonal to the cord
    u /= max(np.linalg.norm(u), 1e-6)
    v = np.cross(tangent, u)
    # random roll of the cross-section axes: lesions are not aligned with the cord's axes
    ang = rng.uniform(-0.5, 0.5)
    u, v = np.cos(ang) * u + np.sin(ang) * v, -np.sin(ang) * u + np.cos(ang) * v
    grids = np.meshgrid(*[(np.arange(a, b) - c) * s for a, b, c, s in zip(lo, hi, center, sp)],
                        indexing="ij")
    d = np.stack(grids, axis=-1)  # mm offsets from the centre
    r2 = ((d @ tangent) / half_len) ** 2 + ((d @ u) / half_w) ** 2 + ((d @ v) / (half_w * ap_ratio)) ** 2
    noise = rng.standard_normal(r2.shape).astype(np.float32)
    sigma = np.maximum(1.2 / sp, 0.5)
    noise = ndimage.gaussian_filter(noise, sigma=sigma, mode="nearest")
    noise /= max(float(noise.std()), 1e-6)
    r2 = r2 + rng.uniform(*cfg.irregularity) * noise
    blob = (r2 < 1.0) & cbox
    blob = _largest(blob)
    n = int(blob.sum())
    if n == 0:
        return
    # edema-like falloff: strongest at the centre, about half contrast at the border
    profile = np.clip(1.0 - r2, 0.0, 1.0) ** 0.7
    weight = np.where(blob, 0.45 + 0.55 * profile, 0.0).astype(np.float32)
    weight = ndimage.gaussian_filter(weight, sigma=np.maximum(0.5 / sp, 0.3), mode="constant")
    weight *= _soft_inside(cbox, sp)
    change = lesion.contrast * delta * weight
    if lesion.core and n > 20:
        core = blob & (r2 < rng.uniform(0.08, 0.25))
        if core.any():
            core_w = ndimage.gaussian_filter(core.astype(np.float32), sigma=np.maximum(0.6 / sp, 0.3))
            target = -rng.uniform(*cfg.core_contrast) * abs(delta) * np.sign(delta)
            change = change * (1.0 - core_w) + target * core_w
            lesion.extra["core_voxels"] = float(core.sum())
    texture = 1.0 + 0.08 * rng.standard_normal(change.shape).astype(np.float32)
    out[box] += change * texture
    lab = label[box]
    newly = blob & (lab == 0)
    lab[blob] = 1
    lesion.voxels = int(newly.sum())


def cord_tangent(cord: np.ndarray, center: np.ndarray, sp: np.ndarray, half_mm: float = 8.0) -> np.ndarray:
    """Unit direction (mm space) of the cord at `center`, from slice centroids along axis 2."""
    z0 = int(round(center[2]))
    h = max(1, int(round(half_mm / sp[2])))
    zs, cs = [], []
    for z in range(max(0, z0 - h), min(cord.shape[2], z0 + h + 1)):
        pts = np.argwhere(cord[:, :, z])
        if len(pts):
            zs.append(z)
            cs.append(pts.mean(axis=0))
    if len(zs) < 2:
        return np.array([0.0, 0.0, 1.0])
    zs_a, cs_a = np.asarray(zs, float), np.asarray(cs)
    dx = np.polyfit(zs_a, cs_a[:, 0], 1)[0] * sp[0]
    dy = np.polyfit(zs_a, cs_a[:, 1], 1)[0] * sp[1]
    t = np.array([dx, dy, sp[2]])
    return t / np.linalg.norm(t)


def _border_voxels(cord: np.ndarray, cord_idx: np.ndarray) -> np.ndarray:
    """Those of `cord_idx` with a 6-neighbour outside the cord (computed in their bounding box only)."""
    lo = np.maximum(cord_idx.min(0) - 1, 0)
    hi = np.minimum(cord_idx.max(0) + 2, cord.shape)
    sub = cord[tuple(slice(a, b) for a, b in zip(lo, hi))]
    border = sub & ~ndimage.binary_erosion(sub, border_value=1)
    local = cord_idx - lo
    keep = border[local[:, 0], local[:, 1], local[:, 2]]
    return cord_idx[keep] if keep.any() else cord_idx


def _soft_inside(mask: np.ndarray, sp: np.ndarray) -> np.ndarray:
    """1 inside the cord, fading over ~1 mm outside: paint stays in the cord with no hard edge."""
    return np.maximum(mask.astype(np.float32),
                      ndimage.gaussian_filter(mask.astype(np.float32), sigma=np.maximum(0.6 / sp, 0.3)))


def _largest(mask: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if n <= 1:
        return mask
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(sizes.argmax())


def _bbox(mask: np.ndarray, margin: list[int]) -> tuple[slice, ...]:
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + 1 + np.asarray(margin), mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def dilate_mm(mask: np.ndarray, spacing: tuple[float, float, float], mm: float) -> np.ndarray:
    """Dilate by `mm` with an ellipsoidal (anisotropy-aware) structuring element."""
    r = [max(0, int(round(mm / s))) for s in spacing]
    grids = np.meshgrid(*[np.arange(-k, k + 1) * s / max(mm, 1e-6) for k, s in zip(r, spacing)],
                        indexing="ij")
    struct = sum(g ** 2 for g in grids) <= 1.0
    return ndimage.binary_dilation(mask, structure=struct)
