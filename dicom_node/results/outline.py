"""A region of one image as a closed polyline along its pixel edges: the SR's SCOORD outlines.

Why pixel edges: DICOM image coordinates put the top-left corner of the top-left pixel at
(0, 0) and its centre at (0.5, 0.5) (PS3.3 C.18.6.1.2), so an outline along pixel edges has
integer vertices, encloses exactly the region's pixels (its shoelace area is their count) and
no pixel centre ever lies on it: the outline maps back onto the mask without ambiguity.

One outline per region: the largest 4-connected component of the mask, its holes filled (a
SCOORD POLYLINE is one closed curve). With 4-connected foreground and holes filled under
4-connected background, no two pixels of the region touch only at a corner with background on
both other sides, so every vertex has one way on and the walk is unique.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage


class OutlineError(ValueError):
    """The mask has nothing to outline; the message says which."""


def largest_region(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a 2D (rows, columns) mask, holes filled (first on ties)."""
    labels, n = ndimage.label(np.asarray(mask) > 0)
    if n == 0:
        raise OutlineError("the mask is empty on this image: nothing to outline")
    sizes = np.bincount(labels.ravel())[1:]
    region = labels == int(np.argmax(sizes)) + 1
    filled: np.ndarray = ndimage.binary_fill_holes(region)
    return filled


def trace_outline(mask: np.ndarray) -> np.ndarray:
    """Closed outline of ``largest_region(mask)``: (n + 1, 2) float (column, row) image coordinates,
    clockwise on screen, corners only (no collinear vertices), first point repeated at the end."""
    region = largest_region(mask)
    padded = np.pad(region, 1)
    core = padded[1:-1, 1:-1]
    rows, cols = np.nonzero(core)
    # each pixel edge with background across it, directed so that the region is on its right
    # (x = column, y = row, y down): top, right, bottom, left
    sides = (
        (~padded[:-2, 1:-1], (0, 0), (1, 0)),
        (~padded[1:-1, 2:], (1, 0), (1, 1)),
        (~padded[2:, 1:-1], (1, 1), (0, 1)),
        (~padded[1:-1, :-2], (0, 1), (0, 0)),
    )
    step: dict[tuple[int, int], tuple[int, int]] = {}
    for open_side, (dx0, dy0), (dx1, dy1) in sides:
        hit = open_side[rows, cols]
        for r, c in zip(rows[hit].tolist(), cols[hit].tolist()):
            step[(c + dx0, r + dy0)] = (c + dx1, r + dy1)
    start = min(step, key=lambda p: (p[1], p[0]))  # top-most, then left-most corner: a convex corner
    path = [start]
    point = step[start]
    while point != start:
        path.append(point)
        point = step[point]
        if len(path) > len(step):
            raise OutlineError("outline does not close; the region is not simply connected")
    corners = [p for i, p in enumerate(path) if _turns(path[i - 1], p, path[(i + 1) % len(path)])]
    corners.append(corners[0])
    return np.asarray(corners, dtype=np.float64)


def _turns(before: tuple[int, int], at: tuple[int, int], after: tuple[int, int]) -> bool:
    return (at[0] - before[0], at[1] - before[1]) != (after[0] - at[0], after[1] - at[1])


def polygon_area(points: np.ndarray) -> float:
    """Shoelace area of a closed polyline (last point = first), in squared coordinate units."""
    x, y = np.asarray(points, dtype=np.float64).T
    return float(abs(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1])) / 2.0)
