"""Cord cross-sectional area per vertebral level, set against 203 healthy adults, and lesion level spans.

Why per level: a cord's area depends on where it is measured (C4-C5 is the cervical enlargement,
the thoracic cord is a third smaller), so a mean over whatever the field of view holds cannot be
compared between patients; the area at a named level, as a z-score among healthy adults of the
same sex and age, can. Definitions follow Spinal Cord Toolbox:
- a slice belongs to the level given by the rounded mean level of its labelled cord voxels, and a
  level's CSA is the mean of its slices' CSA (sct_process_segmentation -vert N -perlevel 1);
- the C2-C3 CSA is the mean over the slices of levels 2 and 3 together (-vert 2:3);
- the normative table (inference/reference/csa_normative.json, scripts/make_reference.py) is
  PAM50-normalized-metrics' spine-generic cohort, the one sct_compute_compression -normalize-hc uses;
  people are matched on sex and age band when the header says them, falling back to fewer criteria
  when a group has fewer than REFERENCE_MIN_N people at that level;
- the compression ratio at the level narrowest relative to healthy adults is
  (1 - mi / ((ma + mb) / 2)) * 100 with mi, ma, mb the CSA of that level and the levels above and
  below; normalised, each is first divided by the healthy adults' CSA at its level (-normalize-hc).
The percentile is 100 * Phi(z), the normal approximation of the reference group.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np

from inference.demographics import Demographics
from inference.measurements import LevelCsa, LevelMeasurements
from inference.vertebrae import VertebralLevels, level_name

log = logging.getLogger(__name__)

REFERENCE_MIN_N = 20  # fewer healthy adults than this at a level: use the next broader group
C2C3_KEY = "2:3"
MIN_COMPRESSION_SLICES = 3  # a level cut by the field of view to fewer slices is not a fair neighbour


@lru_cache(maxsize=1)
def load_reference() -> dict[str, Any]:
    ref = resources.files("inference").joinpath("reference").joinpath("csa_normative.json")
    data: dict[str, Any] = json.loads(ref.read_text(encoding="utf-8"))
    return data


def _age_band(age: float | None) -> str | None:
    if age is None:
        return None
    for lo, hi in load_reference()["age_bands"]:
        if lo <= age <= hi:
            return f"{lo}-{hi}" if hi < 120 else f"{lo}+"
    return None  # a child: the reference is adults only, so the broadest adult group is all it can offer


def _group_order(who: Demographics) -> list[str]:
    """Reference groups from the closest match to all adults."""
    band = _age_band(who.age_years)
    keys = []
    if who.sex and band:
        keys.append(f"sex={who.sex},age={band}")
    if who.sex:
        keys.append(f"sex={who.sex}")
    if band:
        keys.append(f"age={band}")
    keys.append("all")
    return keys


@dataclass(frozen=True)
class Reference:
    mean: float
    sd: float
    n: int
    group: str

    def describe(self) -> str:
        return f"{self.group} (n={self.n})"

    def z_and_percentile(self, value: float) -> tuple[float, float]:
        z = (value - self.mean) / self.sd
        return z, 50.0 * (1.0 + math.erf(z / math.sqrt(2.0)))


def reference(level_key: str, who: Demographics) -> Reference | None:
    """Healthy adults' CSA at a level ("4", or "2:3" for C2-C3), from the closest group with enough people."""
    groups = load_reference()["groups"]
    for key in _group_order(who):
        stats = groups.get(key, {}).get(level_key)
        if stats and int(stats["n"]) >= REFERENCE_MIN_N and float(stats["sd"]) > 0:
            return Reference(float(stats["mean"]), float(stats["sd"]), int(stats["n"]), key)
    return None


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def per_level_csa(per_slice: list[float | None] | tuple[float | None, ...], slice_levels: list[int]
                  ) -> dict[int, list[float]]:
    """Defined slice CSAs grouped by the level of their slice (both indexed by RPI axial slice)."""
    out: dict[int, list[float]] = {}
    for value, level in zip(per_slice, slice_levels):
        if level > 0 and value is not None and math.isfinite(value):
            out.setdefault(level, []).append(float(value))
    return out


