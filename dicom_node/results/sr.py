"""Analysis measurements -> TID 1500 Measurement Report (Comprehensive 3D SR), linked to the SEG.

Content tree (the shape of the dcmqi and highdicom examples):
- "Imaging Measurement Report", observer = this device (name, manufacturer, model+version, UID)
- "Imaging Measurements" with, per lesion n, three groups with the same tracking UID (the SEG
  segment's):
  - a TID 1501 group, tracking id "Cornerstone3DTools@^0.1.0:PlanarFreehandROI:Lesion n": the
    Area the lesion's outline on its key image encloses, INFERRED FROM that outline (SCOORD
    POLYLINE, closed, on the source image; key_images.py says which image);
  - a TID 1410 planar group, tracking id "Lesion n": the same outline as its Image Region;
  - a TID 1411 volumetric group, tracking id "Lesion n": finding category/type Lesion, finding
    site Spinal cord, ReferencedSegment n + 1, and its NUM measurements (CODES.md says which
    code is which);
  then the cord, the same way: a TID 1410 group (its outline on its key image, no number; the
    border of the middle image when no cord was found) and a TID 1411 group (segment 1): mean
    CSA and cord volume; when the vertebral levels are known,
    the CSA of each level, then the C2-C3 CSA, each with its z-score and percentile among healthy
    adults (Finding Site = the vertebra(e), which tells them apart), and the compression ratio
    (raw and normalised) at the narrowest level; lesion groups add the vertebrae of their level
    span to their finding sites;
  - one TID 1501 group "All intramedullary lesions": totals, lesion count, and the explicit
    qualitative evaluation Lesion = Present / Absent (so "no lesion found" is stated, not implied);
    each of its NUMs is INFERRED FROM (TID 300 -> TID 320) the cord's outline, the region searched.
A value that is undefined (None/NaN in measurements) is left out rather than written as 0.

Why every tracking UID has image coordinates (OHIF 3.13.2, extensions/cornerstone-dicom-sr,
getSopClassHandlerModule): the loader merges the groups of "Imaging Measurements" by Tracking
Unique Identifier, makes one measurement of each, and then reads ``coords[0].ReferencedSOPSequence``
of every measurement; a measurement whose groups carry no SCOORD/SCOORD3D (neither at group level
nor INFERRED FROM under a NUM) has no coords[0], the TypeError of issue 20 (OHIF issue 3390),
and the viewport stays blank. Sharing the tracking UID between a lesion's TID 1410 and TID 1411
groups is what DICOM means by it (one tracked finding) and makes OHIF draw one annotation per
lesion, the outline of the group-level SCOORD (TID 1410), labelled with the NUMs of all three:
the Area, then the volumetric numbers. ``viewer_rules`` checks this.
Why the TID 1501 Area group: OHIF's measurements panel lists only what it can turn into its own
editable tools ("hydrate", @cornerstonejs/adapters MeasurementReport.generateToolState, group by
group): that needs a Tracking Identifier starting with the tool's tag (PlanarFreehandROI:
BaseAdapter3D.isValidCornerstoneTrackingIdentifier) and a NUM INFERRED FROM the outline, which
TID 1410 does not allow (its NUMs are TID 1419, without coordinates; highdicom refuses them).
The identifier is free text (TID 4108); the tracking UID says which finding a group belongs to,
and "Lesion n" stays the identifier of the groups a person reads.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import Comprehensive3DSRStorage

from dicom_node.results import codes as C
from dicom_node.results.key_images import KeyImage, cord_key_image, lesion_key_image
from dicom_node.results.seg import (
    CORD_SEGMENT,
    DEFAULT_MANUFACTURER,
    ResultBuildError,
    algorithm_parameters,
    cord_tracking_id,
    lesion_algorithm_parameters,
    lesion_model,
    lesion_numbers,
    lesion_tracking_id,
    segment_number_for_lesion,
    series_description,
    tracking_uid,
    unique_source,
)
from dicom_node.results.viewer_rules import OHIF_FREEHAND_TAG
from inference.api import Analysis, FrameRef, LesionMetrics, LevelMeasurements

SR_SERIES_NUMBER = 9902
TOTALS_TRACKING_ID = "All intramedullary lesions"


def outline_tracking_id(label: int) -> str:
    """The Tracking Identifier of lesion ``label``'s Area group: OHIF's freehand tag, then the lesion's id."""
    return f"{OHIF_FREEHAND_TAG}:{lesion_tracking_id(label)}"


