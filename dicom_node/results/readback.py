"""Read written SEG/SR back the way a receiver would, to prove they say what we meant.

``seg_masks_on_source`` decodes a SEG onto the source grid by walking each frame's own
references (ReferencedSOPInstanceUID / ReferencedFrameNumber / ReferencedSegmentNumber),
not by trusting positions: it is the independent check of the SEG builder's geometry.
``sr_measurements`` walks the SR content tree and returns every group's numbers;
``sr_image_regions`` the TID 1410 groups: each finding's outline on its key image.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom

from dicom_node.results.viewer_rules import OHIF_FREEHAND_TAG
from inference.api import FrameRef

FINDING_SITE = "363698007^SCT"


class ResultValidationError(RuntimeError):
    """A result failed validation or read-back; it must not be sent."""


def _dataset(ds_or_path: pydicom.Dataset | str | Path) -> pydicom.Dataset:
    if isinstance(ds_or_path, pydicom.Dataset):
        return ds_or_path
    return pydicom.dcmread(str(ds_or_path))


def readback_seg(path: str | Path) -> hd.seg.Segmentation:
    """The file parsed by highdicom as a Segmentation (raises ResultValidationError if not)."""
    try:
        return hd.seg.segread(str(path))
    except Exception as exc:  # highdicom raises many types for malformed objects
        raise ResultValidationError(f"{path}: highdicom cannot read it as a SEG: {exc}") from exc


def readback_sr(path: str | Path) -> hd.sr.Comprehensive3DSR:
    """The file parsed by highdicom as a Comprehensive 3D SR (raises ResultValidationError if not)."""
    try:
        sr = hd.sr.srread(str(path))
    except Exception as exc:
        raise ResultValidationError(f"{path}: highdicom cannot read it as an SR: {exc}") from exc
    if not isinstance(sr, hd.sr.Comprehensive3DSR):
        raise ResultValidationError(f"{path}: expected a Comprehensive 3D SR, got {type(sr).__name__}")
    return sr


def seg_masks_on_source(
    seg: pydicom.Dataset | str | Path, frames: list[FrameRef], shape: tuple[int, int, int]
) -> dict[int, np.ndarray]:
    """Segment number -> mask in the volume grid [i, j, k] (float for FRACTIONAL, scaled to 0..1).

    Every SEG frame names its source instance and frame; slice k is the one whose FrameRef
    matches. Source frames without a SEG frame stay empty (omitted empty frames).
    """
    ds = _dataset(seg)
    where = {(f.sop_instance_uid, int(f.frame_number)): k for k, f in enumerate(frames)}
    fractional = str(ds.SegmentationType) == "FRACTIONAL"
    scale = float(getattr(ds, "MaximumFractionalValue", 1)) if fractional else 1.0
    pixels = ds.pixel_array
    if int(ds.NumberOfFrames) == 1:
        pixels = pixels[np.newaxis]
    out: dict[int, np.ndarray] = {
        int(item.SegmentNumber): np.zeros(shape, dtype=np.float32 if fractional else np.uint8)
        for item in ds.SegmentSequence
    }
    shared = ds.SharedFunctionalGroupsSequence[0]

    def item(group: pydicom.Dataset, keyword: str) -> pydicom.Dataset:
        """A functional group macro, per-frame first, else shared (one segment -> shared)."""
        for where in (group, shared):
            if keyword in where:
                macro: pydicom.Dataset = getattr(where, keyword)[0]
                return macro
        raise ResultValidationError(f"SEG frame lacks {keyword} (neither per-frame nor shared)")

    for index, group in enumerate(ds.PerFrameFunctionalGroupsSequence):
        number = int(item(group, "SegmentIdentificationSequence").ReferencedSegmentNumber)
        src = item(group, "DerivationImageSequence").SourceImageSequence[0]
        frame_no = int(getattr(src, "ReferencedFrameNumber", 1) or 1)
        key = (str(src.ReferencedSOPInstanceUID), frame_no)
        if key not in where:
            raise ResultValidationError(f"SEG frame {index + 1} references {key}, not a frame of the source")
        plane = pixels[index].T  # (Rows, Columns) -> [i, j]
        out[number][:, :, where[key]] = plane / scale if fractional else plane
    return out


@dataclass(frozen=True)
class ImageRegionRef:
    """A SCOORD as read back: its points (column, row) and the one image they are on."""

    graphic_type: str
    points: np.ndarray  # (n, 2) float
    sop_instance_uid: str
    frame_number: int | None


def _scoord(item: Any) -> ImageRegionRef:
    children = list(getattr(item, "ContentSequence", []))
    if len(children) != 1 or "ReferencedSOPSequence" not in children[0]:
        raise ResultValidationError("a SCOORD must name exactly one source image (one SELECTED FROM IMAGE)")
    ref = children[0].ReferencedSOPSequence[0]
    frames = getattr(ref, "ReferencedFrameNumber", None)
    frame = None if frames is None else int(frames[0] if isinstance(frames, (list, pydicom.multival.MultiValue))
                                            else frames)
    points = np.asarray([float(v) for v in item.GraphicData], dtype=np.float64).reshape(-1, 2)
    return ImageRegionRef(str(item.GraphicType), points, str(ref.ReferencedSOPInstanceUID), frame)


@dataclass
class SRGroup:
    """One measurement group as read back: identity, references and numbers."""

    tracking_id: str
    tracking_uid: str
    finding: tuple[str, str] | None  # (value, scheme)
    referenced_segment: int | None
    referenced_seg_uid: str | None
    numbers: dict[tuple[str, str, str], float] = field(default_factory=dict)  # codes.metric_key
    units: dict[tuple[str, str, str], str] = field(default_factory=dict)
    qualitative: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (value, scheme)
    finding_sites: list[str] = field(default_factory=list)  # the group's sites, 'value^scheme'
    # NUMs that carry their own Finding Site (per vertebral level): (sites joined by '|', *metric_key)
    site_numbers: dict[tuple[str, str, str, str], float] = field(default_factory=dict)
    region: ImageRegionRef | None = None  # TID 1410: the group's Image Region (111030 DCM)
    inferred_from: list[ImageRegionRef] = field(default_factory=list)  # SCOORDs its NUMs are INFERRED FROM


def _code(item: Any) -> str:
    return f"{item.CodeValue}^{item.CodingSchemeDesignator}"


def _walk_group(group: pydicom.Dataset) -> SRGroup:
    out = SRGroup("", "", None, None, None)
    for item in group.ContentSequence:
        name = _code(item.ConceptNameCodeSequence[0])
        vtype = item.ValueType
        if name == "112039^DCM":
            out.tracking_id = str(item.TextValue)
        elif name == "112040^DCM":
            out.tracking_uid = str(item.UID)
        elif name == "121071^DCM" and vtype == "CODE":
            concept = item.ConceptCodeSequence[0]
            out.finding = (str(concept.CodeValue), str(concept.CodingSchemeDesignator))
        elif vtype == "IMAGE" and name == "121191^DCM":
            ref = item.ReferencedSOPSequence[0]
            out.referenced_segment = int(ref.ReferencedSegmentNumber[0]
                                         if isinstance(ref.ReferencedSegmentNumber, list)
                                         else ref.ReferencedSegmentNumber)
            out.referenced_seg_uid = str(ref.ReferencedSOPInstanceUID)
        elif name == FINDING_SITE and vtype == "CODE":
            out.finding_sites.append(_code(item.ConceptCodeSequence[0]))
        elif vtype == "SCOORD" and name == "111030^DCM":
            out.region = _scoord(item)
        elif vtype == "NUM":
            method = derivation = ""
            sites: list[str] = []
            for mod in getattr(item, "ContentSequence", []):
                mod_name = _code(mod.ConceptNameCodeSequence[0])
                if mod_name == "370129005^SCT":
                    method = _code(mod.ConceptCodeSequence[0])
                elif mod_name == "121401^DCM":
                    derivation = _code(mod.ConceptCodeSequence[0])
                elif mod_name == FINDING_SITE:
                    sites.append(_code(mod.ConceptCodeSequence[0]))
                elif mod.ValueType == "SCOORD":
                    out.inferred_from.append(_scoord(mod))
            mv = item.MeasuredValueSequence[0]
            value = float(mv.FloatingPointValue) if "FloatingPointValue" in mv else float(mv.NumericValue)
            key = (name, method, derivation)
            if sites:
                site_key = ("|".join(sites), *key)
                if site_key in out.site_numbers:
                    raise ResultValidationError(f"group {out.tracking_id!r}: measurement {site_key} given twice")
                out.site_numbers[site_key] = value
                continue
            if key in out.numbers:
                raise ResultValidationError(f"group {out.tracking_id!r}: measurement {key} given twice")
            out.numbers[key] = value
            out.units[key] = str(mv.MeasurementUnitsCodeSequence[0].CodeValue)
        elif vtype == "CODE":
            concept = item.ConceptCodeSequence[0]
            out.qualitative[name] = (str(concept.CodeValue), str(concept.CodingSchemeDesignator))
    return out


def _all_groups(sr: pydicom.Dataset | str | Path) -> list[SRGroup]:
    """Every measurement group under "Imaging Measurements" (126010 DCM), in document order."""
    ds = _dataset(sr)
    groups: list[SRGroup] = []
    for container in ds.ContentSequence:
        if _code(container.ConceptNameCodeSequence[0]) != "126010^DCM":
            continue
        for group in container.ContentSequence:
            if _code(group.ConceptNameCodeSequence[0]) == "125007^DCM":
                groups.append(_walk_group(group))
    return groups


def _for_viewer(group: SRGroup) -> bool:
    return group.tracking_id.startswith(OHIF_FREEHAND_TAG)


def sr_measurements(sr: pydicom.Dataset | str | Path) -> list[SRGroup]:
    """The groups that hold the analysis' numbers (TID 1411 per segment, TID 1501 totals), in
    document order; the outlines that share their tracking UIDs are in ``sr_image_regions`` and
    ``sr_outline_areas``."""
    return [g for g in _all_groups(sr) if g.region is None and not _for_viewer(g)]


def sr_image_regions(sr: pydicom.Dataset | str | Path) -> list[SRGroup]:
    """The TID 1410 groups: one per finding, its outline on its key image (``region``), in document order."""
    return [g for g in _all_groups(sr) if g.region is not None]


def sr_outline_areas(sr: pydicom.Dataset | str | Path) -> list[SRGroup]:
    """The lesions' Area groups in OHIF's tool form: the Area INFERRED FROM the outline (``inferred_from``)."""
    return [g for g in _all_groups(sr) if _for_viewer(g)]


def measurements_from_sr(sr: pydicom.Dataset | str | Path) -> dict[str, Any]:
    """The SR's numbers mapped back to measurements.json keys: {'lesions': [...], cord and totals keys}.

    Lesion n is the group referencing SEG segment n + 1 (segment 1 is the cord). Used to check
    that what reached the PACS says what the analysis said, and by the demo to print it.
    """
    from dicom_node.results import codes as C

    def by_key(group: SRGroup, specs: tuple[C.MetricCode, ...]) -> dict[str, float]:
        keys = {C.metric_key(s.name, s.method, s.derivation): s.key for s in specs}
        return {keys[k]: v for k, v in group.numbers.items() if k in keys}

    out: dict[str, Any] = {"lesions": []}
    for group in sr_measurements(sr):
        if group.referenced_segment == 1:
            out.update(by_key(group, C.CORD_METRICS))
            out.update(_levels_from_sr(group))
        elif group.referenced_segment is not None:
            out["lesions"].append({"label": group.referenced_segment - 1, **by_key(group, C.LESION_METRICS),
                                   "level_span": _span_from_sites(group.finding_sites)})
        else:
            out.update(by_key(group, C.TOTAL_METRICS))
            found = group.qualitative.get(C.metric_key(C.LESION)[0])
            if found is not None:
                out["lesion_found"] = found != (C.ABSENT.value, C.ABSENT.scheme_designator)
    return out


def _vertebra_numbers(sites: str) -> list[int]:
    """Level numbers of the vertebra codes in a '|'-joined site list (spinal cord and others ignored)."""
    from dicom_node.results import codes as C

    by_code = {f"{code.value}^{code.scheme_designator}": n for n, code in C.VERTEBRA.items()}
    return sorted(by_code[s] for s in sites.split("|") if s in by_code)


def _span_from_sites(sites: list[str]) -> str | None:
    """"C4-C5" from a lesion group's finding sites; None when it names no vertebra (levels unknown)."""
    from dicom_node.results import codes as C

    levels = _vertebra_numbers("|".join(sites))
    if not levels:
        return None
    names = {n: name for name, n in C.VERTEBRA_NUMBER.items()}
    lo, hi = names[levels[0]], names[levels[-1]]
    return lo if lo == hi else f"{lo}-{hi}"


