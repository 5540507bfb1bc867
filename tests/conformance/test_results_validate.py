"""The dispatch gate: dciodvfy parsing, blocking on errors, read-back, atomic writes."""
from __future__ import annotations

import os
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from dicom_node.results import validate as V
from dicom_node.results.seg import build_seg
from dicom_node.results.sr import build_sr
from tests.helpers.env import require_shared, require_tool
from tests.helpers.results_cases import make_case

SAMPLE = """Segmentation
Error - Missing attribute Type 1 Required Element=<SegmentSequence> Module=<SegmentationImage>
Warning - Unrecognized defined term <99SPINE> for value 1 of attribute <Coding Scheme Designator>
Warning - Value dubious for this VR - (0x0010,0x0010) PN Patient's Name
MRImage
"""


def test_parse_dciodvfy_splits_errors_and_warnings():
    report = V.parse_dciodvfy(SAMPLE)
    assert report.errors == ["Error - Missing attribute Type 1 Required Element=<SegmentSequence> "
                             "Module=<SegmentationImage>"]
    assert len(report.warnings) == 2 and not report.ok
    assert V.parse_dciodvfy("Segmentation\n").ok


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> tuple[Path, Path]:
    shared = require_shared("lesion-example")
    tmp = tmp_path_factory.mktemp("gate")
    case = make_case(shared.parent, tmp / "src", "sagittal", lesions=1)
    seg = build_seg(case.source, case.frames, case.analysis, series_uid=generate_uid(),
                    sop_instance_uid=generate_uid(), omit_empty_frames=True)
    sr = build_sr(case.source, case.analysis, seg, frames=case.frames,
                  series_uid=generate_uid(), sop_instance_uid=generate_uid(),
                  image_library=False)
    return V.write_result(seg, tmp / "seg.dcm"), V.write_result(sr, tmp / "sr.dcm")


def test_gate_passes_good_results_and_reads_them_back(results):
    require_tool("dciodvfy")
    seg_path, sr_path = results
    assert V.check_result(seg_path).errors == []
    report = V.check_result(sr_path)
    assert report.errors == [] and report.warnings  # the 99SPINE warnings are reported, not fatal
    assert V.readback_seg(seg_path).number_of_segments == 2
    assert len(V.readback_sr(sr_path).content.get_volumetric_roi_measurement_groups()) == 2
    assert V.validate_dicom(pydicom.dcmread(seg_path)).errors == []  # a Dataset works too


def test_gate_blocks_an_object_with_dciodvfy_errors(results, tmp_path):
    require_tool("dciodvfy")
    ds = pydicom.dcmread(results[0])
    del ds.SegmentSequence
    del ds.ContentLabel
    bad = V.write_result(ds, tmp_path / "bad.dcm")
    report = V.validate_dicom(bad)
    assert report.errors, "dciodvfy should reject a SEG without SegmentSequence"
    with pytest.raises(V.ResultValidationError, match="dciodvfy error"):
        V.check_result(bad)


def test_readback_rejects_the_wrong_kind(results):
    seg_path, sr_path = results
    with pytest.raises(V.ResultValidationError, match="cannot read it as a SEG"):
        V.readback_seg(sr_path)
    with pytest.raises(V.ResultValidationError, match="cannot read it as an SR"):
        V.readback_sr(seg_path)


def test_missing_validator_refuses_instead_of_passing(results, monkeypatch):
    monkeypatch.setattr(V.shutil, "which", lambda name: None)
    with pytest.raises(V.ResultValidationError, match="install dicom3tools"):
        V.validate_dicom(results[0])


def test_write_result_is_atomic(results, tmp_path):
    ds = pydicom.dcmread(results[1])
    target = tmp_path / "out" / "sr.dcm"
    V.write_result(ds, target)
    first = target.read_bytes()
    assert pydicom.dcmread(target).SOPInstanceUID == ds.SOPInstanceUID

    class Exploding(pydicom.Dataset):
        def save_as(self, fh, **kwargs):  # writes half, then fails like a full disk would
            fh.write(b"\0" * 100)
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        V.write_result(Exploding(), target)
    assert target.read_bytes() == first, "a failed write must leave the previous file intact"
    assert os.listdir(target.parent) == ["sr.dcm"], "no temporary file may be left behind"
