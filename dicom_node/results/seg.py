"""Analysis masks -> one DICOM SEG instance that overlays exactly on the source series.

Segment numbering is the contract the SR relies on (see ``sr.py``):
segment 1 = spinal cord (including lesions), segment n + 1 = lesion with measurement label n.
The numbering is the same for BINARY and FRACTIONAL output, so an SR can reference either.

FRACTIONAL (``fractional=True``) is the same single object with segmentation type FRACTIONAL
(PROBABILITY, 8 bit): the cord segment carries the soft probability ``analysis.cord_prob``,
the lesion segments carry their binary masks (0 or 1). One object keeps the segment numbers
stable and lets a viewer show the soft cord with the lesions on top.

Byte frames (``byte_frames=True``) carry the same binary masks as BINARY, but as FRACTIONAL
OCCUPANCY with 8-bit frames holding 0 or 255, RLE Lossless (one fragment per frame). Why: BINARY
packs frames bit after bit, so when Rows x Columns is not a multiple of 8 a frame starts inside a
byte, and 8-bit frames of odd size make the pixel data odd, padded to even. OHIF 3.13's reader
(dcmjs AsyncDicomReader) unpacks such 1-bit frames in the wrong bit order and rejects padded
pixel data ("Invalid frame length"); a frame in its own fragment starts on byte 0 and needs no
padding arithmetic, and OHIF shows a FRACTIONAL SEG only when it holds nothing but 0 and the
maximum. RLE also keeps the 8-bit frames about as small as the bit-packed ones.

Geometry: ``Volume.array`` is ``[i (column), j (row), k (slice)]`` and slice k came from
``frames[k]``; a DICOM frame is (Rows, Columns) = ``array[:, :, k].T``. Each mask slice is
written against the very source instance/frame it came from, so orientation never matters.
"""
from __future__ import annotations

import copy
import hashlib
import uuid
from collections.abc import Sequence

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from inference.api import Analysis, FrameRef, ModelIdentity, package_version

CORD_SEGMENT = 1
SEG_SERIES_NUMBER = 9901
DEFAULT_MANUFACTURER = "spine-dicom-node"
DEFAULT_SOFTWARE_VERSION = package_version()  # the node's release, from its package metadata


class ResultBuildError(ValueError):
    """The analysis and the source series do not fit together; the message says what to fix."""


def lesion_numbers(analysis: Analysis) -> list[int]:
    """Measurement labels of the lesions, in the order of ``metrics.lesions`` when given.

    The SR and the SEG must agree on which lesion is which; the measurement list is the
    reference, and every listed lesion must exist in ``lesion_labels`` (and vice versa).

    Only the labelled voxels go through ``np.unique`` (its cost grows with what it is given):
    lesions are a few hundred voxels of millions, and the SEG and SR ask three times (issue 21).
    """
    labels = np.asarray(analysis.lesion_labels)
    in_map = sorted(int(v) for v in np.unique(labels[labels != 0]))
    if in_map != list(range(1, len(in_map) + 1)):
        raise ResultBuildError(
            f"lesion labels must be 1..n without gaps (SEG segment numbers follow them); got {in_map[:10]}"
        )
    listed = [lesion.label for lesion in analysis.metrics.lesions]
    if listed and sorted(listed) != in_map:
        raise ResultBuildError(
            f"lesion labels in measurements {sorted(listed)} differ from labels in "
            f"lesion_labels {in_map}: the SEG segments would not match the SR groups"
        )
    return in_map


def segment_number_for_lesion(label: int) -> int:
    """SEG segment number of the lesion with measurement label ``label``."""
    return CORD_SEGMENT + int(label)


def tracking_uid(study_uid: str, source_series_uid: str, what: str) -> str:
    """A deterministic UID (2.25 form) for one tracked finding of one source series.

    Re-running the same series gives the same UIDs, so a superseding SR and its SEG relate
    to the earlier ones; a different series or finding gives a different UID.
    """
    digest = hashlib.sha256(f"{study_uid}|{source_series_uid}|{what}".encode()).digest()
    return f"2.25.{uuid.UUID(bytes=digest[:16]).int}"


