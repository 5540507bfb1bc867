"""SEG from real series (sagittal, axial, 15-degree oblique): conformance, identity and exact geometry.

The round trip decodes the written SEG onto the source frames by each SEG frame's own
references and must give back the cord and every lesion mask voxel for voxel.
"""
from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from dicom_node.results.readback import seg_masks_on_source
from dicom_node.results.seg import ResultBuildError, build_seg
from dicom_node.results.validate import check_result, validate_dicom, write_result
from inference.measurements import Measurements
from inference.volume import volume_from_datasets
from tests.helpers.env import require_shared, require_tool
from tests.helpers.results_cases import Case, frame_pixels, make_case, multiframe_case

ORIENTATIONS = ["sagittal", "axial", "oblique"]


@pytest.fixture(scope="module", params=ORIENTATIONS)
def case(request, tmp_path_factory) -> Case:
    shared = require_shared("lesion-example")
    return make_case(shared.parent, tmp_path_factory.mktemp(request.param), request.param)


def _write_seg(case: Case, tmp: Path, **kwargs) -> tuple[pydicom.Dataset, Path]:
    seg = build_seg(case.source, case.frames, case.analysis, series_uid=generate_uid(),
                    sop_instance_uid=generate_uid(), **kwargs)
    path = write_result(seg, tmp / "seg.dcm")
    return seg, path


def _assert_exact(case: Case, decoded: dict[int, np.ndarray]) -> None:
    a = case.analysis
    labels = sorted(int(v) for v in np.unique(a.lesion_labels) if v)
    assert sorted(decoded) == [1] + [label + 1 for label in labels]
    assert np.array_equal(decoded[1], a.cord_mask), "cord segment does not land on the source voxels"
    for label in labels:
        assert np.array_equal(decoded[label + 1], (a.lesion_labels == label).astype(np.uint8)), label


def test_source_frames_are_volume_slices_transposed(case):
    """The convention the builder relies on, checked on the real pixels: frame = array[:, :, k].T."""
    for k in range(case.image.shape[2]):
        assert np.array_equal(frame_pixels(case, k), case.image[:, :, k].T)


@pytest.mark.parametrize("omit", [False, True])
def test_seg_round_trip_exact_and_conformant(case, tmp_path, omit):
    require_tool("dciodvfy")
    seg, path = _write_seg(case, tmp_path, omit_empty_frames=omit)
    report = validate_dicom(path)
    assert report.errors == []
    check_result(path)

    _assert_exact(case, seg_masks_on_source(path, case.frames, case.analysis.cord_mask.shape))

    # highdicom's own source-instance mapping agrees
    hd_seg = hd.seg.segread(str(path))
    uids = [f.sop_instance_uid for f in case.frames]
    px = hd_seg.get_pixels_by_source_instance(uids, segment_numbers=[1, 2, 3])  # (k, rows, cols, seg)
    vol = np.transpose(px, (2, 1, 0, 3))
    assert np.array_equal(vol[..., 0], case.analysis.cord_mask)
    assert np.array_equal(vol[..., 1], case.analysis.lesion_labels == 1)
    assert np.array_equal(vol[..., 2], case.analysis.lesion_labels == 2)

    per_slice = [int(case.analysis.cord_mask[:, :, k].any()) + sum(
        int((case.analysis.lesion_labels[:, :, k] == lab).any()) for lab in (1, 2))
        for k in range(len(case.frames))]
    n_slices = len(case.frames)
    assert int(seg.NumberOfFrames) == (sum(per_slice) if omit else 3 * n_slices)


