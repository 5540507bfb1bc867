"""The SEG and SR of a fixed case hold exactly the elements and values of a stored reference.

Why: changes that make encoding faster (issue 21) must not change what is sent. The reference
(tests/fixtures/results_reference.txt.gz) is every element of both objects, one line each, as
written to a file and read back; only what is generated fresh on every build is masked: UIDs
not fixed by the case become "UID#n" in order of first appearance (so which element repeats
which UID is still compared), dates and times "<time>", the node's release "<version>".

Rewrite the reference only for an intended change of content, with the code that makes it:
    .venv/bin/python -m tests.conformance.test_results_reference --write
"""
from __future__ import annotations

import gzip
import hashlib
import io
import sys
from pathlib import Path

import highdicom as hd
import pydicom
import pytest

from dicom_node.results import sr as sr_module
from dicom_node.results.seg import build_seg
from dicom_node.results.sr import build_sr
from tests.helpers.env import require_shared
from tests.helpers.results_cases import make_case

REFERENCE = Path(__file__).resolve().parents[1] / "fixtures" / "results_reference.txt.gz"
FIXED_UIDS = {"seg_series": "1.2.826.0.1.3680043.8.498.21001", "seg_sop": "1.2.826.0.1.3680043.8.498.21002",
              "sr_series": "1.2.826.0.1.3680043.8.498.21003", "sr_sop": "1.2.826.0.1.3680043.8.498.21004",
              "old_sr_series": "1.2.826.0.1.3680043.8.498.21005", "old_sr_sop": "1.2.826.0.1.3680043.8.498.21006"}
WELL_KNOWN_UID = "1.2.840.10008."  # SOP classes, transfer syntaxes, DICOM coding schemes: never masked
MASKED_KEYWORDS = {"SoftwareVersions": "<version>"}  # the node's release, in the SEG


def canonical_lines(ds: pydicom.Dataset) -> list[str]:
    """Every element of ``ds`` (the transfer syntax of its file meta, then the data set, nested
    sequences item by item) as 'path VR value', with fresh UIDs, dates and times masked."""
    uids: dict[str, str] = {}

    def uid(value: str) -> str:
        if value.startswith(WELL_KNOWN_UID) or value in FIXED_UIDS.values():
            return value
        return uids.setdefault(value, f"UID#{len(uids) + 1}")

    def text(elem: pydicom.DataElement) -> str:
        if elem.keyword in MASKED_KEYWORDS:
            return MASKED_KEYWORDS[elem.keyword]
        if elem.VR in ("DA", "TM", "DT"):
            return "<time>"
        if elem.VR == "UI":
            values = elem.value if isinstance(elem.value, list) else [elem.value]
            return "\\".join(uid(str(v)) for v in values)
        if isinstance(elem.value, bytes):
            return f"sha256:{hashlib.sha256(elem.value).hexdigest()}"
        return repr(elem.value)

    lines = [f"(0002,0010) UI {ds.file_meta.TransferSyntaxUID}"]

    def walk(node: pydicom.Dataset, prefix: str) -> None:
        for elem in node:
            path = f"{prefix}{elem.tag}"
            if elem.VR == "SQ":
                lines.append(f"{path} SQ {len(elem.value)} item(s)")
                for n, item in enumerate(elem.value):
                    walk(item, f"{path}[{n}].")
            else:
                lines.append(f"{path} {elem.VR} {text(elem)}")

    walk(ds, "")
    return lines


def _as_sent(ds: pydicom.Dataset) -> pydicom.Dataset:
    """The object as a receiver sees it: written as a Part-10 file, read back."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buf.getvalue()))


def build_reference_case(work: Path) -> list[str]:
    """The sagittal two-lesion case's SEG and SR (superseding an earlier SR), as canonical lines."""
    case = make_case(require_shared("lesion-example").parent, work / "src", "sagittal")
    seg = build_seg(case.source, case.frames, case.analysis, series_uid=FIXED_UIDS["seg_series"],
                    sop_instance_uid=FIXED_UIDS["seg_sop"])
    sr = build_sr(case.source, case.analysis, seg, frames=case.frames, series_uid=FIXED_UIDS["sr_series"],
                  sop_instance_uid=FIXED_UIDS["sr_sop"],
                  previous_sr={"series_uid": FIXED_UIDS["old_sr_series"], "sop_instance_uid": FIXED_UIDS["old_sr_sop"]})
    return (["# SEG"] + canonical_lines(_as_sent(seg)) + ["# SR"] + canonical_lines(_as_sent(sr)))


def test_seg_and_sr_equal_the_stored_reference(tmp_path):
    lines = build_reference_case(tmp_path)
    if not REFERENCE.exists():
        pytest.fail(f"{REFERENCE} missing: write it with the code that should make it (module doc)")
    expected = gzip.decompress(REFERENCE.read_bytes()).decode().splitlines()
    first_diff = next((i for i, (a, b) in enumerate(zip(lines, expected)) if a != b), None)
    assert first_diff is None and len(lines) == len(expected), (
        f"{len(lines)} lines, reference {len(expected)}; first difference at line {first_diff}: "
        f"{lines[first_diff] if first_diff is not None else ''!r} != "
        f"{expected[first_diff] if first_diff is not None else ''!r}")



def _constructor_document(report, evidence, **header):
    """How build_sr made the document before issue 21: highdicom's constructor, given the whole report."""
    return hd.sr.Comprehensive3DSR(evidence=evidence, content=report, **header)


def test_sr_document_equals_highdicoms_constructor(tmp_path, monkeypatch):
    """The same SR, element for element, as highdicom's constructor with the whole content makes it."""
    lines = build_reference_case(tmp_path / "new")
    monkeypatch.setattr(sr_module, "_document", _constructor_document)
    assert build_reference_case(tmp_path / "old") == lines


def _references(items: pydicom.Sequence) -> set[str]:
    """SOP Instance UIDs of every IMAGE and COMPOSITE content item below ``items``."""
    found: set[str] = set()
    for item in items:
        if item.ValueType in ("IMAGE", "COMPOSITE"):
            found.add(str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID))
        found |= _references(item.get("ContentSequence", []))
    return found


def test_every_sr_reference_is_evidence(tmp_path):
    """What highdicom's constructor checked, and _document leaves to construction: every instance
    the content references is listed in the Current Requested Procedure Evidence."""
    case = make_case(require_shared("lesion-example").parent, tmp_path / "src", "oblique")
    seg = build_seg(case.source, case.frames, case.analysis, series_uid=FIXED_UIDS["seg_series"],
                    sop_instance_uid=FIXED_UIDS["seg_sop"])
    sr = _as_sent(build_sr(case.source, case.analysis, seg, frames=case.frames,
                           series_uid=FIXED_UIDS["sr_series"], sop_instance_uid=FIXED_UIDS["sr_sop"]))
    evidence = {str(ref.ReferencedSOPInstanceUID) for study in sr.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence for ref in series.ReferencedSOPSequence}
    referenced = _references(sr.ContentSequence)
    assert FIXED_UIDS["seg_sop"] in referenced and len(referenced) > 2
    assert referenced <= evidence

if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit(__doc__)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        text = "\n".join(build_reference_case(Path(tmp))) + "\n"
    REFERENCE.write_bytes(gzip.compress(text.encode(), mtime=0))
    print(f"{REFERENCE}: {text.count(chr(10))} lines")