@dataclass(frozen=True)
class PreviousSR:
    """The SR this one supersedes (Predecessor Documents Sequence); study defaults to the source's."""

    series_uid: str
    sop_instance_uid: str
    study_uid: str | None = None
    sop_class_uid: str = str(Comprehensive3DSRStorage)


def _as_previous(previous: PreviousSR | Mapping[str, str] | pydicom.Dataset) -> PreviousSR:
    if isinstance(previous, PreviousSR):
        return previous
    if isinstance(previous, pydicom.Dataset):
        return PreviousSR(str(previous.SeriesInstanceUID), str(previous.SOPInstanceUID),
                          str(previous.StudyInstanceUID), str(previous.SOPClassUID))
    try:
        return PreviousSR(**dict(previous))
    except TypeError as exc:
        raise ResultBuildError(
            f"previous_sr needs keys series_uid, sop_instance_uid (optional study_uid, "
            f"sop_class_uid); got {sorted(previous)}"
        ) from exc


def _predecessor_dataset(prev: PreviousSR, study_uid: str) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.StudyInstanceUID = prev.study_uid or study_uid
    ds.SeriesInstanceUID = prev.series_uid
    ds.SOPInstanceUID = prev.sop_instance_uid
    ds.SOPClassUID = prev.sop_class_uid
    return ds


def _is_multiframe(ds: pydicom.Dataset) -> bool:
    return "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds


def _value(source: object, key: str, overrides: Mapping[str, Any]) -> float | int | None:
    """The number to write, or None when undefined; counts stay int (NUM "2", not "2.0").

    ``getattr`` without a default on purpose: a metric renamed in inference.measurements fails
    here, loudly, instead of vanishing from the SR."""
    raw = overrides[key] if key in overrides else getattr(source, key)
    if raw is None or isinstance(raw, bool):
        return None
    if isinstance(raw, (int, np.integer)):
        return int(raw)
    value = float(raw)
    return value if math.isfinite(value) else None


def _measurements(source: object | None, specs: Sequence[C.MetricCode],
                  overrides: Mapping[str, Any] | None = None,
                  inferred_from: KeyImage | None = None) -> list[hd.sr.Measurement]:
    """TID 300 NUMs of ``source``'s attributes named by ``specs`` (none when there is no source),
    each INFERRED FROM ``inferred_from``'s outline when given."""
    if source is None:
        return []
    coordinates = None if inferred_from is None else [_coordinates(inferred_from)]
    out = []
    for spec in specs:
        value = _value(source, spec.key, overrides or {})
        if value is None:
            continue
        out.append(hd.sr.Measurement(
            name=spec.name, value=value, unit=spec.unit, method=spec.method,
            derivation=spec.derivation, referenced_coordinates=coordinates,
        ))
    return out


def _source_image(key: KeyImage) -> hd.sr.SourceImageForRegion:
    frames = [key.frame_number] if key.frame_number is not None else None
    return hd.sr.SourceImageForRegion(key.sop_class_uid, key.sop_instance_uid, referenced_frame_numbers=frames)


def _coordinates(key: KeyImage) -> hd.sr.CoordinatesForMeasurement:
    """The outline as a NUM's INFERRED FROM (TID 300 -> TID 320)."""
    return hd.sr.CoordinatesForMeasurement(graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                                           graphic_data=key.outline, source_image=_source_image(key))


def _region(key: KeyImage) -> hd.sr.ImageRegion:
    """The outline as TID 1410's Image Region: a closed POLYLINE on the key image."""
    return hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=key.outline,
                             source_image=_source_image(key))


def _site(level: int) -> hd.sr.FindingSite:
    return hd.sr.FindingSite(anatomic_location=C.vertebra(level))