def test_seg_frames_sit_where_their_source_frames_are(case, tmp_path):
    """Independent geometry: every SEG frame's position/orientation equals its source image's."""
    seg, _ = _write_seg(case, tmp_path)
    by_uid = {str(ds.SOPInstanceUID): ds for ds in case.source}
    shared = seg.SharedFunctionalGroupsSequence[0]
    iop = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, dtype=float)
    spacing = np.array(shared.PixelMeasuresSequence[0].PixelSpacing, dtype=float)
    for group in seg.PerFrameFunctionalGroupsSequence:
        src = by_uid[str(group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)]
        ipp = np.array(group.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        assert np.allclose(ipp, np.array(src.ImagePositionPatient, dtype=float), atol=1e-4)
        assert np.allclose(iop, np.array(src.ImageOrientationPatient, dtype=float), atol=1e-6)
        assert np.allclose(spacing, np.array(src.PixelSpacing, dtype=float), atol=1e-6)


def test_seg_identity_segments_and_codes(case, tmp_path):
    seg, _ = _write_seg(case, tmp_path, series_number=9911)
    src = case.source[0]
    for key in ("PatientID", "PatientName", "StudyInstanceUID", "FrameOfReferenceUID"):
        assert seg[key].value == src[key].value, key
    assert seg.SeriesInstanceUID != src.SeriesInstanceUID and seg.SeriesNumber == 9911
    assert seg.SeriesDescription == "SC+lesion SEG (spinecord-t2 v0.1.0)"
    assert seg.Manufacturer == "spine-dicom-node" and seg.SoftwareVersions == "0.1.0"
    assert seg.ContentDate and seg.ContentTime and seg.SegmentationType == "BINARY"

    segs = {int(s.SegmentNumber): s for s in seg.SegmentSequence}
    assert sorted(segs) == [1, 2, 3]
    cord = segs[1]
    assert cord.SegmentLabel == "Spinal cord"
    assert cord.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"  # Anatomical Structure
    assert cord.SegmentedPropertyTypeCodeSequence[0].CodeValue == "2748008"  # Spinal cord
    assert cord.AnatomicRegionSequence[0].CodeValue == "2748008"
    for n in (2, 3):
        item = segs[n]
        assert item.SegmentLabel == f"Lesion {n - 1}"
        assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"  # Morph. abnormal
        assert item.SegmentedPropertyTypeCodeSequence[0].CodeValue == "52988006"  # Lesion
        assert item.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT"
    for item in segs.values():
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        assert item.SegmentAlgorithmName == "spinecord-t2"
        algo = item.SegmentationAlgorithmIdentificationSequence[0]
        assert algo.AlgorithmName == "spinecord-t2" and algo.AlgorithmVersion == "0.1.0"
    uids = {str(s.TrackingUID) for s in segs.values()}
    assert len(uids) == 3
    again, _ = _write_seg(case, tmp_path)
    assert {str(s.TrackingUID) for s in again.SegmentSequence} == uids  # deterministic per lesion


def test_fractional_cord_probability_round_trip(case, tmp_path):
    require_tool("dciodvfy")
    seg, path = _write_seg(case, tmp_path, fractional=True)
    assert seg.SegmentationType == "FRACTIONAL" and seg.SegmentationFractionalType == "PROBABILITY"
    assert seg.SeriesDescription.startswith("SC+lesion FRACTIONAL SEG")
    assert validate_dicom(path).errors == []
    decoded = seg_masks_on_source(path, case.frames, case.analysis.cord_mask.shape)
    prob = case.analysis.cord_prob
    assert np.max(np.abs(decoded[1] - prob)) <= 0.5 / 255 + 1e-6
    assert np.max(np.abs(decoded[1] - prob)) > 0  # really the soft map, not the mask
    for label in (1, 2):
        assert np.array_equal(decoded[label + 1], (case.analysis.lesion_labels == label).astype(np.float32))


@pytest.mark.parametrize("omit", [False, True])
def test_byte_frames_round_trip_exact_at_odd_size(case, tmp_path, omit):
    """The OHIF profile's SEG: binary masks in 8-bit frames (0/255), one RLE fragment per frame.

    The sagittal case is 99 x 99 (9,801 pixels, not a multiple of 8) with 29 slices: bit-packed
    frames start inside a byte there, and 8-bit frames would make the pixel data odd. Read back by
    our reader, by highdicom and after dcmtk's RLE decoder it must be the masks voxel for voxel; every
    fragment must decode on its own to exactly Rows x Columns bytes of 0 or 255 (what OHIF hands to its
    per-frame decoder).
    """
    from pydicom.encaps import generate_fragmented_frames
    from pydicom.pixels.decoders.rle import _rle_decode_frame

    require_tool("dciodvfy")
    seg, path = _write_seg(case, tmp_path, byte_frames=True, omit_empty_frames=omit)
    assert (seg.SegmentationType, seg.SegmentationFractionalType) == ("FRACTIONAL", "OCCUPANCY")
    assert int(seg.BitsAllocated) == 8 and int(seg.MaximumFractionalValue) == 255
    assert seg.file_meta.TransferSyntaxUID == pydicom.uid.RLELossless
    assert seg.SeriesDescription == "SC+lesion SEG (spinecord-t2 v0.1.0)"  # binary content, like BINARY
    assert validate_dicom(path).errors == []
    check_result(path)
    _assert_exact(case, {n: m.astype(np.uint8) for n, m in
                         seg_masks_on_source(path, case.frames, case.analysis.cord_mask.shape).items()})

    written = pydicom.dcmread(path)
    rows, cols = int(written.Rows), int(written.Columns)
    fragments = [b"".join(f) for f in generate_fragmented_frames(written.PixelData,
                                                                 number_of_frames=int(written.NumberOfFrames))]
    assert len(fragments) == int(written.NumberOfFrames)
    for fragment in fragments:
        frame = np.frombuffer(bytes(_rle_decode_frame(fragment, rows, cols, 1, 8)), np.uint8)
        assert frame.size == rows * cols and set(np.unique(frame)) <= {0, 255}

    # dcmtk's RLE decoder (dcmdrle) agrees: its uncompressed copy reads back as the same masks
    plain = tmp_path / "dcmtk-decoded.dcm"
    subprocess.run([require_tool("dcmdrle"), str(path), str(plain)], check=True, capture_output=True, timeout=60)
    assert pydicom.dcmread(plain).file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    _assert_exact(case, {n: m.astype(np.uint8) for n, m in
                         seg_masks_on_source(plain, case.frames, case.analysis.cord_mask.shape).items()})

    hd_seg = hd.seg.segread(str(path))
    uids = [f.sop_instance_uid for f in case.frames]
    px = hd_seg.get_pixels_by_source_instance(uids, segment_numbers=[1, 2, 3])  # (k, rows, cols, seg), 0..1
    vol = np.transpose(px, (2, 1, 0, 3))
    assert np.array_equal(vol[..., 0], case.analysis.cord_mask)
    assert np.array_equal(vol[..., 1], case.analysis.lesion_labels == 1)
    assert np.array_equal(vol[..., 2], case.analysis.lesion_labels == 2)


def test_byte_frames_cannot_also_carry_the_soft_cord(case):
    with pytest.raises(ResultBuildError, match="byte_frames"):
        build_seg(case.source, case.frames, case.analysis, series_uid=generate_uid(),
                  sop_instance_uid=generate_uid(), byte_frames=True, fractional=True)


@pytest.fixture(scope="module")
def sagittal_no_lesion(tmp_path_factory) -> Case:
    shared = require_shared("lesion-example")
    return make_case(shared.parent, tmp_path_factory.mktemp("nolesion"), "sagittal", lesions=0)


def test_no_lesion_gives_cord_segment_only(sagittal_no_lesion, tmp_path):
    require_tool("dciodvfy")
    seg, path = _write_seg(sagittal_no_lesion, tmp_path, omit_empty_frames=True)
    assert [int(s.SegmentNumber) for s in seg.SegmentSequence] == [1]
    assert validate_dicom(path).errors == []
    decoded = seg_masks_on_source(path, sagittal_no_lesion.frames, sagittal_no_lesion.analysis.cord_mask.shape)
    assert np.array_equal(decoded[1], sagittal_no_lesion.analysis.cord_mask)


@pytest.mark.parametrize("omit", [False, True])
def test_empty_cord_is_still_a_valid_seg(tmp_path, omit):
    require_tool("dciodvfy")
    shared = require_shared("lesion-example")
    case = make_case(shared.parent, tmp_path / "src", "sagittal", empty_cord=True)
    seg, path = _write_seg(case, tmp_path, omit_empty_frames=omit)
    assert int(seg.NumberOfFrames) >= 1
    assert validate_dicom(path).errors == []
    check_result(path)
    decoded = seg_masks_on_source(path, case.frames, case.analysis.cord_mask.shape)
    assert list(decoded) == [1] and not decoded[1].any()


def test_mismatched_inputs_are_refused_with_a_reason(sagittal_no_lesion):
    case = sagittal_no_lesion
    kw = dict(series_uid=generate_uid(), sop_instance_uid=generate_uid())
    with pytest.raises(ResultBuildError, match="frame references"):
        build_seg(case.source, case.frames[:-1], case.analysis, **kw)
    with pytest.raises(ResultBuildError, match="not in the source"):
        build_seg(case.source[1:], case.frames, case.analysis, **kw)
    transposed = type(case.analysis)(**{**case.analysis.__dict__, **{
        k: np.swapaxes(getattr(case.analysis, k), 0, 1)[:-1] for k in
        ("cord_mask", "lesion_mask", "lesion_labels", "cord_prob")}})
    with pytest.raises(ResultBuildError, match="rows x columns"):
        build_seg(case.source, case.frames, transposed, **kw)
    other = copy.deepcopy(case.source[0])
    other.SeriesInstanceUID, other.SOPInstanceUID = generate_uid(), generate_uid()
    with pytest.raises(ResultBuildError, match="one series of one study"):
        build_seg([*case.source, other], case.frames, case.analysis, **kw)
    gaps = type(case.analysis)(**{**case.analysis.__dict__,
                                  "lesion_labels": (case.analysis.cord_mask * 2).astype(np.int32)})
    with pytest.raises(ResultBuildError, match="without gaps"):
        build_seg(case.source, case.frames, gaps, **kw)
    bad_meas = type(case.analysis)(**{**case.analysis.__dict__,
                                      "metrics": Measurements.from_json({"lesions": [{"label": 1}]})})
    with pytest.raises(ResultBuildError, match="lesion labels"):
        build_seg(case.source, case.frames, bad_meas, **kw)


def test_png_of_decoded_seg_equals_png_of_the_analysis_masks(case, tmp_path):
    """What a human looks at is drawn from the SEG read back; it must be the model's masks."""
    from PIL import Image

    from dicom_node.results.secondary_capture import render_seg_png
    from inference.volume import Volume

    _, path = _write_seg(case, tmp_path, omit_empty_frames=True)
    volume = Volume(array=case.image, affine=case.analysis.affine, frames=case.frames)
    from_seg = render_seg_png(volume, path, tmp_path / "seg.png")
    direct = render_seg_png(volume, (case.analysis.cord_mask, case.analysis.lesion_labels > 0), tmp_path / "a.png")
    a, b = np.asarray(Image.open(from_seg)), np.asarray(Image.open(direct))
    assert a.shape == b.shape and np.array_equal(a, b)
    red = (a[..., 0] > 200) & (a[..., 1] < 80) & (a[..., 2] < 80)
    green = (a[..., 1] > 200) & (a[..., 0] < 80)
    assert red.any() and green.any()  # lesion outline and cord outline are drawn


def test_secondary_capture_fallback_is_marked_and_conformant(case, tmp_path):
    require_tool("dciodvfy")
    from dicom_node.results.secondary_capture import (
        NOT_FOR_DIAGNOSIS,
        build_secondary_captures,
    )

    uids = [generate_uid() for _ in range(3)]
    series = generate_uid()
    scs = build_secondary_captures(case.source, case.frames, case.analysis, series_uid=series,
                                   sop_instance_uids=uids)
    assert [str(sc.SOPInstanceUID) for sc in scs] == uids
    src_uids = {str(ds.SOPInstanceUID) for ds in case.source}
    lesion_slices = {k for k in range(len(case.frames)) if (case.analysis.lesion_labels[:, :, k] > 0).any()}
    for n, sc in enumerate(scs):
        path = write_result(sc, tmp_path / f"sc{n}.dcm")
        assert validate_dicom(path).errors == []
        assert sc.BurnedInAnnotation == "YES" and NOT_FOR_DIAGNOSIS in sc.ImageComments
        assert NOT_FOR_DIAGNOSIS in sc.SeriesDescription and sc.SeriesInstanceUID == series
        assert sc.StudyInstanceUID == case.source[0].StudyInstanceUID and sc.PatientID == case.source[0].PatientID
        assert str(sc.SourceImageSequence[0].ReferencedSOPInstanceUID) in src_uids
        rgb = sc.pixel_array
        label_band = rgb[:12]
        assert ((label_band[..., 0] > 200) & (label_band[..., 1] > 200) & (label_band[..., 2] < 60)).any()
    # the first key slice is the one with most lesion, and its burn-in shows red where the lesion is
    k = next(i for i, f in enumerate(case.frames)
             if f.sop_instance_uid == str(scs[0].SourceImageSequence[0].ReferencedSOPInstanceUID))
    assert k in lesion_slices
    rgb = scs[0].pixel_array
    zoom = rgb.shape[0] // case.analysis.cord_mask.shape[1]
    lesion = np.repeat(np.repeat(case.analysis.lesion_labels[:, :, k].T > 0, zoom, 0), zoom, 1)
    lesion[:12] = False
    reddish = rgb[..., 0].astype(int) - rgb[..., 1].astype(int) > 60
    assert reddish[lesion].mean() > 0.9 and reddish[~lesion].mean() < 0.01


def test_enhanced_multiframe_source_round_trips(tmp_path):
    """One multi-frame source instance: SEG frames reference (instance, frame number)."""
    require_tool("dciodvfy")
    shared = require_shared("lesion-example")
    case = make_case(shared.parent, tmp_path / "src", "oblique")
    mf_case, multi = multiframe_case(case)
    volume = volume_from_datasets([multi])
    assert np.array_equal(volume.array, case.image) and np.allclose(volume.affine, case.analysis.affine, atol=1e-6)
    numbers = [f.frame_number for f in mf_case.frames]
    assert sorted(numbers) == list(range(1, len(numbers) + 1))
    assert numbers != sorted(numbers)  # frames stored in reverse: the frame-number mapping is exercised
    for k in (0, len(numbers) // 2):
        assert np.array_equal(frame_pixels(mf_case, k), mf_case.image[:, :, k].T)
    for omit in (False, True):
        seg, path = _write_seg(mf_case, tmp_path / f"o{omit}", omit_empty_frames=omit)
        assert validate_dicom(path).errors == []
        refs = {int(g.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber)
                for g in seg.PerFrameFunctionalGroupsSequence}
        assert refs <= set(numbers) and (omit or refs == set(numbers))
        _assert_exact(mf_case, seg_masks_on_source(path, mf_case.frames, case.analysis.cord_mask.shape))
