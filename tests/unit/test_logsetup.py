"""Structured logs: JSON lines with job/series correlation ids, patient data redacted by default."""
from __future__ import annotations

import io
import json
import logging

import pytest
from pydicom.dataset import Dataset

from dicom_node.logsetup import log_context, redact, setup_logging


@pytest.fixture()
def restore_root():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def _lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_correlation_ids_and_no_patient_name(restore_root) -> None:
    stream = io.StringIO()
    setup_logging("INFO", "json", allow_phi=False, stream=stream)
    log = logging.getLogger("dicom_node.worker")
    ds = Dataset()
    ds.PatientName, ds.PatientID, ds.SeriesDescription = "DOE^JANE", "PID-4711", "T2 SAG"
    with log_context(job_id=7, series_uid="1.2.3.4"):
        log.info("job %d: results ready", 7)
        try:
            raise ValueError(f"bad header: {ds}")  # a dataset repr inside a traceback
        except ValueError:
            log.exception("job 7 crashed")
    log.warning("outside any job PatientName=DOE^JANE")
    first, crash, outside = _lines(stream)
    assert first["msg"] == "job 7: results ready" and first["job_id"] == 7 and first["series_uid"] == "1.2.3.4"
    assert first["level"] == "INFO" and first["logger"] == "dicom_node.worker" and first["ts"].endswith("Z")
    assert crash["job_id"] == 7 and "ValueError" in crash["exc"] and "T2 SAG" in crash["exc"]
    assert "job_id" not in outside
    text = stream.getvalue()
    assert "DOE" not in text and "JANE" not in text and "PID-4711" not in text and "[redacted]" in text


def test_allow_phi_keeps_the_text_and_text_format_shows_ids(restore_root) -> None:
    stream = io.StringIO()
    setup_logging("INFO", "text", allow_phi=True, stream=stream)
    with log_context(job_id=3, series_uid="1.2.9"):
        logging.getLogger("dicom_node.x").info("PatientName=DOE^JANE")
    line = stream.getvalue().strip()
    assert "DOE^JANE" in line and "[job_id=3 series_uid=1.2.9]" in line


def test_redact_keeps_uids_and_descriptions() -> None:
    assert redact("series 1.2.840.1 'T2 SAG SPINE' complete") == "series 1.2.840.1 'T2 SAG SPINE' complete"
    assert redact("(0010,0010) Patient's Name   PN: 'DOE^JOHN'").endswith("PN: [redacted]")
    assert redact('{"PatientBirthDate": "19700101"}') == '{"PatientBirthDate": [redacted]}'
