"""TID 1500 SR from real series: conformance, numbers = measurements, links to the SEG, structure
as in the real dcmqi / highdicom examples, explicit "no lesion", predecessor reference."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom.uid import generate_uid

from dicom_node.results import codes as C
from dicom_node.results.readback import SRGroup, sr_measurements
from dicom_node.results.seg import build_seg
from dicom_node.results.sr import PreviousSR, build_sr
from dicom_node.results.validate import check_result, validate_dicom, write_result
from inference.measurements import Measurements
from tests.helpers.env import require_shared, require_tool
from tests.helpers.results_cases import Case, make_case, private_codes

CODES_MD = Path(__file__).resolve().parents[2] / "dicom_node" / "results" / "CODES.md"


@pytest.fixture(scope="module", params=["sagittal", "axial", "oblique"])
def written(request, tmp_path_factory) -> tuple[Case, pydicom.Dataset, pydicom.Dataset, Path]:
    shared = require_shared("lesion-example")
    tmp = tmp_path_factory.mktemp(f"sr-{request.param}")
    case = make_case(shared.parent, tmp / "src", request.param)
    seg = build_seg(case.source, case.frames, case.analysis, series_uid=generate_uid(),
                    sop_instance_uid=generate_uid())
    sr = build_sr(case.source, case.analysis, seg, frames=case.frames,
                  series_uid=generate_uid(), sop_instance_uid=generate_uid())
    write_result(seg, tmp / "seg.dcm")
    return case, seg, sr, write_result(sr, tmp / "sr.dcm")


def _groups(path: Path) -> dict[str, SRGroup]:
    return {g.tracking_id: g for g in sr_measurements(path)}


def _num(group: SRGroup, spec: C.MetricCode) -> float | None:
    return group.numbers.get(C.metric_key(spec.name, spec.method, spec.derivation))


def test_sr_conformant_and_readable(written):
    require_tool("dciodvfy")
    _, _, _, path = written
    report = validate_dicom(path)
    assert report.errors == []
    assert all("99SPINE" in w for w in report.warnings), report.warnings  # only the private-scheme warning
    check_result(path)
    sr = hd.sr.srread(str(path))
    assert isinstance(sr, hd.sr.Comprehensive3DSR)
    vol_groups = sr.content.get_volumetric_roi_measurement_groups()
    assert len(vol_groups) == 3  # two lesions + cord
    lesion_groups = sr.content.get_volumetric_roi_measurement_groups(finding_type=C.LESION)
    assert sorted(g.tracking_identifier for g in lesion_groups) == ["Lesion 1", "Lesion 2"]


def test_sr_numbers_equal_measurements(written):
    case, seg, _, path = written
    meas = case.analysis.measurements
    groups = _groups(path)
    assert len(meas["lesions"]) == 2
    for lesion in meas["lesions"]:
        g = groups[f"Lesion {lesion['label']}"]
        written_keys = 0
        for spec in C.LESION_METRICS:
            if lesion[spec.key] is None:
                assert _num(g, spec) is None
                continue
            assert _num(g, spec) == lesion[spec.key], spec.key  # exact: FloatingPointValue
            written_keys += 1
        assert len(g.numbers) == written_keys  # nothing else, nothing twice
        assert g.referenced_segment == lesion["label"] + 1
        assert g.referenced_seg_uid == seg.SOPInstanceUID
        assert g.finding == ("52988006", "SCT")
    cord = groups["Spinal cord"]
    assert cord.referenced_segment == 1 and cord.finding == ("2748008", "SCT")
    for spec in C.CORD_METRICS:
        assert _num(cord, spec) == meas[spec.key], spec.key
    totals = groups["All intramedullary lesions"]
    for spec in C.TOTAL_METRICS:
        assert _num(totals, spec) == meas[spec.key], spec.key
    assert totals.qualitative["52988006^SCT"] == ("52101004", "SCT")  # Lesion: Present


def test_sr_tracking_uids_match_seg_segments(written):
    _, seg, _, path = written
    seg_uids = {int(s.SegmentNumber): str(s.TrackingUID) for s in seg.SegmentSequence}
    for g in sr_measurements(path):
        if g.referenced_segment is not None:
            assert g.tracking_uid == seg_uids[g.referenced_segment]


def test_sr_identity_observer_and_evidence(written):
    case, seg, sr, path = written
    src = case.source[0]
    for key in ("PatientID", "PatientName", "StudyInstanceUID"):
        assert sr[key].value == src[key].value, key
    assert sr.SeriesInstanceUID not in (src.SeriesInstanceUID, seg.SeriesInstanceUID)
    assert sr.SeriesNumber == 9902 and sr.SeriesDescription == "SC+lesion SR (spinecord-t2 v0.1.0)"
    assert sr.CompletionFlag == "COMPLETE" and sr.VerificationFlag == "UNVERIFIED"
    declared = [item.CodingSchemeDesignator for item in sr.CodingSchemeIdentificationSequence]
    assert "99SPINE" in declared
    evidence = {
        str(inst.ReferencedSOPInstanceUID)
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for inst in series.ReferencedSOPSequence
    }
    assert str(seg.SOPInstanceUID) in evidence
    assert {str(ds.SOPInstanceUID) for ds in case.source} <= evidence

    dump = subprocess.run([require_tool("dsrdump"), str(path)], capture_output=True, text=True, check=True).stdout
    assert 'Observer Type")=(121007,DCM,"Device")' in dump
    assert 'Device Observer Name")="spine-dicom-node"' in dump
    assert 'Device Observer Model Name")="spinecord-t2 0.1.0"' in dump
    assert "Device Observer UID" in dump


def test_dsrdump_shows_the_measurements(written):
    case, _, _, path = written
    dump = subprocess.run([require_tool("dsrdump"), str(path)], capture_output=True, text=True, check=True).stdout
    lesion = case.analysis.measurements["lesions"][0]
    for name in ("Volume", "Length", "Width", "Maximum axial equivalent diameter", "Maximum axial damage ratio",
                 "Dorsal tissue bridge width", "Ventral tissue bridge ratio", "Number of lesions"):
        assert f'"{name}' in dump, name
    shown = [float(v) for v in re.findall(r'NUM:\(,,"Volume"\)="([0-9.eE+-]+)"', dump)]
    assert any(abs(v - lesion["volume_mm3"]) <= 1e-9 * lesion["volume_mm3"] for v in shown)
    assert 'IMAGE:(,,"Referenced Segment")=(SG image,,2)' in dump
    assert 'IMAGE:(,,"Referenced Segment")=(SG image,,3)' in dump
    assert 'CODE:(,,"Lesion")=(52101004,SCT,"Present")' in dump


def _tree(ds: pydicom.Dataset, depth: int = 3) -> set[tuple]:
    """(depth, relationship, value type, concept code) of the TID 1500 skeleton, DCM codes only
    (SRT/SCT codes changed between the example's and our editions; DCM template codes did not)."""
    out: set[tuple] = set()

    def walk(seq, d):
        for item in seq:
            if "ConceptNameCodeSequence" in item:
                name = item.ConceptNameCodeSequence[0]
                if name.CodingSchemeDesignator == "DCM":
                    out.add((d, item.RelationshipType, item.ValueType, name.CodeValue))
            if "ContentSequence" in item and d < depth:
                walk(item.ContentSequence, d + 1)

    walk(ds.ContentSequence, 0)
    return out


def test_structure_matches_real_tid1500_examples(written):
    _, _, sr, _ = written
    dcmqi = pydicom.dcmread(require_shared("dicom/dcmqi/sr.dcm"))
    hdex = pydicom.dcmread(require_shared("dicom/highdicom/sr_document.dcm"))
    for ref in (dcmqi, hdex):
        assert sr.ConceptNameCodeSequence[0].CodeValue == ref.ConceptNameCodeSequence[0].CodeValue == "126000"
        assert sr.ContentTemplateSequence[0].TemplateIdentifier == ref.ContentTemplateSequence[0].TemplateIdentifier
    ours = _tree(sr)
    skeleton = {
        (0, "CONTAINS", "CONTAINER", "126010"),  # Imaging Measurements
        (1, "CONTAINS", "CONTAINER", "125007"),  # Measurement Group
        (2, "HAS OBS CONTEXT", "TEXT", "112039"),  # Tracking Identifier
        (2, "HAS OBS CONTEXT", "UIDREF", "112040"),  # Tracking Unique Identifier
        (2, "CONTAINS", "CODE", "121071"),  # Finding
        (0, "HAS CONCEPT MOD", "CODE", "121049"),  # Language
        (0, "HAS CONCEPT MOD", "CODE", "121058"),  # Procedure reported
        (0, "HAS OBS CONTEXT", "CODE", "121005"),  # Observer Type
        (0, "HAS OBS CONTEXT", "UIDREF", "121012"),  # Device Observer UID
    }
    assert skeleton <= ours
    assert skeleton - {(0, "HAS OBS CONTEXT", "UIDREF", "121012")} <= _tree(dcmqi)
    assert skeleton <= _tree(hdex)
    seg_link = {(2, "CONTAINS", "IMAGE", "121191"), (2, "CONTAINS", "UIDREF", "121232")}
    assert seg_link <= ours and seg_link <= _tree(dcmqi)  # Referenced Segment + source series, as dcmqi
    assert (0, "CONTAINS", "CONTAINER", "111028") in ours & _tree(dcmqi)  # Image Library


def test_every_private_code_is_documented(written):
    _, _, sr, _ = written
    used = private_codes(sr)
    assert used, "expected private codes in a report with lesions"
    documented = set(re.findall(r"^\| (SPN\d{3}) \|", CODES_MD.read_text(), flags=re.M))
    assert used <= documented, used - documented


@pytest.fixture(scope="module")
def no_lesion(tmp_path_factory) -> tuple[Case, pydicom.Dataset]:
    shared = require_shared("lesion-example")
    tmp = tmp_path_factory.mktemp("sr-nolesion")
    case = make_case(shared.parent, tmp / "src", "sagittal", lesions=0)
    seg = build_seg(case.source, case.frames, case.analysis, series_uid=generate_uid(),
                    sop_instance_uid=generate_uid())
    return case, seg


def test_no_lesion_is_stated_explicitly(no_lesion, tmp_path):
    require_tool("dciodvfy")
    case, seg = no_lesion
    sr = build_sr(case.source, case.analysis, seg, frames=case.frames,
                  series_uid=generate_uid(), sop_instance_uid=generate_uid(),
                  image_library=False)  # the library is tested above; skipping it keeps this fast
    path = write_result(sr, tmp_path / "sr.dcm")
    assert validate_dicom(path).errors == []
    groups = _groups(path)
    assert sorted(groups) == ["All intramedullary lesions", "Spinal cord"]
    totals = groups["All intramedullary lesions"]
    assert totals.qualitative["52988006^SCT"] == ("272519000", "SCT")  # Lesion: Absent
    assert _num(totals, C.TOTAL_METRICS[-1]) == 0  # Number of lesions = 0
    dump = subprocess.run([require_tool("dsrdump"), str(path)], capture_output=True, text=True, check=True).stdout
    assert 'CODE:(,,"Lesion")=(272519000,SCT,"Absent")' in dump
    assert re.search(r'NUM:\(,,"Number of lesions"\)="0(\.0)?"', dump)


def test_undefined_values_are_left_out(written, tmp_path):
    case, seg, _, _ = written
    meas = dict(case.analysis.measurements)
    meas["lesions"] = [dict(les) for les in meas["lesions"]]
    meas["lesions"][0]["midsagittal_length_mm"] = None
    meas["cord_csa_mm2_mean"] = float("nan")
    analysis = type(case.analysis)(**{**case.analysis.__dict__, "metrics": Measurements.from_json(meas)})
    sr = build_sr(case.source, analysis, seg, frames=case.frames,
                  series_uid=generate_uid(), sop_instance_uid=generate_uid(),
                  image_library=False)
    groups = _groups(write_result(sr, tmp_path / "sr.dcm"))
    mid = next(s for s in C.LESION_METRICS if s.key == "midsagittal_length_mm")
    assert _num(groups["Lesion 1"], mid) is None and _num(groups["Lesion 2"], mid) is not None
    assert _num(groups["Spinal cord"], C.CORD_METRICS[0]) is None


@pytest.mark.parametrize("form", ["dataclass", "mapping", "dataset"])
def test_superseding_sr_references_its_predecessor(no_lesion, tmp_path, form):
    require_tool("dciodvfy")
    case, seg = no_lesion
    first = build_sr(case.source, case.analysis, seg, frames=case.frames,
                     series_uid=generate_uid(), sop_instance_uid=generate_uid(),
                     image_library=False)
    prev = {
        "dataclass": PreviousSR(series_uid=first.SeriesInstanceUID, sop_instance_uid=first.SOPInstanceUID),
        "mapping": {"series_uid": first.SeriesInstanceUID, "sop_instance_uid": first.SOPInstanceUID},
        "dataset": first,
    }[form]
    second = build_sr(case.source, case.analysis, seg, frames=case.frames,
                      series_uid=generate_uid(), sop_instance_uid=generate_uid(),
                      previous_sr=prev, image_library=False)
    path = write_result(second, tmp_path / "sr2.dcm")
    assert validate_dicom(path).errors == []
    pred = second.PredecessorDocumentsSequence[0]
    assert pred.StudyInstanceUID == case.source[0].StudyInstanceUID
    assert pred.ReferencedSeriesSequence[0].SeriesInstanceUID == first.SeriesInstanceUID
    ref = pred.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert ref.ReferencedSOPClassUID == first.SOPClassUID
    # same source series -> same tracking UIDs: the new report's findings relate to the old ones
    assert [g.tracking_uid for g in sr_measurements(first)] == [g.tracking_uid for g in sr_measurements(second)]
    assert "PredecessorDocumentsSequence" not in first


def test_sr_refuses_a_seg_of_another_analysis(no_lesion, written):
    from dicom_node.results.seg import ResultBuildError

    case, _, _, _ = written
    _, seg_without_lesions = no_lesion
    with pytest.raises(ResultBuildError, match="do not match the analysis|another study"):
        build_sr(case.source, case.analysis, seg_without_lesions, frames=case.frames, series_uid=generate_uid(),
                 sop_instance_uid=generate_uid(), image_library=False)
