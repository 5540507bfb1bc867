"""How far two lesion masks of one image agree: lesion by lesion, voxel by voxel, volume by volume.

Why: on real patients there is no ground truth here, only a second opinion (SCT's models, trained on
real MS lesions, next to ours). Lesions are the connected components every other count here uses
(``lesion_filter.label_lesions``, 18-connectivity). A lesion of one mask is detected by the other
when they share a voxel; overlapping lesions form one matched group (a lesion one model splits in
two is one group, not one hit and one miss), whose volumes are compared. With A as the reference,
recall = A lesions detected by B / A lesions, precision = B lesions detected by A / B lesions, and
the lesion-wise F1 is their harmonic mean; Dice is voxel-wise. Undefined values (nothing in either
mask) are None.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from inference.lesion_filter import label_lesions, voxel_volume_mm3


@dataclass(frozen=True)
class LesionGroup:
    """Lesions of A and B that overlap (directly or through each other), with their volumes."""

    a_labels: tuple[int, ...]
    b_labels: tuple[int, ...]
    a_volume_mm3: float
    b_volume_mm3: float
    dice: float

    @property
    def volume_difference_mm3(self) -> float:
        """B minus A."""
        return self.b_volume_mm3 - self.a_volume_mm3


@dataclass(frozen=True)
class LesionAgreement:
    a_volumes_mm3: tuple[float, ...]  # per lesion of A, label 1..n in raster order
    b_volumes_mm3: tuple[float, ...]
    groups: tuple[LesionGroup, ...]
    a_only: tuple[int, ...]  # labels of A lesions that B does not touch
    b_only: tuple[int, ...]
    recall: float | None  # A lesions detected by B / A lesions
    precision: float | None  # B lesions detected by A / B lesions
    f1: float | None
    dice: float | None

    @property
    def a_count(self) -> int:
        return len(self.a_volumes_mm3)

    @property
    def b_count(self) -> int:
        return len(self.b_volumes_mm3)

    def to_json(self) -> dict[str, Any]:
        return {
            "a_count": self.a_count, "b_count": self.b_count,
            "a_total_volume_mm3": float(sum(self.a_volumes_mm3)), "b_total_volume_mm3": float(sum(self.b_volumes_mm3)),
            "a_volumes_mm3": list(self.a_volumes_mm3), "b_volumes_mm3": list(self.b_volumes_mm3),
            "matched_groups": [{"a_labels": list(g.a_labels), "b_labels": list(g.b_labels),
                                "a_volume_mm3": g.a_volume_mm3, "b_volume_mm3": g.b_volume_mm3,
                                "volume_difference_mm3": g.volume_difference_mm3, "dice": g.dice}
                               for g in self.groups],
            "a_only": list(self.a_only), "b_only": list(self.b_only),
            "recall": self.recall, "precision": self.precision, "f1": self.f1, "dice": self.dice,
        }


def lesion_f1(found: int, n_true: int, right: int, n_pred: int) -> float:
    """Harmonic mean of sensitivity found/n_true and PPV right/n_pred, from the counts.

    Why from counts: 2*s*p/(s+p) in floats can land a hair under a round target (8/9 and 8/11
    give 0.7999999999999999, not 0.8); the same value as one integer ratio is exact.
    """
    den = found * n_pred + right * n_true
    return 0.0 if n_true == 0 or n_pred == 0 or den == 0 else 2 * found * right / den


def _dice(a: np.ndarray, b: np.ndarray) -> float | None:
    total = int(a.sum()) + int(b.sum())
    return None if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def _groups(pairs: set[tuple[int, int]]) -> list[tuple[set[int], set[int]]]:
    """Connected components of the bipartite overlap graph (A label, B label)."""
    left: dict[int, set[int]] = {}
    right: dict[int, set[int]] = {}
    for a, b in pairs:
        left.setdefault(a, set()).add(b)
        right.setdefault(b, set()).add(a)
    seen: set[int] = set()
    out = []
    for start in sorted(left):
        if start in seen:
            continue
        group_a, group_b, todo = {start}, set(), [start]
        while todo:
            for b in left[todo.pop()]:
                if b not in group_b:
                    group_b.add(b)
                    for a in right[b] - group_a:
                        group_a.add(a)
                        todo.append(a)
        seen |= group_a
        out.append((group_a, group_b))
    return out


def compare_lesions(a: np.ndarray, b: np.ndarray, affine: np.ndarray) -> LesionAgreement:
    """Agreement of lesion masks ``a`` (reference) and ``b``, both on the grid of ``affine``."""
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    if a.shape != b.shape:
        raise ValueError(f"lesion masks of different grids: {a.shape} and {b.shape}")
    voxel = voxel_volume_mm3(affine)
    la, na = label_lesions(a)
    lb, nb = label_lesions(b)
    va = np.bincount(la.ravel(), minlength=na + 1)[1:] * voxel
    vb = np.bincount(lb.ravel(), minlength=nb + 1)[1:] * voxel
    both = (la > 0) & (lb > 0)
    pairs = {(int(x), int(y)) for x, y in zip(la[both], lb[both])}
    groups = []
    for ga, gb in _groups(pairs):
        in_a, in_b = np.isin(la, sorted(ga)), np.isin(lb, sorted(gb))
        groups.append(LesionGroup(tuple(sorted(ga)), tuple(sorted(gb)), float(va[[i - 1 for i in ga]].sum()),
                                  float(vb[[i - 1 for i in gb]].sum()), float(_dice(in_a, in_b) or 0.0)))
    hit_a = {x for x, _ in pairs}
    hit_b = {y for _, y in pairs}
    recall = len(hit_a) / na if na else None
    precision = len(hit_b) / nb if nb else None
    f1 = None if recall is None and precision is None else lesion_f1(len(hit_a), na, len(hit_b), nb)
    return LesionAgreement(
        a_volumes_mm3=tuple(float(v) for v in va), b_volumes_mm3=tuple(float(v) for v in vb), groups=tuple(groups),
        a_only=tuple(i for i in range(1, na + 1) if i not in hit_a),
        b_only=tuple(i for i in range(1, nb + 1) if i not in hit_b),
        recall=recall, precision=precision, f1=f1, dice=_dice(a, b))
