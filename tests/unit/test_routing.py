"""Routing rules: grammar validation, operator semantics, and the DEFAULT rules on realistic headers."""
from __future__ import annotations

import math

import pydicom
import pytest
from pydicom.dataset import Dataset

from dicom_node.cli import main
from dicom_node.config import ConfigError, load_config
from dicom_node.routing import parse_rules, route
from inference.volume import orientation_label
from tests.helpers.env import require_shared

SAG = [0, 1, 0, 0, 0, -1]
AX = [1, 0, 0, 0, 1, 0]
COR = [1, 0, 0, 0, 0, -1]


def header(**kw: object) -> Dataset:
    """A realistic classic MR header; keywords override or (value None) remove attributes."""
    ds = Dataset()
    ds.Modality = "MR"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NORM", "DIS2D"]
    ds.ScanningSequence = ["SE"]
    ds.SequenceVariant = ["SK", "SP", "OSP"]
    ds.MagneticFieldStrength = 3
    ds.Manufacturer = "SIEMENS"
    for key, value in kw.items():
        if value is None:
            if key in ds:
                delattr(ds, key)
        else:
            setattr(ds, key, value)
    return ds


@pytest.fixture(scope="module")
def default_rules():
    """Every default rule, as on a node that finds SCT's model files (the SCT pipelines are on)."""
    return parse_rules(load_config().routing)


@pytest.fixture
def rules_without_sct(monkeypatch):
    """The default rules in force where SCT's files are not found: the ms-* rules are skipped."""
    monkeypatch.delenv("SCT_DIR", raising=False)
    cfg = load_config()
    assert set(cfg.pipelines_off()) == {"ms_axial_t2", "ms_axial_t2s"}
    return cfg.routing_rules()


def rule_name(rules, ds, ae: str = "MODALITY") -> str | None:
    decision = route(rules, ds, ae)
    return decision.rule.name if decision.rule else None


