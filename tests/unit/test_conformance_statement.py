"""docs/CONFORMANCE.md states what the code negotiates: its SOP class and transfer syntax tables
are compared with the listener's and the dispatcher's, and its numbers with the config defaults.

Why a test: a PACS administrator configures the PACS from this document before connecting
anything; a table that drifted from the code would be a silent misconfiguration."""
from __future__ import annotations

import re
from pathlib import Path

from pynetdicom import ALL_TRANSFER_SYNTAXES, sop_class

from dicom_node.config import Config
from dicom_node.results.validate import COMPREHENSIVE_3D_SR_STORAGE, SECONDARY_CAPTURE_STORAGE, SEG_STORAGE
from dicom_node.security import storage_class_uids

DOC = Path(__file__).resolve().parents[2] / "docs" / "CONFORMANCE.md"
UID = re.compile(r"\b1\.2\.840\.10008(?:\.\d+)+\b")


def _section(heading: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    start = text.index(heading)
    level = heading.split(" ")[0]
    end = min((i for i in (text.find("\n" + h + " ", start + 1) for h in ("#" * n for n in range(2, len(level) + 1)))
               if i != -1), default=len(text))
    return text[start:end]


def _uids(heading: str, column: int = 1) -> set[str]:
    rows = [line.split("|")[1:-1] for line in _section(heading).splitlines() if line.startswith("| ")]
    return {m.group(0) for cells in rows[1:] if len(cells) > column for m in UID.finditer(cells[column])}


def test_accepted_sop_classes_are_the_listeners() -> None:
    expected = {str(sop_class.Verification), *(storage_class_uids(Config().security.sop_classes) or [])}
    assert _uids("#### 2.3.1") == expected


def test_accepted_transfer_syntaxes_are_the_listeners() -> None:
    assert _uids("#### 2.3.2") == {str(ts) for ts in ALL_TRANSFER_SYNTAXES}


def test_sent_sop_classes_are_what_the_node_creates() -> None:
    assert _uids("### 2.4") == {SEG_STORAGE, COMPREHENSIVE_3D_SR_STORAGE, SECONDARY_CAPTURE_STORAGE}
    # results are written Explicit VR Little Endian; the SEG of `viewer: ohif` destinations RLE Lossless
    # (dicom_node/results/seg.py, byte_frames)
    assert _uids("### 2.4", column=2) == {"1.2.840.10008.1.2.1", "1.2.840.10008.1.2.5"}


def test_the_numbers_in_the_text_are_the_defaults() -> None:
    cfg, text = Config(), DOC.read_text(encoding="utf-8")
    for phrase in (f"(default `{cfg.node.ae_title}`)", f"`node.max_associations` (default {cfg.node.max_associations})",
                   f"`node.max_pdu` (default {cfg.node.max_pdu})",
                   f"`dispatch.max_attempts` ({cfg.dispatch.max_attempts})",
                   f"`dispatch.backoff_max_s` ({cfg.dispatch.backoff_max_s:g} s)"):
        assert phrase in text, phrase
