"""What every lesion family returns (`Painted`) and its paint function's signature (`PaintFn`).

A module of its own so the families import it from below instead of from their package, whose
`family()` imports them (the package re-exports both names).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass
class Painted:
    """One painting: the new image, the cord after any swelling or atrophy (lesion included),
    and the lesions as instances (0 background, 1..n one lesion each, as a reader outlines it)."""

    image: np.ndarray  # float32
    cord: np.ndarray  # bool
    instances: np.ndarray  # uint8

    @classmethod
    def blank(cls, image: np.ndarray, cord: np.ndarray) -> "Painted":
        """Nothing painted yet: a float32 copy of the image, the cord as bool, no lesion."""
        cord = np.asarray(cord) > 0
        return cls(np.asarray(image, np.float32).copy(), cord, np.zeros(cord.shape, np.uint8))

    @property
    def lesion(self) -> np.ndarray:
        return (self.instances > 0).astype(np.uint8)

    @property
    def count(self) -> int:
        return int(len(np.unique(self.instances)) - 1)


class PaintFn(Protocol):
    def __call__(self, image: np.ndarray, cord: np.ndarray, spacing: tuple[float, float, float],
                 rng: np.random.Generator, levels: tuple[float, float], sign: float = 1.0,
                 focus: tuple[slice, ...] | None = None, n_lesions: int | None = None) -> Painted: ...
