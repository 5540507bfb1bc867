"""End to end with real peers: storescu -> node -> shipped model -> SEG + SR -> Orthanc.

The measurements that reach the PACS (read back from Orthanc's copy of the SR) must equal
what `dicom-node segment` computes offline on the same volume.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import pydicom
import pytest

from dicom_node.cli import main as cli
from dicom_node.config import load_config
from dicom_node.results.readback import measurements_from_sr
from testbed.node_process import node_config
from testbed.orthanc import LocalOrthanc
from testbed.series import write_series
from tests.helpers.e2e import store_and_wait
from tests.helpers.env import require_shared, require_tool

LESION_KEYS = ("volume_mm3", "length_mm", "width_mm", "max_equivalent_diameter_mm", "max_axial_damage_ratio")


@pytest.mark.integration
def test_spine_series_end_to_end_matches_offline_segment(tmp_path: Path) -> None:
    require_tool("Orthanc")
    require_tool("dciodvfy")
    nifti = require_shared("lesion-example/t2_fake_lesion.nii.gz")
    files = write_series(nifti, tmp_path / "series", series_description="T2 SAG C-SPINE", uid_seed="e2e")
    first = pydicom.dcmread(files[0], stop_before_pixels=True)

    with LocalOrthanc(tmp_path / "pacs") as pacs:
        config = load_config(node_config(tmp_path, pacs, "cpu"))
        results = store_and_wait(config, pacs, tmp_path / "series", first.StudyInstanceUID)
        seg = pydicom.dcmread(io.BytesIO(pacs.instance_files(results["SEG"])[0]))
        sr = pydicom.dcmread(io.BytesIO(pacs.instance_files(results["SR"])[0]))

    # both results belong to the source study and reference the source series
    for ds in (seg, sr):
        assert ds.StudyInstanceUID == first.StudyInstanceUID and ds.PatientID == first.PatientID
        assert ds.SeriesInstanceUID != first.SeriesInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == first.SeriesInstanceUID
    evidence = {s.SeriesInstanceUID for st in sr.CurrentRequestedProcedureEvidenceSequence
                for s in st.ReferencedSeriesSequence}
    assert first.SeriesInstanceUID in evidence and seg.SeriesInstanceUID in evidence

    # the same numbers as the offline tool on the NIfTI the series was made from
    assert cli(["segment", str(nifti), "--out", str(tmp_path / "offline")]) == 0
    offline = json.loads((tmp_path / "offline" / "measurements.json").read_text())
    in_pacs = measurements_from_sr(sr)
    assert len(in_pacs["lesions"]) == offline["lesion_count"] == len(offline["lesions"])
    assert in_pacs["lesion_count"] == offline["lesion_count"]
    for got, want in zip(in_pacs["lesions"], offline["lesions"]):
        for key in LESION_KEYS:
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-9), key
    assert in_pacs["cord_volume_mm3"] == pytest.approx(offline["cord_volume_mm3"], rel=1e-5)
    assert in_pacs["cord_csa_mm2_mean"] == pytest.approx(offline["cord_csa_mm2_mean"], rel=1e-5)
    assert in_pacs["total_volume_mm3"] == pytest.approx(offline["total_volume_mm3"], rel=1e-5, abs=1e-9)
    assert len(seg.SegmentSequence) == 1 + offline["lesion_count"]
