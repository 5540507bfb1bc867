"""The OHIF profile's SEG through a real PACS's DICOMweb, frame by frame, as OHIF 3.13 fetches it.

OHIF first reads the whole instance; Orthanc sends it as Explicit VR Little Endian (the DICOMweb
default), and when Rows x Columns x frames is odd (99 x 99 x 87 here) OHIF's dcmjs reader refuses
the padded pixel data and OHIF falls back to WADO-RS /frames/N, one request per frame. Orthanc
answers that with HTTP 400 for bit-packed BINARY frames; the byte frames of `viewer: ohif` must
come back, in either transfer syntax OHIF may accept, equal to our masks on their source images.
"""
from __future__ import annotations

import urllib.request
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels.decoders.rle import _rle_decode_frame
from pydicom.uid import generate_uid

from dicom_node.config import DestinationSettings
from dicom_node.dispatch import c_store_many
from dicom_node.results.seg import build_seg
from dicom_node.results.validate import write_result
from testbed.orthanc import LocalOrthanc
from tests.helpers.env import require_shared, require_tool
from tests.helpers.results_cases import make_case

ANY_SYNTAX = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
DEFAULT_SYNTAX = 'multipart/related; type="application/octet-stream"'


def _single_part(body: bytes, content_type: str) -> tuple[bytes, str]:
    """The one part of a multipart/related answer and its transfer syntax (from the Content-Type)."""
    boundary = next(p.split("=", 1)[1].strip('"') for p in content_type.split(";") if p.strip().startswith("boundary"))
    parts = [p for p in body.split(b"--" + boundary.encode()) if p.strip() not in (b"", b"--")]
    assert len(parts) == 1, f"{len(parts)} parts for one frame"
    head, _, payload = parts[0].partition(b"\r\n\r\n")
    syntax = content_type.split("transfer-syntax=", 1)[1].split(";")[0].strip('"')
    return payload.removesuffix(b"\r\n"), syntax


def _frame(pacs: LocalOrthanc, seg: pydicom.Dataset, number: int, accept: str) -> np.ndarray:
    url = (f"{pacs.dicomweb_url}/studies/{seg.StudyInstanceUID}/series/{seg.SeriesInstanceUID}/instances/"
           f"{seg.SOPInstanceUID}/frames/{number}")
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Accept": accept}), timeout=30) as resp:
        payload, syntax = _single_part(resp.read(), resp.headers["Content-Type"])
    rows, cols = int(seg.Rows), int(seg.Columns)
    if syntax == pydicom.uid.RLELossless:
        payload = bytes(_rle_decode_frame(payload, rows, cols, 1, 8))
    else:
        assert syntax == pydicom.uid.ExplicitVRLittleEndian, syntax
    return np.frombuffer(payload[:rows * cols], np.uint8).reshape(rows, cols)


@pytest.mark.parametrize("accept", [ANY_SYNTAX, DEFAULT_SYNTAX])
def test_ohif_seg_frames_come_back_from_orthanc_equal_to_our_masks(tmp_path: Path, accept: str) -> None:
    require_tool("Orthanc")
    case = make_case(require_shared("lesion-example").parent, tmp_path / "src", "sagittal")
    seg = build_seg(case.source, case.frames, case.analysis, series_uid=generate_uid(),
                    sop_instance_uid=generate_uid(), byte_frames=True)
    path = write_result(seg, tmp_path / "seg-ohif.dcm")
    assert int(seg.Rows) * int(seg.Columns) * int(seg.NumberOfFrames) % 2 == 1  # the case OHIF falls back on
    slice_of = {(f.sop_instance_uid, f.frame_number): k for k, f in enumerate(case.frames)}
    masks = {1: case.analysis.cord_mask > 0}
    masks.update({n + 1: case.analysis.lesion_labels == n for n in (1, 2)})
    with LocalOrthanc(tmp_path / "pacs", dicomweb=True) as pacs:
        dest = DestinationSettings(ae_title=pacs.ae_title, port=pacs.dicom_port)
        (outcome,) = c_store_many([path], dest, "SPINE_NODE", 30.0)
        assert outcome.ok, outcome  # the PACS takes the RLE Lossless SEG
        for number, group in enumerate(seg.PerFrameFunctionalGroupsSequence, 1):
            src = group.DerivationImageSequence[0].SourceImageSequence[0]
            k = slice_of[(str(src.ReferencedSOPInstanceUID), int(getattr(src, "ReferencedFrameNumber", 1) or 1))]
            segment = int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
            frame = _frame(pacs, seg, number, accept)
            assert set(np.unique(frame)) <= {0, 255}
            assert np.array_equal(frame > 0, masks[segment][:, :, k].T), f"frame {number}"
