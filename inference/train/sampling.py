"""Training patches: foreground-biased crop -> painted lesions -> spatial -> mirror -> intensity.

Why foreground-biased: the cord is <1 % of a whole-spine volume; as nnU-Net does, most
patches are centred on the cord (the rest anywhere) so the few CPU iterations we can
afford are spent where the decisions are.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from inference.train.appearance import AppearanceConfig, randomize
from inference.train.augment import AugmentConfig, as_acquired, intensity, mirror_lr, spatial
from inference.train.data import BY_KEY, CachedVolume
from inference.train.families import FAMILY_NAMES, family, painter
from inference.train.lesions import LesionConfig

GROUP_WEIGHTS = {"sag_t2": 0.5, "ax_t2star": 0.3, "crop": 0.2}


@dataclass
class SamplerConfig:
    patch: tuple[int, int, int] = (64, 64, 96)
    p_foreground: float = 0.8
    margin: float = 1.25  # crop = patch * margin, so rotations/scaling have real image to sample
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    lesions: LesionConfig = field(default_factory=LesionConfig)  # the painter family's ranges
    # lesion families drawn from (equal odds); leave-one-family-out training drops one
    families: tuple[str, ...] = FAMILY_NAMES
    appearance: AppearanceConfig | None = field(default_factory=AppearanceConfig)  # None: families' own look
    # painted lesions seen through thick source slices (augment.as_acquired); off = sharp at model spacing
    lesions_as_acquired: bool = True


def paint_cached(vol: CachedVolume, img: np.ndarray, cord: np.ndarray, spacing: tuple[float, float, float],
                 rng: np.random.Generator, cfg: LesionConfig = LesionConfig(), n_lesions: int | None = None,
                 focus: tuple[slice, ...] | None = None, acquired: bool = True, family_name: str = "painter",
                 appearance: AppearanceConfig | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, cord incl. lesion, lesion label) with lesions painted into a crop of a cached volume.

    One place for what every model-space painting needs (the sampler, the quick validation and
    the threshold calibration): the volume's own cord/CSF levels, its contrast's lesion sign, the
    family's shapes (`family_name`; the painter with `cfg`), the appearance randomisation, and
    with `acquired` the change seen through the source's thick slices (`as_acquired`). The cord
    comes back too: a family may swell or thin it.
    """
    sign = BY_KEY[vol.key].lesion_sign if vol.key in BY_KEY else 1.0
    levels = (vol.cord_level, vol.csf_level)
    if family_name == "painter":
        painted = painter.paint(img, cord > 0, spacing, rng, levels, sign=sign, focus=focus,
                                n_lesions=n_lesions, cfg=cfg)
    else:
        painted = family(family_name)(img, cord > 0, spacing, rng, levels, sign=sign, focus=focus,
                                      n_lesions=n_lesions)
    if appearance is not None:
        painted = randomize(img, painted, levels, vol.air, rng, sign=sign, spacing=spacing, cfg=appearance)
    out = as_acquired(img, painted.image, vol.slab) if acquired else painted.image
    return out, painted.cord.astype(np.uint8), painted.lesion


class PatchSampler:
    """Draws augmented (image, target) patches from cached model-space volumes."""

    def __init__(self, volumes: list[CachedVolume], cfg: SamplerConfig, seed: int) -> None:
        if not volumes:
            raise ValueError("PatchSampler: no training volumes; check split.json and the cache")
        self.volumes = volumes
        self.cfg = cfg
        self.rng = np.random.default_rng(seed)
        w = np.array([GROUP_WEIGHTS.get(v.group, 0.1) for v in volumes], float)
        for g in set(v.group for v in volumes):  # weight per group, shared by its volumes
            members = [i for i, v in enumerate(volumes) if v.group == g]
            w[members] /= len(members)
        self.weights = w / w.sum()

    def state(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One patch: image (1, X, Y, Z) float32 and target (2, X, Y, Z) in {0, 1} (cord incl. lesion, lesion)."""
        rng, cfg = self.rng, self.cfg
        vol = self.volumes[int(rng.choice(len(self.volumes), p=self.weights))]
        patch = np.asarray(cfg.patch)
        if rng.random() < cfg.p_foreground and len(vol.cord_idx):
            center = vol.cord_idx[rng.integers(len(vol.cord_idx))].astype(float)
            center += rng.uniform(-0.35, 0.35, 3) * patch  # the cord is not always mid-patch
        else:
            center = rng.uniform(0, 1, 3) * (np.asarray(vol.image.shape) - 1)
        crop_shape = np.ceil(patch * cfg.margin).astype(int)
        lo = np.round(center - crop_shape / 2).astype(int)
        img, cord, les = (self._crop(a, lo, crop_shape, fill) for a, fill in
                          ((vol.image, vol.air), (vol.cord, 0), (vol.lesion, 0)))
        if cord.any() and cfg.families and rng.random() >= cfg.lesions.p_lesion_free:
            inner_lo = np.round(center - lo - (patch - 1) / 2.0).astype(int)
            focus = tuple(slice(int(a), int(a + p)) for a, p in zip(inner_lo, patch))
            name = cfg.families[int(rng.integers(len(cfg.families)))]
            img, cord, painted = paint_cached(vol, img, cord, cfg.spacing, rng, cfg.lesions, focus=focus,
                                              acquired=cfg.lesions_as_acquired, family_name=name,
                                              appearance=cfg.appearance)
            les = np.maximum(les, painted)
        cord = np.maximum(cord, les)
        t_img = torch.from_numpy(img)[None]
        t_lab = torch.from_numpy(np.stack([cord, les]).astype(np.float32))
        local_center = center - lo
        px, py, pz = (int(p) for p in patch)
        t_img, t_lab = spatial(t_img, t_lab, (px, py, pz), local_center, rng, cfg.augment, vol.air)
        t_img, t_lab = mirror_lr(t_img, t_lab, rng, cfg.augment)
        t_img, t_lab = intensity(t_img, t_lab, rng, cfg.augment, vol.air)
        return t_img.contiguous(), (t_lab > 0.5).float().contiguous()

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [self.sample() for _ in range(n)]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])

    @staticmethod
    def _crop(arr: np.ndarray, lo: np.ndarray, shape: np.ndarray, fill: float) -> np.ndarray:
        """Crop with constant padding where the crop leaves the volume."""
        out = np.full(tuple(shape), fill, dtype=np.float32)
        src_lo = np.maximum(lo, 0)
        src_hi = np.minimum(lo + shape, arr.shape)
        if np.any(src_hi <= src_lo):
            return out
        dst_lo = src_lo - lo
        dst = tuple(slice(a, a + (c - b)) for a, b, c in zip(dst_lo, src_lo, src_hi))
        out[dst] = arr[tuple(slice(a, b) for a, b in zip(src_lo, src_hi))]
        return out
