"""What OHIF's SR loader needs of a TID 1500 SR, checked before we send one (issue 20).

Read from OHIF 3.13.2 (@ohif/app dist, extensions/cornerstone-dicom-sr/src/getSopClassHandlerModule.ts):
- ``_getMeasurements`` finds "Imaging Measurements" (126010) among the root items and keeps its
  children named "Measurement Group" (125007); every item it looks at is matched by
  ``item.ConceptNameCodeSequence.CodeValue``, so an item without a concept name throws.
- ``_getMergedContentSequencesByTrackingUniqueIdentifiers`` merges the groups by their "Tracking
  Unique Identifier" (112040) UIDREF (a group without one throws on ``.UID``), in order of first
  appearance; each merged list becomes one measurement.
- ``_processMeasurement``: if a merged list holds a SCOORD/SCOORD3D item at group level (TID 1410
  style), the first one is the measurement's only coordinate (``_processTID1410Measurement``, which
  also reads the "Tracking Identifier" (112039) TextValue); otherwise coordinates come only from
  SCOORD/SCOORD3D items INFERRED FROM under its NUMs (TID 300 style), which may be none.
- ``_checkIfCanAddMeasurementsToDisplaySet`` then reads ``measurement.coords[0].ReferencedSOPSequence``
  for every measurement: a measurement without coordinates throws ``TypeError: Cannot read properties
  of undefined (reading 'ReferencedSOPSequence')`` and nothing after it is shown (issue 20).
  A SCOORD's coordinate finds its image through ``ContentSequence.ReferencedSOPSequence`` (dcmjs
  reads a one-item sequence as that item), keyed by ReferencedSOPInstanceUID:ReferencedFrameNumber.
- The SR viewport (OHIFCornerstoneSRMeasurementViewport) opens on measurement 0: if that one is
  not on an image of the study, the viewport stays empty.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom

# OHIF turns a measurement group into its editable freehand tool (listed in its measurements panel)
# only when the group's Tracking Identifier starts with this tag and a NUM is INFERRED FROM a
# closed POLYLINE (@cornerstonejs/adapters: BaseAdapter3D.isValidCornerstoneTrackingIdentifier,
# MeasurementReport.getSetupMeasurementData, PlanarFreehandROI.getMeasurementData).
OHIF_FREEHAND_TAG = "Cornerstone3DTools@^0.1.0:PlanarFreehandROI"
IMAGING_MEASUREMENTS = "126010"
MEASUREMENT_GROUP = "125007"
TRACKING_ID = "112039"
TRACKING_UID = "112040"
SPATIAL = ("SCOORD", "SCOORD3D")


def _name(item: Any) -> str | None:
    seq = getattr(item, "ConceptNameCodeSequence", None)
    return str(seq[0].CodeValue) if seq else None


def _unnamed(items: Any, where: str) -> list[str]:
    return [f"{where}: item {i + 1} ({getattr(item, 'ValueType', '?')}) has no concept name"
            for i, item in enumerate(items) if _name(item) is None]


def _scoord_problem(item: Any, evidence: set[str], where: str) -> str | None:
    """Why OHIF could not place this SCOORD/SCOORD3D on an image of the study (None if it can)."""
    if item.ValueType == "SCOORD3D":
        if getattr(item, "ReferencedFrameOfReferenceUID", None):
            return None
        return f"{where}: SCOORD3D without frame of reference"
    children = list(getattr(item, "ContentSequence", []))
    refs = list(getattr(children[0], "ReferencedSOPSequence", [])) if len(children) == 1 else []
    if len(refs) != 1:
        return f"{where}: SCOORD must have exactly one child IMAGE with one ReferencedSOPSequence item"
    if str(refs[0].ReferencedSOPInstanceUID) not in evidence:
        return f"{where}: SCOORD image {refs[0].ReferencedSOPInstanceUID} is not in the SR's evidence"
    data = [float(v) for v in item.GraphicData]
    if str(item.GraphicType) == "POLYLINE" and data[:2] != data[-2:]:
        return f"{where}: POLYLINE outline is not closed (first point must be repeated at the end)"
    return None


def _evidence(ds: pydicom.Dataset) -> set[str]:
    return {str(ref.ReferencedSOPInstanceUID)
            for study in getattr(ds, "CurrentRequestedProcedureEvidenceSequence", [])
            for series in study.ReferencedSeriesSequence for ref in series.ReferencedSOPSequence}


def ohif_sr_problems(sr: pydicom.Dataset | str | Path) -> list[str]:
    """Every reason OHIF 3.13.2 would fail to load this SR or show a measurement of it; [] if none."""
    ds = sr if isinstance(sr, pydicom.Dataset) else pydicom.dcmread(str(sr))
    root = list(getattr(ds, "ContentSequence", []))
    problems = _unnamed(root, "report")
    container = next((item for item in root if _name(item) == IMAGING_MEASUREMENTS), None)
    if container is None:
        return [*problems, "no Imaging Measurements container: OHIF shows no measurement"]
    children = list(getattr(container, "ContentSequence", []))
    problems += _unnamed(children, "Imaging Measurements")
    merged: dict[str, list[Any]] = {}
    for n, group in enumerate(item for item in children if _name(item) == MEASUREMENT_GROUP):
        items = list(getattr(group, "ContentSequence", []))
        problems += _unnamed(items, f"group {n + 1}")
        uid = next((str(item.UID) for item in items if _name(item) == TRACKING_UID), None)
        if uid is None:
            problems.append(f"group {n + 1}: no Tracking Unique Identifier (OHIF throws reading its UID)")
            continue
        merged.setdefault(uid, []).extend(items)
    evidence = _evidence(ds)
    for index, (uid, items) in enumerate(merged.items()):
        label = next((str(i.TextValue) for i in items if _name(i) == TRACKING_ID), None)
        where = f"measurement {index + 1} ({label or uid})"
        if label is None:
            problems.append(f"{where}: no Tracking Identifier")
        coords = [i for i in items if i.ValueType in SPATIAL][:1] or [
            child for i in items if i.ValueType == "NUM"
            for child in getattr(i, "ContentSequence", []) if child.ValueType in SPATIAL]
        if not coords:
            problems.append(f"{where}: no SCOORD/SCOORD3D in any of its groups: OHIF throws "
                            "TypeError reading coords[0].ReferencedSOPSequence")
            continue
        problem = _scoord_problem(coords[0], evidence, where)
        if problem:
            problems.append(problem + ("; the SR viewport opens on it and stays empty" if index == 0 else ""))
    return problems