CASES = {
    "t2 sag spine": (dict(SeriesDescription="t2_tse_sag_384", ProtocolName="t2_tse_sag_384", BodyPartExamined="CSPINE",
                          ImageOrientationPatient=SAG, EchoTime=93, RepetitionTime=3500), "spine-t2"),
    "t2 axial cervical": (dict(SeriesDescription="T2 TSE AX C-SPINE", ProtocolName="t2_tse_tra_C-spine",
                               BodyPartExamined="CSPINE", ImageOrientationPatient=AX, EchoTime=102,
                               RepetitionTime=4200), "ms-axial-t2"),
    "medic axial": (dict(SeriesDescription="MEDIC ax C-spine", ProtocolName="medic_tra", BodyPartExamined="CSPINE",
                         ImageOrientationPatient=AX, ScanningSequence=["GR"], EchoTime=17, RepetitionTime=650),
                    "ms-axial-t2star"),
    "t2star axial": (dict(SeriesDescription="T2* TRA cervical cord", ImageOrientationPatient=AX,
                          ScanningSequence=["GR"], EchoTime=20, RepetitionTime=700), "ms-axial-t2star"),
    "merge axial": (dict(SeriesDescription="AX MERGE C-SPINE", BodyPartExamined="CSPINE", ImageOrientationPatient=AX,
                         Manufacturer="GE MEDICAL SYSTEMS", ScanningSequence=["GR"], EchoTime=14,
                         RepetitionTime=600), "ms-axial-t2star"),
    "medic sagittal": (dict(SeriesDescription="MEDIC sag C-spine", BodyPartExamined="CSPINE",
                            ImageOrientationPatient=SAG, ScanningSequence=["GR"], EchoTime=17, RepetitionTime=650),
                       "store-only"),
    "t2 sag thoracic levels": (dict(SeriesDescription="T2 SAG T1-T12", BodyPartExamined="TSPINE",
                                    ImageOrientationPatient=SAG, EchoTime=100, RepetitionTime=3000), "spine-t2"),
    "t2 by physics only": (dict(SeriesDescription="sag spine", ImageOrientationPatient=SAG,
                                ScanningSequence=["SE"], EchoTime=110, RepetitionTime=3200), "spine-t2"),
    "stir sag": (dict(SeriesDescription="STIR SAG C-SPINE", ProtocolName="t2_tirm_sag", BodyPartExamined="CSPINE",
                      ImageOrientationPatient=SAG, ScanningSequence=["IR", "SE"], EchoTime=60,
                      RepetitionTime=4000, InversionTime=220), "store-only"),
    "t1 sag": (dict(SeriesDescription="T1 SAG C-SPINE", ProtocolName="t1_tse_sag", BodyPartExamined="CSPINE",
                    ImageOrientationPatient=SAG, EchoTime=9.8, RepetitionTime=600), "store-only"),
    "t1 sag thoracic": (dict(SeriesDescription="T1 SAG T2-T12", BodyPartExamined="TSPINE",
                             ImageOrientationPatient=SAG, EchoTime=9.8, RepetitionTime=600), "store-only"),
    "localizer": (dict(SeriesDescription="localizer", ProtocolName="AAHead_Scout", BodyPartExamined="SPINE",
                       ImageOrientationPatient=SAG, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"],
                       ScanningSequence=["GR"], EchoTime=3.2, RepetitionTime=8.6), "store-only"),
    "t2 localizer": (dict(SeriesDescription="t2_loc_sag spine", BodyPartExamined="SPINE", ImageOrientationPatient=SAG,
                          ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"], EchoTime=80, RepetitionTime=2000),
                     "store-only"),
    "brain t2": (dict(SeriesDescription="t2_tse_tra", ProtocolName="t2_tse_tra", BodyPartExamined="BRAIN",
                      ImageOrientationPatient=AX, EchoTime=96, RepetitionTime=5000), "store-only"),
    "ct spine": (dict(Modality="CT", SOPClassUID="1.2.840.10008.5.1.4.1.1.2", SeriesDescription="C-SPINE T2 bone",
                      BodyPartExamined="CSPINE", ImageOrientationPatient=SAG, ScanningSequence=None,
                      ImageType=["ORIGINAL", "PRIMARY", "AXIAL"]), "store-only"),
    "coronal t2 spine": (dict(SeriesDescription="t2_tse_cor spine", BodyPartExamined="SPINE",
                              ImageOrientationPatient=COR, EchoTime=90, RepetitionTime=3000), "store-only"),
    "no orientation": (dict(SeriesDescription="t2_tse_sag spine", BodyPartExamined="SPINE", EchoTime=90,
                            RepetitionTime=3000), "store-only"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_default_rules_on_realistic_headers(default_rules, case: str) -> None:
    attrs, expected = CASES[case]
    decision = route(default_rules, header(**attrs), "MODALITY")
    assert decision.matched and decision.rule is not None
    assert decision.rule.name == expected, "\n".join(decision.explanation)
    assert decision.explanation[0].startswith("rule 'ms-axial-t2star'")  # rules are tried in order


WITHOUT_SCT = {"t2 axial cervical": "spine-t2", "medic axial": "store-only", "t2star axial": "spine-t2",
               "merge axial": "store-only", "t2 sag spine": "spine-t2", "stir sag": "store-only"}


@pytest.mark.parametrize("case", list(WITHOUT_SCT))
def test_without_sct_files_axial_series_fall_through_to_our_model(rules_without_sct, case: str) -> None:
    """A T2*-named axial series then goes to our model like any T2 (good on axial T2*); MEDIC and MERGE,
    which do not say T2, are stored only, as before the SCT pipelines existed."""
    attrs, _ = CASES[case]
    decision = route(rules_without_sct, header(**attrs), "MODALITY")
    assert decision.rule is not None and decision.rule.name == WITHOUT_SCT[case], "\n".join(decision.explanation)


def test_default_rules_real_siemens_brain_t1_is_not_processed(default_rules) -> None:
    folder = require_shared("dicom/dcm_qa_decubitus_HFS_t1_sag")
    first = sorted(folder.glob("*.dcm"))[0]
    decision = route(default_rules, pydicom.dcmread(first, stop_before_pixels=True), "SIEMENS")
    assert decision.rule is not None and decision.rule.name == "store-only"
    assert decision.rule.pipeline is None
    text = "\n".join(decision.explanation)
    assert "BodyPartExamined matches" in text and "('BRAIN')" in text
    assert "orientation in ['sagittal', 'axial']: yes ('sagittal')" in text


def test_orientation_label() -> None:
    assert orientation_label(SAG) == "sagittal"
    assert orientation_label(AX) == "axial"
    assert orientation_label(COR) == "coronal"
    c, s = math.cos(math.radians(20)), math.sin(math.radians(20))
    assert orientation_label([1, 0, 0, 0, c, s]) == "axial"  # tilted axial follows the cord
    c, s = math.cos(math.radians(50)), math.sin(math.radians(50))
    assert orientation_label([1, 0, 0, 0, c, s]) == "oblique"
    with pytest.raises(ValueError):
        orientation_label([1, 0, 0, 1, 0, 0])


def test_orientation_of_enhanced_mr_from_functional_groups() -> None:
    ds = header(SOPClassUID="1.2.840.10008.5.1.4.1.1.4.1", NumberOfFrames=20)
    plane = Dataset()
    plane.ImageOrientationPatient = SAG
    group = Dataset()
    group.PlaneOrientationSequence = [plane]
    ds.SharedFunctionalGroupsSequence = [group]
    rules = parse_rules([{"name": "o", "when": {"attribute": "orientation", "equals": "sagittal"}}])
    assert route(rules, ds, "X").matched


def one(cond: dict) -> list:
    return parse_rules([{"name": "r", "when": cond, "pipeline": "p", "destinations": ["d"]}])


@pytest.mark.parametrize("cond,expected", [
    ({"attribute": "ImageType", "contains": "norm"}, True),  # any item of a multi-value
    ({"attribute": "ImageType", "equals": "PRIMARY"}, True),
    ({"attribute": "ImageType", "equals": "primary"}, False),  # equals is exact
    ({"attribute": "ImageType", "iequals": "primary"}, True),
    ({"attribute": "ScanningSequence", "in": ["gr", "se"]}, True),
    ({"attribute": "SequenceVariant", "in": ["MP"]}, False),
    ({"attribute": "EchoTime", "equals": 93}, True),  # numeric equality on a DS value
    ({"attribute": "EchoTime", "ge": 93}, True),
    ({"attribute": "EchoTime", "gt": 93}, False),
    ({"attribute": "EchoTime", "between": [80, 120]}, True),
    ({"attribute": "InversionTime", "lt": 1e9}, False),  # numeric op on a missing attribute: false
    ({"attribute": "InversionTime", "exists": False}, True),
    ({"attribute": "SeriesDescription", "matches": "^T2_TSE"}, True),  # case-insensitive search
    ({"attribute": "calling_ae", "equals": "MRI_3T"}, True),
    ({"not": {"attribute": "calling_ae", "in": ["OTHER"]}}, True),
    ({"any": [{"attribute": "Modality", "equals": "CT"}, {"attribute": "orientation", "equals": "sagittal"}]}, True),
    ({"all": [{"attribute": "Modality", "equals": "CT"}, {"attribute": "orientation", "equals": "sagittal"}]}, False),
    ({}, True),
])
def test_operators(cond: dict, expected: bool) -> None:
    ds = header(SeriesDescription="t2_tse_sag", ImageOrientationPatient=SAG, EchoTime="93.0", RepetitionTime=3000)
    assert route(one(cond), ds, "MRI_3T").matched is expected


def test_explanation_names_values() -> None:
    ds = header(SeriesDescription="t2_tse_sag", ImageOrientationPatient=SAG)
    decision = route(one({"all": [{"attribute": "EchoTime", "ge": 60},
                                  {"attribute": "orientation", "equals": "sagittal"}]}), ds, "X")
    assert not decision.matched and decision.rule is None
    text = "\n".join(decision.explanation)
    assert "EchoTime ge 60: no (absent)" in text
    assert "orientation equals 'sagittal': yes ('sagittal')" in text
    assert text.endswith("no rule matched")


@pytest.mark.parametrize("raw,message", [
    ([{"name": "a", "when": {"attribute": "EchoTime", "eq": 5}}], "routing[0] ('a').when: unknown operator 'eq'"),
    ([{"name": "a", "when": {"attribute": "EchoTme", "ge": 5}}], "routing[0] ('a').when.attribute: 'EchoTme'"),
    ([{"name": "a", "when": {"attribute": "EchoTime", "ge": "x"}}], "routing[0] ('a').when.ge: expected a number"),
    ([{"name": "a", "when": {"any": [{"attribute": "SeriesDescription", "matches": "("}]}}],
     "routing[0] ('a').when.any[0].matches: '(' is not a valid regular expression"),
    ([{"name": "a", "when": {"attribute": "EchoTime", "between": [5, 1]}}], "routing[0] ('a').when.between"),
    ([{"name": "a", "when": {"attribute": "EchoTime", "ge": 1, "le": 5}}], "exactly one operator"),
    ([{"name": "a", "when": {}}, {"name": "a", "when": {}}], "routing[1] ('a').name: duplicate"),
    ([{"name": "a"}], "routing[0] ('a').when: missing"),
    ([{"name": "a", "when": {}, "pipelines": "x"}], "routing[0] ('a'): unknown key 'pipelines'"),
    ([{"when": {}}], "routing[0].name"),
    ([{"name": "a", "when": {"all": []}}], "routing[0] ('a').when.all: expected a non-empty list"),
    ([{"name": "a", "when": {"not": {"attribute": "Modality"}}}], "routing[0] ('a').when.not: exactly one operator"),
    ([{"name": "a", "when": {}, "destinations": "pacs"}], "routing[0] ('a').destinations"),
])
def test_parse_errors_name_rule_and_key(raw: list, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_rules(raw)
    assert message in str(info.value)


def test_rules_test_cli(tmp_path, capsys) -> None:
    sag = header(SeriesDescription="t2_tse_sag_384", BodyPartExamined="CSPINE", ImageOrientationPatient=SAG,
                 EchoTime=93, RepetitionTime=3500)
    brain = header(SeriesDescription="t2_tse_tra", BodyPartExamined="BRAIN", ImageOrientationPatient=AX)
    for i, ds in enumerate((sag, brain)):
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.StudyInstanceUID = "1.2.3"
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        ds.save_as(tmp_path / f"{i}.dcm", enforce_file_format=True)
    (tmp_path / "notes.txt").write_text("not dicom")
    assert main(["rules", "test", str(tmp_path), "--calling-ae", "MR1"]) == 0
    out = capsys.readouterr().out
    assert "-> rule 'spine-t2': pipeline spinal_cord, destinations pacs" in out
    assert "-> rule 'store-only': stored only (no pipeline)" in out
    assert main(["rules", "test", str(tmp_path / "missing")]) == 2