def lesion_tracking_id(label: int) -> str:
    """Human-readable tracking identifier of a lesion (also the SEG segment label)."""
    return f"Lesion {label}"


def _explicit_default_charset(ds: pydicom.Dataset) -> pydicom.Dataset:
    """A copy naming the default repertoire 'ISO 2022 IR 6' where the source leaves value 1 empty.

    With code extensions (e.g. ['', 'ISO 2022 IR 87'], Japanese) an empty first value means
    ISO 2022 IR 6 (PS3.3 C.12.1.1.2); highdicom only accepts the explicit term. The source
    itself is never changed.
    """
    charset = ds.get("SpecificCharacterSet")
    if isinstance(charset, str) or not charset or charset[0] != "":
        return ds
    fixed = copy.deepcopy(ds)
    fixed.SpecificCharacterSet = ["ISO 2022 IR 6", *list(charset)[1:]]
    return fixed


def unique_source(source: Sequence[pydicom.Dataset]) -> list[pydicom.Dataset]:
    """Source datasets once each, by SOP Instance UID (callers may list a multi-frame instance
    once per frame), checked to be one series of one study."""
    index: dict[str, pydicom.Dataset] = {}
    for ds in source:
        if str(ds.SOPInstanceUID) not in index:
            index[str(ds.SOPInstanceUID)] = _explicit_default_charset(ds)
    studies = {str(ds.StudyInstanceUID) for ds in index.values()}
    series = {str(ds.SeriesInstanceUID) for ds in index.values()}
    if len(studies) != 1 or len(series) != 1:
        raise ResultBuildError(
            f"source must be one series of one study; got {len(series)} series in {len(studies)} studies"
        )
    return list(index.values())


def _source_index(source: Sequence[pydicom.Dataset]) -> dict[str, pydicom.Dataset]:
    return {str(ds.SOPInstanceUID): ds for ds in unique_source(source)}


def order_source(
    source: Sequence[pydicom.Dataset], frames: list[FrameRef], shape: tuple[int, int, int]
) -> tuple[list[pydicom.Dataset], list[int]]:
    """Source datasets as highdicom wants them, and for each SEG frame the volume slice k.

    Single-frame series: one dataset per slice, in volume order (frame i <- slice i).
    One multi-frame instance: SEG frame f (0-based) <- the slice k whose FrameRef has
    frame number f + 1; every source frame must be covered exactly once.
    """
    n_i, n_j, n_k = shape
    if len(frames) != n_k:
        raise ResultBuildError(f"{len(frames)} frame references for a volume of {n_k} slices")
    index = _source_index(source)
    uids = [f.sop_instance_uid for f in frames]
    missing = sorted(set(uids) - set(index))
    if missing:
        raise ResultBuildError(f"frames reference instances not in the source: {missing[:3]}")
    for uid in set(uids):
        ds = index[uid]
        if (int(ds.Rows), int(ds.Columns)) != (n_j, n_i):
            raise ResultBuildError(
                f"source {uid} is {ds.Rows}x{ds.Columns} (rows x columns) but the masks are "
                f"{n_j}x{n_i} (array [i, j, k] = [column, row, slice]); masks must be in the "
                "source's own grid"
            )
    if len(set(uids)) == n_k:
        return [index[u] for u in uids], list(range(n_k))
    if len(set(uids)) == 1:
        ds = index[uids[0]]
        n_frames = int(getattr(ds, "NumberOfFrames", 1))
        numbers = [f.frame_number for f in frames]
        if sorted(numbers) != list(range(1, n_frames + 1)):
            raise ResultBuildError(
                f"multi-frame source {uids[0]} has {n_frames} frames but the volume slices "
                f"reference frames {sorted(numbers)[:5]}...: every frame must be used once"
            )
        slice_of_frame = [0] * n_frames
        for k, number in enumerate(numbers):
            slice_of_frame[number - 1] = k
        return [ds], slice_of_frame
    raise ResultBuildError(
        "frames must come either from one instance per slice or from one multi-frame "
        f"instance; got {len(set(uids))} instances for {n_k} slices"
    )