def _levels_from_sr(group: SRGroup) -> dict[str, Any]:
    """The cord group's per-level numbers back as measurements.json keys (empty when levels were unknown)."""
    from dicom_node.results import codes as C

    area = C.metric_key(C.AREA, C.CSA_METHOD, C.MEAN)
    z_key, pct_key = C.metric_key(C.Z_SCORE, C.CSA_METHOD), C.metric_key(C.PERCENTILE_RANK, C.CSA_METHOD)
    names = {n: name for name, n in C.VERTEBRA_NUMBER.items()}
    rows: dict[int, dict[str, Any]] = {}
    out: dict[str, Any] = {}
    for (sites, *key), value in group.site_numbers.items():
        levels = _vertebra_numbers(sites)
        field_name = {area: "csa_mm2", z_key: "z_score", pct_key: "percentile"}.get(tuple(key))  # type: ignore[arg-type]
        if levels == [2, 3] and field_name:
            out[{"csa_mm2": "cord_csa_c2c3_mm2", "z_score": "cord_csa_c2c3_z_score",
                 "percentile": "cord_csa_c2c3_percentile"}[field_name]] = value
        elif len(levels) == 1 and field_name:
            rows.setdefault(levels[0], {"level": levels[0], "name": names[levels[0]]})[field_name] = value
        elif len(levels) == 1 and tuple(key) in (C.metric_key(C.COMPRESSION_RATIO),
                                                  C.metric_key(C.NORMALIZED_COMPRESSION_RATIO)):
            out["compression_level"] = levels[0]
            normalised = tuple(key) == C.metric_key(C.NORMALIZED_COMPRESSION_RATIO)
            out["compression_ratio_normalized_pct" if normalised else "compression_ratio_pct"] = value
    if rows:
        out["cord_csa_mm2_per_level"] = [rows[n] for n in sorted(rows)]
    return out
