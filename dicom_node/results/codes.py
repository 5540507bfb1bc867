"""Every coded concept the SR uses, in one place, with the private scheme declared once.

Standard SNOMED CT / DICOM / UCUM codes where one exists with the right meaning; the private
scheme ``99SPINE`` for the spinal-cord-specific metrics that have none (see CODES.md).
A private scheme must be declared in CodingSchemeIdentificationSequence, or dciodvfy warns
and receivers cannot tell who defined it: ``coding_scheme_identification()`` gives that item.
"""
from __future__ import annotations

from dataclasses import dataclass

import highdicom as hd
import pydicom
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

PRIVATE_SCHEME = "99SPINE"
PRIVATE_SCHEME_NAME = "Spine DICOM node spinal cord lesion metrics"
PRIVATE_SCHEME_RESPONSIBLE = "spine-dicom-node project"
PRIVATE_SCHEME_VERSION = "1"


def private(value: str, meaning: str) -> hd.sr.CodedConcept:
    """A concept of the 99SPINE private scheme."""
    return hd.sr.CodedConcept(value=value, scheme_designator=PRIVATE_SCHEME, meaning=meaning)


def ucum(value: str, meaning: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value=value, scheme_designator="UCUM", meaning=meaning)


MM = ucum("mm", "millimeter")
MM2 = ucum("mm2", "square millimeter")
MM3 = ucum("mm3", "cubic millimeter")
RATIO = ucum("{ratio}", "ratio")
PERCENT = ucum("%", "percent")
LESIONS = ucum("{lesions}", "lesions")

# private concepts (documented in CODES.md; keep the two in step)
MAX_EQUIVALENT_DIAMETER = private("SPN001", "Maximum axial equivalent diameter")
MAX_AXIAL_DAMAGE_RATIO = private("SPN002", "Maximum axial damage ratio")
DORSAL_BRIDGE = private("SPN003", "Dorsal tissue bridge width")
VENTRAL_BRIDGE = private("SPN004", "Ventral tissue bridge width")
TOTAL_BRIDGE = private("SPN005", "Total tissue bridge width")
DORSAL_BRIDGE_RATIO = private("SPN006", "Dorsal tissue bridge ratio")
VENTRAL_BRIDGE_RATIO = private("SPN007", "Ventral tissue bridge ratio")
MIDSAGITTAL_METHOD = private("SPN010", "Interpolated midsagittal slice measurement")
CSA_METHOD = private("SPN011", "Angle-corrected axial cord cross-sectional area")
COMPRESSION_RATIO = private("SPN012", "Cord compression ratio")
NORMALIZED_COMPRESSION_RATIO = private("SPN013", "Cord compression ratio normalized to healthy adults")

# standard concepts
VOLUME = codes.SCT.Volume  # 118565006
LENGTH = codes.SCT.Length  # 410668003
WIDTH = codes.SCT.Width  # 103355008
AREA = codes.SCT.Area  # 42798000
NUMBER_OF_LESIONS = hd.sr.CodedConcept("246206008", "SCT", "Number of lesions")  # observable entity
MEAN = codes.SCT.Mean  # 373098007
MAXIMUM = codes.SCT.Maximum  # 56851009
TOTAL = codes.SCT.Total  # 255619001
VOXEL_SUM_VOLUME = codes.DCM.SumOfSegmentedVoxelMethodForVolume  # 126030
LESION = codes.SCT.Lesion  # 52988006
SPINAL_CORD = codes.SCT.SpinalCord  # 2748008
ANATOMICAL_STRUCTURE = codes.SCT.AnatomicalStructure  # 91723000
ABNORMAL_STRUCTURE = codes.SCT.MorphologicallyAbnormalStructure  # 49755003
PRESENT = codes.SCT.Present  # 52101004
ABSENT = codes.SCT.Absent  # 272519000
MRI_PROCEDURE = codes.LN.MRIUnspecifiedBodyRegion  # 25056-3
Z_SCORE = codes.DCM.ZScoreOfMeasurement  # 121416
PERCENTILE_RANK = codes.DCM.PercentileRankingOfMeasurement  # 121415
NO_UNITS = ucum("1", "no units")

# Vertebrae by Spinal Cord Toolbox's level number (1 = C1 ... 7 = C7, 8 = T1 ... 19 = T12, 20 = L1 ... 24 = L5):
# the finding site of a lesion's level span and of per-level cord measurements.
_VERTEBRA_NAMES = [f"C{i}" for i in range(1, 8)] + [f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 6)]
VERTEBRA: dict[int, Code] = {n: getattr(codes.SCT, f"{name}Vertebra") for n, name in enumerate(_VERTEBRA_NAMES, 1)}
VERTEBRA_NUMBER: dict[str, int] = {name: n for n, name in enumerate(_VERTEBRA_NAMES, 1)}