def _lesion_sites(lesion: LesionMetrics | None) -> list[hd.sr.FindingSite]:
    """Spinal cord, then each vertebra the lesion spans (nothing more when its levels are unknown)."""
    sites = [hd.sr.FindingSite(anatomic_location=C.SPINAL_CORD)]
    if lesion is not None and lesion.level_span:
        sites += [_site(level) for level in C.span_levels(lesion.level_span)]
    return sites


def _area_with_norms(value: float | None, z: float | None, pct: float | None,
                     sites: list[hd.sr.FindingSite]) -> list[hd.sr.Measurement]:
    """Mean CSA at the given vertebrae, then its z-score and percentile among healthy adults."""
    out: list[hd.sr.Measurement] = []
    for name, number, unit, method, derivation in (
        (C.AREA, value, C.MM2, C.CSA_METHOD, C.MEAN),
        (C.Z_SCORE, z, C.NO_UNITS, C.CSA_METHOD, None),
        (C.PERCENTILE_RANK, pct, C.PERCENT, C.CSA_METHOD, None),
    ):
        if number is not None and math.isfinite(number):
            out.append(hd.sr.Measurement(name=name, value=float(number), unit=unit, method=method,
                                         derivation=derivation, finding_sites=sites))
    return out


def _level_measurements(levels: LevelMeasurements | None) -> list[hd.sr.Measurement]:
    """Per-level CSA, C2-C3 CSA and the compression ratios; none when the levels are unknown."""
    if levels is None or not levels.known:
        return []
    out: list[hd.sr.Measurement] = []
    for row in levels.cord_csa_mm2_per_level:
        out += _area_with_norms(row.csa_mm2, row.z_score, row.percentile, [_site(row.level)])
    out += _area_with_norms(levels.cord_csa_c2c3_mm2, levels.cord_csa_c2c3_z_score,
                            levels.cord_csa_c2c3_percentile, [_site(2), _site(3)])
    if levels.compression_level is not None:
        for name, number in ((C.COMPRESSION_RATIO, levels.compression_ratio_pct),
                             (C.NORMALIZED_COMPRESSION_RATIO, levels.compression_ratio_normalized_pct)):
            if number is not None and math.isfinite(number):
                out.append(hd.sr.Measurement(name=name, value=float(number), unit=C.PERCENT,
                                             finding_sites=[_site(levels.compression_level)]))
    return out


def _segment_tracking_uid(seg: pydicom.Dataset, number: int, fallback: str) -> str:
    """The tracking UID the SEG gave this segment (so SR and SEG agree), else ``fallback``."""
    for item in seg.SegmentSequence:
        if int(item.SegmentNumber) == number:
            return str(getattr(item, "TrackingUID", "") or fallback)
    raise ResultBuildError(f"SEG {seg.SOPInstanceUID} has no segment {number}: build it from the same analysis")


def _check_seg(seg: pydicom.Dataset, source: Sequence[pydicom.Dataset], labels: list[int]) -> None:
    if str(seg.StudyInstanceUID) != str(source[0].StudyInstanceUID):
        raise ResultBuildError("the SEG belongs to another study than the source series")
    have = sorted(int(item.SegmentNumber) for item in seg.SegmentSequence)
    want = [CORD_SEGMENT] + [segment_number_for_lesion(label) for label in labels]
    if have != sorted(want):
        raise ResultBuildError(f"SEG segments {have} do not match the analysis (expected {want})")


