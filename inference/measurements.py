"""The numbers of one analysis, typed: lesions, cord, the per-slice and per-level cord area, the lesion filter.

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
    level_span: str | None = None  # vertebral levels the lesion spans ("C4-C5", "C4"); None when unknown
    # The axial slice of max_equivalent_diameter_mm (largest angle-corrected area), as an index along the
    # input axis that runs closest to inferior-superior: the key image of an axial series (dicom_node SR).
    max_axial_area_slice: int | None = None

    def to_json(self) -> JsonDict:
        out: JsonDict = {"label": int(self.label)}
        for f in fields(self):
            if f.name not in LESION_NON_METRICS:
                out[f.name] = finite_or_none(getattr(self, f.name))
        out["centroid_ras_mm"] = [float(v) for v in self.centroid_ras_mm]
        out["level_span"] = self.level_span
        out["max_axial_area_slice"] = self.max_axial_area_slice
        return out

    @classmethod
    def from_json(cls, data: JsonDict) -> LesionMetrics:
        # JSON numbers or null, as to_json wrote them
        values: dict[str, Any] = {f.name: data.get(f.name) for f in fields(cls) if f.name not in LESION_NON_METRICS}
        x, y, z = data.get("centroid_ras_mm") or (math.nan, math.nan, math.nan)
        span = data.get("level_span")
        key = data.get("max_axial_area_slice")
        return cls(label=int(data["label"]), centroid_ras_mm=(float(x), float(y), float(z)),
                   level_span=None if span is None else str(span),
                   max_axial_area_slice=None if key is None else int(key), **values)


# Fields of a lesion that are identity or position, not measurements written as SR numbers
# (the level span is written as the lesion's finding sites, the key slice as its outline's image).
LESION_NON_METRICS = ("label", "centroid_ras_mm", "level_span", "max_axial_area_slice")


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
class LevelCsa:
    """Mean CSA over the axial slices of one vertebral level, and where it falls among healthy adults."""

    level: int  # Spinal Cord Toolbox numbering: 2 = C2, 8 = T1
    name: str  # "C2"
    csa_mm2: float
    slices: int  # axial slices averaged
    z_score: float | None  # None: no reference for this level
    percentile: float | None  # 100 * Phi(z): the normal approximation of the reference

    def to_json(self) -> JsonDict:
        return {"level": int(self.level), "name": self.name, "csa_mm2": float(self.csa_mm2),
                "slices": int(self.slices), "z_score": finite_or_none(self.z_score),
                "percentile": finite_or_none(self.percentile)}

    @classmethod
    def from_json(cls, data: JsonDict) -> LevelCsa:
        return cls(int(data["level"]), str(data["name"]), float(data["csa_mm2"]), int(data["slices"]),
                   finite_or_none(data.get("z_score")), finite_or_none(data.get("percentile")))


@dataclass(frozen=True)
class LevelMeasurements:
    """Vertebral levels and the cord area per level (inference.levels_csa); "unknown" says why there are none."""

    vertebral_levels_status: str  # "labelled" | "unknown"
    vertebral_levels_reason: str
    cord_csa_mm2_per_level: tuple[LevelCsa, ...] = ()
    cord_csa_c2c3_mm2: float | None = None  # mean over the slices of C2 and C3 (sct_process_segmentation -vert 2:3)
    cord_csa_c2c3_z_score: float | None = None
    cord_csa_c2c3_percentile: float | None = None
    csa_reference_group: str | None = None  # which healthy adults: "sex=F,age=30-39 (n=37)"
    compression_level: int | None = None  # the level narrowest relative to healthy adults
    compression_ratio_pct: float | None = None  # (1 - mi / mean(ma, mb)) * 100
    compression_ratio_normalized_pct: float | None = None  # the same with each level divided by healthy adults'

    @property
    def known(self) -> bool:
        return self.vertebral_levels_status == "labelled"

    def level(self, number: int) -> LevelCsa | None:
        return next((lv for lv in self.cord_csa_mm2_per_level if lv.level == number), None)

    def to_json(self) -> JsonDict:
        out: JsonDict = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "cord_csa_mm2_per_level":
                out[f.name] = [lv.to_json() for lv in value]
            elif isinstance(value, float):
                out[f.name] = finite_or_none(value)
            else:
                out[f.name] = value
        return out

    @classmethod
    def from_json(cls, data: JsonDict) -> LevelMeasurements:
        def num(key: str) -> float | None:
            return finite_or_none(data.get(key))

        level = data.get("compression_level")
        return cls(
            vertebral_levels_status=str(data.get("vertebral_levels_status") or "unknown"),
            vertebral_levels_reason=str(data.get("vertebral_levels_reason") or ""),
            cord_csa_mm2_per_level=tuple(LevelCsa.from_json(lv) for lv in data.get("cord_csa_mm2_per_level") or ()),
            cord_csa_c2c3_mm2=num("cord_csa_c2c3_mm2"),
            cord_csa_c2c3_z_score=num("cord_csa_c2c3_z_score"),
            cord_csa_c2c3_percentile=num("cord_csa_c2c3_percentile"),
            csa_reference_group=data.get("csa_reference_group"),
            compression_level=None if level is None else int(level),
            compression_ratio_pct=num("compression_ratio_pct"),
            compression_ratio_normalized_pct=num("compression_ratio_normalized_pct"),
        )


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
    levels: LevelMeasurements | None = None  # None when no level step ran (``measure`` alone)

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
        if self.levels is not None:
            out.update(self.levels.to_json())
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
            levels=LevelMeasurements.from_json(data) if "vertebral_levels_status" in data else None,
        )

    def with_levels(self, levels: LevelMeasurements, lesions: tuple[LesionMetrics, ...]) -> Measurements:
        return replace(self, levels=levels, lesions=lesions)

    def with_filter(self, lesion_filter: LesionFilter) -> Measurements:
        return replace(self, lesion_filter=lesion_filter)


def json_keys() -> tuple[str, ...]:
    """Every top-level key of the JSON form (for tables that pick columns by name)."""
    parts = {"cord": CordMeasurements, "per_slice": CsaPerSlice, "lesion_filter": LesionFilter,
             "levels": LevelMeasurements}
    own = [f.name for f in fields(Measurements) if f.name not in parts]
    nested = [f.name for cls in parts.values() for f in fields(cls)]
    return (*own, "lesion_count", *nested)