def _compression(levels: dict[int, list[float]], who: Demographics
                 ) -> tuple[int | None, float | None, float | None]:
    """(level, ratio %, normalised ratio %) at the level narrowest relative to healthy adults."""
    best: tuple[float, int] | None = None
    for level, values in levels.items():
        neighbours = (levels.get(level - 1, []), levels.get(level + 1, []))
        if len(values) < MIN_COMPRESSION_SLICES or any(len(v) < MIN_COMPRESSION_SLICES for v in neighbours):
            continue
        refs = [reference(str(n), who) for n in (level, level - 1, level + 1)]
        if any(r is None for r in refs):
            continue
        relative = float(np.mean(values)) / refs[0].mean  # type: ignore[union-attr]
        if best is None or relative < best[0]:
            best = (relative, level)
    if best is None:
        return None, None, None
    level = best[1]
    mi, ma, mb = (float(np.mean(levels[n])) for n in (level, level - 1, level + 1))
    hi, ha, hb = (reference(str(n), who).mean for n in (level, level - 1, level + 1))  # type: ignore[union-attr]
    ratio = (1 - mi / ((ma + mb) / 2)) * 100
    normalised = (1 - (mi / hi) / ((ma / ha + mb / hb) / 2)) * 100
    return level, ratio, normalised


def level_measurements(levels: VertebralLevels, cord: np.ndarray,
                       per_slice: list[float | None] | tuple[float | None, ...],
                       who: Demographics | None = None) -> LevelMeasurements:
    """Per-level CSA, C2-C3 CSA with z-score and percentile, and the normalised compression ratio."""
    who = who or Demographics()
    if not levels.known:
        return LevelMeasurements("unknown", levels.reason)
    slice_levels = levels.slice_levels(cord)
    if len(slice_levels) != len(per_slice):
        raise ValueError(f"{len(per_slice)} per-slice CSA values for {len(slice_levels)} axial slices: "
                         "the CSA and the levels must come from the same cord mask")
    grouped = per_level_csa(per_slice, slice_levels)
    rows = []
    for level in sorted(grouped):
        mean = float(np.mean(grouped[level]))
        ref = reference(str(level), who)
        z, pct = ref.z_and_percentile(mean) if ref else (None, None)
        rows.append(LevelCsa(level, level_name(level), mean, len(grouped[level]), z, pct))
    c2c3 = _mean(grouped.get(2, []) + grouped.get(3, []))
    ref23 = reference(C2C3_KEY, who)
    z23, pct23 = ref23.z_and_percentile(c2c3) if (ref23 and c2c3 is not None) else (None, None)
    comp_level, ratio, normalised = _compression(grouped, who)
    return LevelMeasurements(
        vertebral_levels_status="labelled", vertebral_levels_reason=levels.reason,
        cord_csa_mm2_per_level=tuple(rows), cord_csa_c2c3_mm2=c2c3,
        cord_csa_c2c3_z_score=z23, cord_csa_c2c3_percentile=pct23,
        csa_reference_group=ref23.describe() if ref23 else None,
        compression_level=comp_level, compression_ratio_pct=ratio, compression_ratio_normalized_pct=normalised,
    )


def level_span(levels_of_voxels: np.ndarray) -> str | None:
    """"C4-C5" (superior first) for the levels a lesion's voxels fall in; None if any voxel is unlabelled."""
    values = np.asarray(levels_of_voxels)
    if values.size == 0 or (values <= 0).any():
        return None
    lo, hi = int(values.min()), int(values.max())
    return level_name(lo) if lo == hi else f"{level_name(lo)}-{level_name(hi)}"


def lesion_spans(level_map: np.ndarray, lesion_labels: np.ndarray) -> dict[int, str | None]:
    """Level span of every lesion of a label map (both in the input grid)."""
    out: dict[int, str | None] = {}
    for label in np.unique(lesion_labels):
        if label > 0:
            out[int(label)] = level_span(level_map[lesion_labels == label])
    return out