def _measurement_groups(analysis: Analysis, seg: pydicom.Dataset, labels: list[int], study_uid: str,
                        source_series: str, frames: Sequence[FrameRef],
                        source: Sequence[pydicom.Dataset]) -> list[Any]:
    """Per lesion, then for the cord: a TID 1410 group (outline on the key image) and a TID 1411
    group (referencing its SEG segment) with one tracking UID; then the study totals (TID 1501)
    with lesion present/absent, their numbers inferred from the cord's outline."""
    meas = analysis.metrics
    by_label = {lesion.label: lesion for lesion in meas.lesions}
    model = analysis.model
    params = [f"{k}={v}" for k, v in algorithm_parameters(analysis).items()]
    algo = hd.sr.AlgorithmIdentification(name=model.name, version=model.version, parameters=params or None)
    drew = lesion_model(analysis)  # the lesions' own model: one of SCT's when the pipeline names one
    lesion_algo = hd.sr.AlgorithmIdentification(
        name=drew.name, version=drew.version,
        parameters=[f"{k}={v}" for k, v in lesion_algorithm_parameters(analysis).items()] or None)
    site = [hd.sr.FindingSite(anatomic_location=C.SPINAL_CORD)]

    def segment_ref(number: int) -> hd.sr.ReferencedSegment:
        return hd.sr.ReferencedSegment(
            sop_class_uid=str(seg.SOPClassUID), sop_instance_uid=str(seg.SOPInstanceUID),
            segment_number=number,
            source_series=hd.sr.SourceSeriesForSegmentation(source_series),
        )

    groups: list[Any] = []
    for label in labels:
        number = segment_number_for_lesion(label)
        uid = _segment_tracking_uid(seg, number, tracking_uid(study_uid, source_series, f"lesion-{label}"))
        lesion = by_label.get(label)
        key = lesion_key_image(analysis, lesion, frames, source) if lesion is not None else None
        if key is None:
            raise ResultBuildError(f"lesion {label} has no measurements or no voxels in the label map: "
                                   "build the SR from the analysis that made the SEG")
        sites = _lesion_sites(lesion)
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=uid, identifier=outline_tracking_id(label)),
            finding_category=C.ABNORMAL_STRUCTURE,
            finding_type=C.LESION,
            finding_sites=sites,
            algorithm_id=lesion_algo,
            measurements=[hd.sr.Measurement(name=C.AREA, value=key.area_mm2, unit=C.MM2,
                                            referenced_coordinates=[_coordinates(key)])],
        ))
        groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=uid, identifier=lesion_tracking_id(label)),
            referenced_region=_region(key),
            finding_category=C.ABNORMAL_STRUCTURE,
            finding_type=C.LESION,
            finding_sites=sites,
            algorithm_id=lesion_algo,
        ))
        groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=uid, identifier=lesion_tracking_id(label)),
            referenced_segment=segment_ref(number),
            finding_category=C.ABNORMAL_STRUCTURE,
            finding_type=C.LESION,
            finding_sites=sites,
            algorithm_id=lesion_algo,
            measurements=_measurements(lesion, C.LESION_METRICS),
        ))

    cord_uid = _segment_tracking_uid(seg, CORD_SEGMENT, tracking_uid(study_uid, source_series, "cord"))
    cord_algo = algo
    if meas.levels is not None and meas.levels.known and meas.levels.csa_reference_group:
        # which healthy adults the z-scores and percentiles compare with (TID 4019 Algorithm Parameters)
        reference = f"csa_reference=PAM50-normalized-metrics {meas.levels.csa_reference_group}"
        cord_algo = hd.sr.AlgorithmIdentification(name=model.name, version=model.version,
                                                  parameters=[*params, reference])
    cord_key = cord_key_image(analysis, frames, source)
    groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=cord_uid, identifier=cord_tracking_id()),
        referenced_region=_region(cord_key),
        finding_category=C.ANATOMICAL_STRUCTURE,
        finding_type=C.SPINAL_CORD,
        algorithm_id=algo,
    ))
    groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=cord_uid, identifier=cord_tracking_id()),
        referenced_segment=segment_ref(CORD_SEGMENT),
        finding_category=C.ANATOMICAL_STRUCTURE,
        finding_type=C.SPINAL_CORD,
        algorithm_id=cord_algo,
        measurements=_measurements(meas.cord, C.CORD_METRICS) + _level_measurements(meas.levels),
    ))

    groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=tracking_uid(study_uid, source_series, "lesion-totals"), identifier=TOTALS_TRACKING_ID
        ),
        finding_category=C.ABNORMAL_STRUCTURE,
        finding_type=C.LESION,
        finding_sites=site,
        algorithm_id=lesion_algo,
        measurements=_measurements(meas, C.TOTAL_METRICS, {"lesion_count": len(labels)}, inferred_from=cord_key),
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(
            name=C.LESION, value=C.PRESENT if labels else C.ABSENT
        )],
    ))
    return groups


