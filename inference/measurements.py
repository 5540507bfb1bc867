"""The numbers of one analysis, typed: lesions, cord, the per-slice cord area and the lesion filter.

Why typed: the SEG, the SR, the cohort tables and the catalog all read these numbers. Read back
by string keys from a dict, a renamed metric silently vanished from the SR; as attributes, a
rename fails where it is read (and `tests` check that every metric field has an SR code).
JSON exists only at the edges (measurements.json, the catalog, the CLI): ``to_json`` gives the
documented flat schema, ``from_json`` reads it back. Attribute names equal the JSON keys, so a
metric has one name everywhere.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

JsonDict = dict[str, Any]


def finite_or_none(value: float | None) -> float | None:
    """A float, or None where the value is undefined (None, NaN, inf): JSON has no NaN."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class LesionMetrics:
    """One lesion's measurements; None where a value is undefined (no midsagittal slice)."""

    label: int
    volume_mm3: float
    length_mm: float
    width_mm: float
    max_equivalent_diameter_mm: float
    max_axial_damage_ratio: float
    midsagittal_length_mm: float | None
    midsagittal_width_mm: float | None
    dorsal_bridge_mm: float | None
    ventral_bridge_mm: float | None
    total_bridge_mm: float | None
    dorsal_bridge_ratio_pct: float | None
    ventral_bridge_ratio_pct: float | None
    centroid_ras_mm: tuple[float, float, float]

    def to_json(self) -> JsonDict:
        out: JsonDict = {"label": int(self.label)}
        for f in fields(self)[1:-1]:
            out[f.name] = finite_or_none(getattr(self, f.name))
        out["centroid_ras_mm"] = [float(v) for v in self.centroid_ras_mm]
        return out

    @classmethod
    def from_json(cls, data: JsonDict) -> LesionMetrics:
        # JSON numbers or null, as to_json wrote them
        values: dict[str, Any] = {f.name: data.get(f.name) for f in fields(cls)[1:-1]}
        x, y, z = data.get("centroid_ras_mm") or (math.nan, math.nan, math.nan)
        return cls(label=int(data["label"]), centroid_ras_mm=(float(x), float(y), float(z)), **values)


# Fields of a lesion that are identity or position, not measurements written as SR numbers.
LESION_NON_METRICS = ("label", "centroid_ras_mm")


@dataclass(frozen=True)
class CordMeasurements:
    """Cord size: mean angle-corrected cross-sectional area and volume (the cord includes lesions)."""

    cord_csa_mm2_mean: float | None  # None when no axial slice could be measured
    cord_volume_mm3: float


@dataclass(frozen=True)
class CsaPerSlice:
    """Cord cross-sectional area per axial slice along the input's inferior-superior axis (None = no cord)."""

    cord_csa_mm2_per_slice: tuple[float | None, ...]


@dataclass(frozen=True)
class LesionFilter:
    """The speck rule applied before measuring: lesions under the minimum were dropped (inference.lesion_filter)."""

    min_lesion_volume_mm3: float
    lesions_below_minimum: int


@dataclass(frozen=True)
class Measurements:
    """Everything measured on one volume. ``lesion_filter`` is None when no filter step ran
    (``inference.pipeline.measure`` alone); ``analyze`` always records it, 0 included."""

    lesions: tuple[LesionMetrics, ...]
    total_volume_mm3: float
    total_length_mm: float
    max_axial_damage_ratio: float
    interpolated_midsagittal_slice: float | None  # x*, index along the input's R-L axis
    cord: CordMeasurements
    per_slice: CsaPerSlice
    lesion_filter: LesionFilter | None = None

    @property
    def lesion_count(self) -> int:
        return len(self.lesions)

    def to_json(self) -> JsonDict:
        """The flat measurements.json schema (plain JSON types, None for undefined values)."""
        out: JsonDict = {
            "lesions": [lesion.to_json() for lesion in self.lesions],
            "interpolated_midsagittal_slice": finite_or_none(self.interpolated_midsagittal_slice),
            "total_volume_mm3": float(self.total_volume_mm3),
            "total_length_mm": float(self.total_length_mm),
            "max_axial_damage_ratio": float(self.max_axial_damage_ratio),
            "cord_csa_mm2_mean": finite_or_none(self.cord.cord_csa_mm2_mean),
            "cord_csa_mm2_per_slice": [finite_or_none(v) for v in self.per_slice.cord_csa_mm2_per_slice],
            "cord_volume_mm3": float(self.cord.cord_volume_mm3),
            "lesion_count": self.lesion_count,
        }
        if self.lesion_filter is not None:
            out["min_lesion_volume_mm3"] = float(self.lesion_filter.min_lesion_volume_mm3)
            out["lesions_below_minimum"] = int(self.lesion_filter.lesions_below_minimum)
        return out

    @classmethod
    def from_json(cls, data: JsonDict) -> Measurements:
        """Read the flat schema back (the catalog, measurements.json); missing optional keys are None."""
        lesion_filter = None
        if "min_lesion_volume_mm3" in data:
            lesion_filter = LesionFilter(float(data["min_lesion_volume_mm3"] or 0.0),
                                         int(data.get("lesions_below_minimum") or 0))
        return cls(
            lesions=tuple(LesionMetrics.from_json(les) for les in data.get("lesions", [])),
            total_volume_mm3=float(data.get("total_volume_mm3") or 0.0),
            total_length_mm=float(data.get("total_length_mm") or 0.0),
            max_axial_damage_ratio=float(data.get("max_axial_damage_ratio") or 0.0),
            interpolated_midsagittal_slice=data.get("interpolated_midsagittal_slice"),
            cord=CordMeasurements(data.get("cord_csa_mm2_mean"), float(data.get("cord_volume_mm3") or 0.0)),
            per_slice=CsaPerSlice(tuple(data.get("cord_csa_mm2_per_slice") or ())),
            lesion_filter=lesion_filter,
        )

    def with_filter(self, lesion_filter: LesionFilter) -> Measurements:
        return replace(self, lesion_filter=lesion_filter)


def json_keys() -> tuple[str, ...]:
    """Every top-level key of the JSON form (for tables that pick columns by name)."""
    parts = {"cord": CordMeasurements, "per_slice": CsaPerSlice, "lesion_filter": LesionFilter}
    own = [f.name for f in fields(Measurements) if f.name not in parts]
    nested = [f.name for cls in parts.values() for f in fields(cls)]
    return (*own, "lesion_count", *nested)
