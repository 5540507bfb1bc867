"""Lesion families: independent synthetic lesion generators, one module each.

Why several: a network trained on one painter learns that painter's signature, and the
lesion channel then misses lesions drawn any other way (issue 17: Dice 0.10-0.79 on an
independent synthesis). Each family here is written on its own, with its own shapes and
parameter ranges, after what the lesion looks like on T2 in that disease:

- `painter`: the original generator (`inference.train.lesions`): irregular blobs.
- `contusion`: acute SCI, fusiform edema with a haemorrhagic core and a swollen cord.
- `cyst`: chronic SCI, a CSF-bright cavity with a gliotic rim in an atrophic cord.
- `demyelination`: MS-like small eccentric ovoid lesions, or NMOSD-like long central ones.

They share only the cord's coordinates (`cordframe`) and the `Painted` result. What they look
like in a given image (contrast, hypointense parts, blur) is randomised afterwards by
`inference.train.appearance`, independently of the family, so that leave-one-family-out
evaluation (`inference.train.evaluate --families`) measures shape generalisation.
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


def _registry() -> dict[str, PaintFn]:
    from inference.train.families import contusion, cyst, demyelination, painter

    return {"painter": painter.paint, "contusion": contusion.paint, "cyst": cyst.paint,
            "demyelination": demyelination.paint}


FAMILY_NAMES: tuple[str, ...] = ("painter", "contusion", "cyst", "demyelination")


def family(name: str) -> PaintFn:
    """The paint function of family `name`; ValueError naming the known ones otherwise."""
    reg = _registry()
    if name not in reg:
        raise ValueError(f"unknown lesion family {name!r}; choose from {', '.join(FAMILY_NAMES)}")
    return reg[name]


def check_families(names: list[str] | tuple[str, ...], where: str) -> tuple[str, ...]:
    """Names validated against FAMILY_NAMES, in that order, or ValueError naming `where`."""
    bad = [n for n in names if n not in FAMILY_NAMES]
    if bad:
        raise ValueError(f"{where}: unknown lesion families {bad}; choose from {', '.join(FAMILY_NAMES)}")
    return tuple(n for n in FAMILY_NAMES if n in names)