def _to_frames(mask: np.ndarray, slice_of_frame: list[int]) -> np.ndarray:
    """[i, j, k] volume -> (frames, Rows, Columns) in source frame order."""
    return np.stack([mask[:, :, k].T for k in slice_of_frame], axis=0)


def algorithm_parameters(analysis: Analysis) -> dict[str, str]:
    """Settings that changed the result beyond the model itself, for the SEG's and the SR's
    algorithm identification: today the minimum lesion volume, when one was applied."""
    applied = analysis.metrics.lesion_filter
    minimum = applied.min_lesion_volume_mm3 if applied is not None else 0.0
    return {"min_lesion_volume_mm3": f"{minimum:g}"} if minimum > 0 else {}


def lesion_algorithm_parameters(analysis: Analysis) -> dict[str, str]:
    """algorithm_parameters of the lesion segments and numbers: when another model drew the lesions
    (one of SCT's), also what it is and trained on, and which model drew the cord they lie in."""
    params = algorithm_parameters(analysis)
    if analysis.lesion_model is not None:
        params = {**params, "model": analysis.lesion_model.description,
                  "cord_model": f"{analysis.model.name} {analysis.model.version}"}
    return params


def lesion_model(analysis: Analysis) -> ModelIdentity:
    """Who drew the lesions: an SCT model when the pipeline names one, else the analysis's model."""
    return analysis.lesion_model or analysis.model


def _algorithm(analysis: Analysis, lesions: bool = False) -> hd.AlgorithmIdentificationSequence:
    model = lesion_model(analysis) if lesions else analysis.model
    return hd.AlgorithmIdentificationSequence(
        name=model.name,
        family=codes.cid7162.ArtificialIntelligence,
        version=model.version,
        parameters=(lesion_algorithm_parameters(analysis) if lesions else algorithm_parameters(analysis)) or None,
    )


def cord_tracking_id() -> str:
    """Tracking identifier of the cord (SEG segment 1 and its SR measurement group)."""
    return "Spinal cord"


def segment_descriptions(
    analysis: Analysis, study_uid: str, source_series_uid: str
) -> list[hd.seg.SegmentDescription]:
    """Cord first, then one segment per lesion, each with the tracking UID the SR repeats."""
    algo, lesion_algo = _algorithm(analysis), _algorithm(analysis, lesions=True)
    descs = [
        hd.seg.SegmentDescription(
            segment_number=CORD_SEGMENT,
            segment_label="Spinal cord",
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=codes.SCT.SpinalCord,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algo,
            anatomic_regions=[codes.SCT.SpinalCord],
            tracking_id=cord_tracking_id(),
            tracking_uid=tracking_uid(study_uid, source_series_uid, "cord"),
            display_color=hd.color.CIELabColor(80.0, -40.0, 30.0),
        )
    ]
    for label in lesion_numbers(analysis):
        descs.append(
            hd.seg.SegmentDescription(
                segment_number=segment_number_for_lesion(label),
                segment_label=lesion_tracking_id(label),
                segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
                segmented_property_type=codes.SCT.Lesion,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=lesion_algo,
                anatomic_regions=[codes.SCT.SpinalCord],
                tracking_id=lesion_tracking_id(label),
                tracking_uid=tracking_uid(study_uid, source_series_uid, f"lesion-{label}"),
                display_color=hd.color.CIELabColor(55.0, 75.0, 55.0),
            )
        )
    return descs


def _check_masks(analysis: Analysis) -> None:
    shape = analysis.cord_mask.shape
    for name in ("lesion_mask", "lesion_labels", "cord_prob"):
        arr = getattr(analysis, name)
        if arr.shape != shape:
            raise ResultBuildError(f"analysis.{name} has shape {arr.shape}, cord_mask {shape}")
    if analysis.cord_mask.ndim != 3:
        raise ResultBuildError(f"masks must be 3D [i, j, k], got shape {shape}")
    prob = analysis.cord_prob
    if not np.all(np.isfinite(prob)) or prob.min(initial=0) < 0 or prob.max(initial=0) > 1:
        raise ResultBuildError("analysis.cord_prob must hold finite values in [0, 1]")


