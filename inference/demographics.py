"""Patient sex and age from DICOM header values, for matching a measurement to its healthy reference.

Why its own type: the normative CSA differs by sex and age, and the header is the only place the
node learns them. PatientSex (M/F/O) and PatientAge ("045Y", "030M", "012W", "005D") are both
optional (type 3 in most IODs) and often blanked by anonymisers; anything unreadable is None,
and the reference then falls back to all adults rather than guessing.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_AGE = re.compile(r"^\s*(\d{1,3})\s*([DWMY])\s*$")
_DAYS_PER = {"D": 1.0, "W": 7.0, "M": 365.25 / 12, "Y": 365.25}


@dataclass(frozen=True)
class Demographics:
    """What the header says: sex "M"/"F" (None otherwise) and age in years (None when absent)."""

    sex: str | None = None
    age_years: float | None = None

    @classmethod
    def from_header(cls, patient_sex: Any = None, patient_age: Any = None) -> Demographics:
        sex = str(patient_sex or "").strip().upper()
        return cls(sex=sex if sex in ("M", "F") else None, age_years=parse_age(patient_age))

    @classmethod
    def from_dataset(cls, ds: Any) -> Demographics:
        return cls.from_header(ds.get("PatientSex"), ds.get("PatientAge"))


def parse_age(value: Any) -> float | None:
    """DICOM Age String (AS) -> years; None for empty or malformed values."""
    match = _AGE.match(str(value or ""))
    if not match:
        return None
    return int(match.group(1)) * _DAYS_PER[match.group(2)] / 365.25