def vertebra(level: int) -> Code:
    """The SNOMED CT concept of a vertebra from its level number (2 -> C2 vertebra, 39976000)."""
    try:
        return VERTEBRA[level]
    except KeyError:
        raise ValueError(f"no vertebra for level {level} (1 = C1 ... 24 = L5)") from None


def span_levels(span: str) -> list[int]:
    """Level numbers of a span as measurements write it: "C4-C5" -> [4, 5], "T2" -> [9]."""
    ends = [VERTEBRA_NUMBER.get(part.strip()) for part in span.split("-")]
    if not 1 <= len(ends) <= 2 or any(e is None for e in ends):
        raise ValueError(f"level span {span!r} is not 'C4' or 'C4-C5'")
    lo, hi = int(ends[0]), int(ends[-1])  # type: ignore[arg-type]
    return list(range(min(lo, hi), max(lo, hi) + 1))


@dataclass(frozen=True)
class MetricCode:
    """How one measured attribute is written as a TID 300 NUM item; ``key`` names the attribute of
    inference.measurements (the same name as its measurements.json key)."""

    key: str
    name: hd.sr.CodedConcept | Code
    unit: hd.sr.CodedConcept
    method: hd.sr.CodedConcept | Code | None = None
    derivation: hd.sr.CodedConcept | Code | None = None


LESION_METRICS: tuple[MetricCode, ...] = (
    MetricCode("volume_mm3", VOLUME, MM3, method=VOXEL_SUM_VOLUME),
    MetricCode("length_mm", LENGTH, MM),
    MetricCode("width_mm", WIDTH, MM),
    MetricCode("max_equivalent_diameter_mm", MAX_EQUIVALENT_DIAMETER, MM),
    MetricCode("max_axial_damage_ratio", MAX_AXIAL_DAMAGE_RATIO, RATIO),
    MetricCode("midsagittal_length_mm", LENGTH, MM, method=MIDSAGITTAL_METHOD),
    MetricCode("midsagittal_width_mm", WIDTH, MM, method=MIDSAGITTAL_METHOD),
    MetricCode("dorsal_bridge_mm", DORSAL_BRIDGE, MM, method=MIDSAGITTAL_METHOD),
    MetricCode("ventral_bridge_mm", VENTRAL_BRIDGE, MM, method=MIDSAGITTAL_METHOD),
    MetricCode("total_bridge_mm", TOTAL_BRIDGE, MM, method=MIDSAGITTAL_METHOD),
    MetricCode("dorsal_bridge_ratio_pct", DORSAL_BRIDGE_RATIO, PERCENT, method=MIDSAGITTAL_METHOD),
    MetricCode("ventral_bridge_ratio_pct", VENTRAL_BRIDGE_RATIO, PERCENT, method=MIDSAGITTAL_METHOD),
)

CORD_METRICS: tuple[MetricCode, ...] = (
    MetricCode("cord_csa_mm2_mean", AREA, MM2, method=CSA_METHOD, derivation=MEAN),
    MetricCode("cord_volume_mm3", VOLUME, MM3, method=VOXEL_SUM_VOLUME),
)

TOTAL_METRICS: tuple[MetricCode, ...] = (
    MetricCode("total_volume_mm3", VOLUME, MM3, method=VOXEL_SUM_VOLUME, derivation=TOTAL),
    MetricCode("total_length_mm", LENGTH, MM, derivation=TOTAL),
    MetricCode("max_axial_damage_ratio", MAX_AXIAL_DAMAGE_RATIO, RATIO, derivation=MAXIMUM),
    MetricCode("lesion_count", NUMBER_OF_LESIONS, LESIONS),
)


def metric_key(
    name: hd.sr.CodedConcept | Code,
    method: hd.sr.CodedConcept | Code | None = None,
    derivation: hd.sr.CodedConcept | Code | None = None,
) -> tuple[str, str, str]:
    """(name, method, derivation) as 'value^scheme' strings: how a reader tells NUMs apart."""

    def one(code: hd.sr.CodedConcept | Code | None) -> str:
        if code is None:
            return ""
        return f"{code.value}^{code.scheme_designator}"

    return one(name), one(method), one(derivation)


def coding_scheme_identification() -> pydicom.Dataset:
    """The CodingSchemeIdentificationSequence item that declares 99SPINE."""
    item = pydicom.Dataset()
    item.CodingSchemeDesignator = PRIVATE_SCHEME
    item.CodingSchemeName = PRIVATE_SCHEME_NAME
    item.CodingSchemeVersion = PRIVATE_SCHEME_VERSION
    item.CodingSchemeResponsibleOrganization = PRIVATE_SCHEME_RESPONSIBLE
    return item
