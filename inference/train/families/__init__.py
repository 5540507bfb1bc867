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

from inference.train.families.painted import Painted, PaintFn

__all__ = ["FAMILY_NAMES", "PaintFn", "Painted", "check_families", "family"]


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