def series_description(analysis: Analysis, kind: str = "SEG") -> str:
    """E.g. 'SC+lesion SEG (spinecord-t2 v0.1.0)', clipped to the 64 characters of LO."""
    return f"SC+lesion {kind} ({analysis.model.name} v{analysis.model.version})"[:64]


def build_seg(
    source: Sequence[pydicom.Dataset],
    frames: list[FrameRef],
    analysis: Analysis,
    *,
    series_uid: str,
    sop_instance_uid: str,
    series_number: int = SEG_SERIES_NUMBER,
    instance_number: int = 1,
    omit_empty_frames: bool = False,
    fractional: bool = False,
    byte_frames: bool = False,
    manufacturer: str = DEFAULT_MANUFACTURER,
    software_version: str = DEFAULT_SOFTWARE_VERSION,
    device_serial_number: str = "1",
) -> pydicom.Dataset:
    """Build the SEG (cord + one segment per lesion) referencing the source frame by frame.

    BINARY by default; ``fractional`` puts the soft cord probability in 8-bit FRACTIONAL frames;
    ``byte_frames`` the binary masks in 8-bit RLE frames that OHIF reads at any size (module doc).

    With ``omit_empty_frames`` and nothing segmented at all, one empty frame is kept:
    a SEG needs at least one frame, and "the model found no cord" is still a result.
    """
    _check_masks(analysis)
    if fractional and byte_frames:
        raise ResultBuildError("byte_frames carries binary masks (0 or 255); it cannot also carry the soft "
                               "cord probability (fractional): ask for one of them")
    ordered, slice_of_frame = order_source(source, frames, analysis.cord_mask.shape)
    labels = lesion_numbers(analysis)

    if fractional:
        cord = np.clip(analysis.cord_prob.astype(np.float32), 0.0, 1.0)
    else:
        cord = (analysis.cord_mask > 0).astype(np.uint8)
    planes = [cord] + [
        (analysis.lesion_labels == label).astype(cord.dtype) for label in labels
    ]
    pixels = np.stack([_to_frames(p, slice_of_frame) for p in planes], axis=-1)
    if fractional or byte_frames:
        pixels = pixels.astype(np.float32)  # FRACTIONAL input is 0..1, highdicom scales it to 0..255

    any_content = bool(np.any(pixels))
    seg = hd.seg.Segmentation(
        source_images=ordered,
        pixel_array=pixels,
        segmentation_type=(
            hd.seg.SegmentationTypeValues.FRACTIONAL
            if fractional or byte_frames
            else hd.seg.SegmentationTypeValues.BINARY
        ),
        segment_descriptions=segment_descriptions(
            analysis, str(ordered[0].StudyInstanceUID), str(ordered[0].SeriesInstanceUID)
        ),
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=manufacturer,
        manufacturer_model_name=analysis.model.name,
        software_versions=software_version,
        device_serial_number=device_serial_number,
        fractional_type=(
            hd.seg.SegmentationFractionalTypeValues.PROBABILITY if fractional
            else hd.seg.SegmentationFractionalTypeValues.OCCUPANCY if byte_frames
            else None
        ),
        transfer_syntax_uid=RLELossless if byte_frames else ExplicitVRLittleEndian,
        content_label="SPINECORD",
        content_description=(f"Spinal cord by {analysis.model.name}, lesions by {analysis.lesion_model.name}"
                             if analysis.lesion_model else
                             f"Spinal cord and intramedullary lesions by {analysis.model.name}")[:64],
        omit_empty_frames=bool(omit_empty_frames and any_content),
    )
    seg.SeriesDescription = series_description(analysis, "FRACTIONAL SEG" if fractional else "SEG")
    return seg