def _document(report: hd.sr.MeasurementReport, evidence: Sequence[pydicom.Dataset],
              **header: Any) -> pydicom.Dataset:
    """The SR document of ``report``: highdicom's header modules (patient, study, evidence, flags)
    around the very content items of ``report``, as a plain pydicom Dataset.

    Why not ``Comprehensive3DSR(content=report)``: its constructor deep-copies the whole content
    tree and types the copy for its ``.content`` (the document keeps the originals), and searches
    the tree for IMAGE and COMPOSITE references to check that each is in ``evidence``: over a
    second for a sagittal series (issue 21), for a copy nothing here reads and a check that holds
    by construction. What it writes into the header depends on ``evidence`` alone (highdicom 0.28
    ``collect_evidence`` groups every given instance by study, referenced or not), and every
    reference is in ``evidence``: key images are ``source`` images (key_images checks it), segments
    and the image library are ``seg``'s and ``source``'s. So highdicom is given the report's root
    without its items, and the items are put in place. The result is returned untyped, the same
    elements in a plain Dataset: a highdicom document would promise a ``.content`` it does not
    hold. The gate reads the written file back with highdicom (``srread``), which types it there.
    tests/conformance/test_results_reference.py holds the result to the constructor's.
    """
    root = report[0]
    bare = pydicom.Dataset()  # the root's own elements (the same objects), no items
    for elem in root:
        if elem.keyword != "ContentSequence":
            bare.add(elem)
    bare.ContentSequence = pydicom.Sequence()
    header_only = hd.sr.Comprehensive3DSR(evidence=evidence, content=bare, **header)
    document = pydicom.Dataset(header_only)  # shares its elements
    document.file_meta = header_only.file_meta
    document.preamble = header_only.preamble
    document["ContentSequence"] = root["ContentSequence"]
    return document


def build_sr(
    source: Sequence[pydicom.Dataset],
    analysis: Analysis,
    seg: pydicom.Dataset,
    *,
    frames: Sequence[FrameRef],
    series_uid: str,
    sop_instance_uid: str,
    series_number: int = SR_SERIES_NUMBER,
    instance_number: int = 1,
    previous_sr: PreviousSR | Mapping[str, str] | pydicom.Dataset | None = None,
    manufacturer: str = DEFAULT_MANUFACTURER,
    device_name: str = "spine-dicom-node",
    device_uid: str | None = None,
    institution_name: str | None = None,
    image_library: bool = True,
) -> pydicom.Dataset:
    """Build the TID 1500 SR of ``analysis``; every lesion group references its ``seg`` segment.

    ``frames``: the source image of each slice (``Volume.frames``), where the outlines are drawn.

    ``image_library``: list the source images in TID 1600 (as dcmqi does); turn it off for very
    long series if SR size matters (about 1.5 kB per image).
    """
    if not source:
        raise ResultBuildError("build_sr needs the source series datasets (evidence, patient, study)")
    source = unique_source(source)
    first = source[0]
    study_uid, source_series = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
    labels = lesion_numbers(analysis)
    _check_seg(seg, source, labels)
    groups = _measurement_groups(analysis, seg, labels, study_uid, source_series, frames, source)
    model = analysis.model
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_uid or tracking_uid(manufacturer, device_name, "device"),
            name=device_name,
            manufacturer_name=manufacturer,
            model_name=f"{model.name} {model.version}"[:64],
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=C.MRI_PROCEDURE,
        imaging_measurements=groups,
        # highdicom's TID 1602 descriptors read PixelSpacing etc. at the top level, which a
        # multi-frame (enhanced) image keeps in its functional groups: list single-frame images only
        referenced_images=list(source) if image_library and not any(_is_multiframe(ds) for ds in source) else None,
    )
    previous = None
    if previous_sr is not None:
        previous = [_predecessor_dataset(_as_previous(previous_sr), study_uid)]
    sr = _document(
        report,
        evidence=[*source, seg],
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=manufacturer,
        is_complete=True,
        is_final=False,
        is_verified=False,
        institution_name=institution_name,
        previous_versions=previous,
    )
    sr.SeriesDescription = series_description(analysis, "SR")
    sr.CodingSchemeIdentificationSequence = [C.coding_scheme_identification()]
    return sr
