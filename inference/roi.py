"""Where the cord is: which tiles of the sliding-window grid a segmentation needs, and whether the
result of those tiles alone equals the full pass (numpy only; the engine runs the network).

The plan (inference.engine runs it):
1. a localiser (the model itself, once, without mirroring, on the image at half resolution)
   gives a coarse cord-or-lesion probability; ``select`` keeps its sizeable components above a
   low threshold, ``dilate`` adds a margin;
2. ``tiles_touching`` picks the tiles of the normal grid that intersect that region; the engine
   runs exactly those, in the grid's order;
3. ``complete_region`` marks the voxels whose every covering tile (of the tiles the full pass
   runs) was run: there the blended probabilities are the full pass's bit for bit (same tiles,
   same weights, same summation order); everywhere else they are set to 0;
4. ``spill`` checks the masks made from that result (in the input grid, where the engine keeps
   them): if the cord touches a voxel that differs from the full pass (or its neighbours), it
   may go on where nothing was computed, and the engine runs the remaining tiles.

Step 4 is what makes the result trustworthy whatever the localiser missed: a component of the
thresholded masks with no differing voxel next to it is a component of the full pass's masks
too, so the cord (and the lesions, which are inside it) are the full pass's, unless a component
larger than the cord lies where the ROI pass computed nothing; the localiser, which saw the
whole volume, found nothing that large there, and a large component reaching the ROI's border
also sends the engine to the full pass.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

THRESHOLD = 0.1  # localiser probability (max of cord and lesion) that may be cord
KEEP_FRACTION = 0.25  # localiser components at least this fraction of the largest are kept
CONFIDENT = 0.5  # the localiser's largest component must reach this probability somewhere
MARGIN_MM = 4.0  # dilation of the localiser's region (the border check catches what it misses)
MIN_SKIP_FRACTION = 0.1  # the ROI must skip at least this fraction of the body's tiles
MIN_OVERLAP = 0.5  # this fraction of the cord found must lie in the localiser's region (with margin)


def select(prob: np.ndarray) -> tuple[np.ndarray | None, str]:
    """The localiser's cord: components of ``prob >= THRESHOLD`` of at least KEEP_FRACTION of the
    largest's size; None and why when there is none or the largest is nowhere confident."""
    labels, n = ndimage.label(prob >= THRESHOLD, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return None, f"no cord found (localiser probability < {THRESHOLD} everywhere)"
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    largest = int(sizes.argmax())
    peak = float(prob[labels == largest].max())
    if peak < CONFIDENT:
        return None, f"no confident cord (localiser peak {peak:.2f} < {CONFIDENT})"
    keep = np.nonzero(sizes >= KEEP_FRACTION * sizes[largest])[0]
    return np.isin(labels, keep[keep > 0]), ""


def margin_voxels(mm: float, spacing: Sequence[float]) -> tuple[int, ...]:
    return tuple(int(np.ceil(mm / float(s))) for s in spacing)


def dilate(mask: np.ndarray, margin: Sequence[int]) -> np.ndarray:
    """Box dilation by ``margin`` voxels per axis (separable, so cheap on whole volumes)."""
    if not any(margin):
        return mask
    return ndimage.maximum_filter(mask, size=tuple(2 * m + 1 for m in margin))


def tiles_touching(region: np.ndarray, tiles: Sequence[tuple[int, ...]],
                   patch: Sequence[int]) -> list[tuple[int, ...]]:
    """The tiles (origins, in the grid's order) whose box holds a voxel of ``region``."""
    return [t for t in tiles if region[tuple(slice(s, s + p) for s, p in zip(t, patch))].any()]


def coverage(shape: Sequence[int], tiles: Sequence[tuple[int, ...]], patch: Sequence[int]) -> np.ndarray:
    """How many of ``tiles`` cover each voxel."""
    count = np.zeros(tuple(shape), np.int16)
    for t in tiles:
        count[tuple(slice(s, s + p) for s, p in zip(t, patch))] += 1
    return count


def complete_region(full: np.ndarray, run: np.ndarray) -> np.ndarray:
    """Voxels every full-pass tile of which was run (``full``, ``run``: coverage counts of the
    full pass's tiles and of the tiles run, the latter a subset of the former)."""
    return (run == full) & (run > 0)


def at_side_edge(cord: np.ndarray, prob: np.ndarray) -> str:
    """Why the localiser's cord is suspect: a confident part of it (``prob`` >= CONFIDENT) on the
    image's right-left or anterior-posterior edge (model space is RAS: axes 0 and 1). A cord runs
    out of the image at its superior and inferior ends only; on a side edge the localiser has
    found something else (on a T1w image it found the field of view's edges and missed the cord),
    or the field of view cuts the cord."""
    sure = cord & (prob >= CONFIDENT)
    for ax, name in ((0, "right-left"), (1, "anterior-posterior")):
        if np.take(sure, 0, axis=ax).any() or np.take(sure, -1, axis=ax).any():
            return f"the localiser's cord touches the image's {name} edge"
    return ""


def spill(union: np.ndarray, cord: np.ndarray, incomplete: np.ndarray, localised: np.ndarray) -> str:
    """Why the masks of a ROI result could differ from the full pass's, or "" when they cannot.

    ``union``: the thresholded cord-or-lesion regions, ``cord`` its largest component (what
    postprocessing keeps), ``incomplete``: the voxels whose value may differ from the full pass's,
    ``localised``: the localiser's region with its margin, all in one grid. A component with no
    incomplete voxel among its 26 neighbours is a component of the full pass's masks too; so the
    cord is the full pass's cord unless it touches that border, or a component that touches it
    could outgrow the cord outside the ROI (one at least KEEP_FRACTION of the cord's size: the
    localiser saw nothing that large outside the ROI). And the cord found must be mostly where the
    localiser saw it (MIN_OVERLAP of it inside ``localised``): else the localiser took something
    else for the cord, and the cord may be elsewhere.
    """
    if not cord.any():
        return "no cord above threshold inside the ROI"
    if (cord & localised).sum() < MIN_OVERLAP * cord.sum():
        return "the cord found lies outside the localiser's region"
    if not incomplete.any():
        return ""
    near = ndimage.maximum_filter(incomplete, size=3)  # the incomplete voxels and their 26 neighbours
    if (near & cord).any():
        return "the cord reaches the border of the ROI"
    labels, _ = ndimage.label(union, structure=np.ones((3, 3, 3), bool))
    touching = np.unique(labels[near & union])
    touching = touching[touching > 0]
    if touching.size and np.bincount(labels.ravel())[touching].max() >= KEEP_FRACTION * cord.sum():
        return "a component at the border of the ROI could outgrow the cord"
    return ""
