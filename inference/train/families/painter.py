"""Family `painter`: the original generator (`inference.train.lesions`), irregular blobs.

Kept as it is so that models trained before the families existed can be compared on it; its
shapes and parameter ranges live in `lesions.LesionConfig`.
"""
from __future__ import annotations

import numpy as np

from inference.lesion_filter import label_lesions
from inference.train.families.painted import Painted
from inference.train.lesions import LesionConfig, paint_lesions


def paint(image: np.ndarray, cord: np.ndarray, spacing: tuple[float, float, float],
          rng: np.random.Generator, levels: tuple[float, float], sign: float = 1.0,
          focus: tuple[slice, ...] | None = None, n_lesions: int | None = None,
          cfg: LesionConfig = LesionConfig()) -> Painted:
    """0 to 3 irregular blobs (the count drawn when `n_lesions` is None)."""
    cord = np.asarray(cord) > 0
    if n_lesions is None:  # lesion-free patches are the sampler's choice, not the family's
        n_lesions = int(rng.integers(1, cfg.max_lesions + 1))
    out, label, _ = paint_lesions(image, cord, spacing, rng, cfg, n_lesions=n_lesions, levels=levels,
                                  sign=sign, focus=focus)
    instances, _ = label_lesions(label)  # overlapping blobs are one lesion, as a reader counts them
    return Painted(image=out, cord=cord | (label > 0), instances=np.minimum(instances, 255).astype(np.uint8))
