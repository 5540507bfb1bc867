"""End to end with SCT's t2_ax_lesion: storescu -> node (axial T2w MS pipeline) -> SEG + SR -> Orthanc.

The series is made from the real MS scan t2_ms_axial (cropped in plane around the cord, to keep the
test short). The node's default routing sends it to the ms_axial_t2 pipeline because the config
points sct_data_dir at ../shared's copy of SCT's model files. The SEG's lesion segments and the SR's
lesion groups must name SCT's model, both must pass dciodvfy, and they must hold the lesions that the
offline `dicom-node segment --model sct:t2_ax_lesion` finds on the same series.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import yaml

from dicom_node.cli import main as cli
from dicom_node.config import load_config
from dicom_node.results.readback import measurements_from_sr, seg_masks_on_source
from dicom_node.results.validate import validate_dicom
from inference.api import volume_from_datasets
from testbed.node_process import catalog_query, node_config
from testbed.orthanc import LocalOrthanc
from testbed.series import write_series
from tests.helpers.e2e import store_and_wait
from tests.helpers.env import require_shared, require_tool
from tests.helpers.sct import cropped_ms_scan


@pytest.mark.integration
def test_axial_t2_series_gets_sct_lesions_in_the_pacs(tmp_path: Path) -> None:
    require_tool("Orthanc")
    require_tool("dciodvfy")
    models = require_shared("sct-models")
    scan = cropped_ms_scan(tmp_path / "t2_ms_axial_crop.nii.gz")
    files = write_series(scan, tmp_path / "series", series_description="T2 TSE AX C-SPINE", uid_seed="sct-e2e")
    first = pydicom.dcmread(files[0], stop_before_pixels=True)

    with LocalOrthanc(tmp_path / "pacs") as pacs:
        path = node_config(tmp_path, pacs, "cpu")
        raw = yaml.safe_load(path.read_text())
        raw["models"]["sct_t2_ax_lesion"]["sct_data_dir"] = str(models)
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        config = load_config(path)
        assert "ms_axial_t2" not in config.pipelines_off()
        results = store_and_wait(config, pacs, tmp_path / "series", first.StudyInstanceUID)
        job = catalog_query(config.catalog_path, "SELECT pipeline, state FROM jobs")[0]
        seg_bytes = pacs.instance_files(results["SEG"])[0]
        sr_bytes = pacs.instance_files(results["SR"])[0]
    assert tuple(job) == ("ms_axial_t2", "done")
    seg = pydicom.dcmread(io.BytesIO(seg_bytes))
    sr = pydicom.dcmread(io.BytesIO(sr_bytes))

    for name, blob in (("seg.dcm", seg_bytes), ("sr.dcm", sr_bytes)):  # what reached the PACS is valid
        (tmp_path / name).write_bytes(blob)
        report = validate_dicom(tmp_path / name)
        assert report.ok, report.errors

    # SCT's model names the lesion segments and the lesion groups; ours the cord
    algorithms = {int(s.SegmentNumber): s.SegmentationAlgorithmIdentificationSequence[0] for s in seg.SegmentSequence}
    assert algorithms[1].AlgorithmName == "spinecord-t2"
    lesion_algorithms = [a for n, a in algorithms.items() if n > 1]
    assert lesion_algorithms, "SCT's model found no lesion on t2_ms_axial: the test needs one"
    for algo in lesion_algorithms:
        assert algo.AlgorithmName == "sct:t2_ax_lesion" and algo.AlgorithmVersion.startswith("sha256:")
        assert "Spinal Cord Toolbox" in algo.AlgorithmParameters and "trained on" in algo.AlgorithmParameters
    sr_text = sr.to_json()
    assert "sct:t2_ax_lesion" in sr_text and "trained on" in sr_text

    # the same lesions as the offline command on the same series
    assert cli(["segment", str(tmp_path / "series"), "--model", "sct:t2_ax_lesion", "--sct-data-dir", str(models),
                "--out", str(tmp_path / "offline")]) == 0
    offline = json.loads((tmp_path / "offline" / "measurements.json").read_text())
    in_pacs = measurements_from_sr(sr)
    assert in_pacs["lesion_count"] == offline["lesion_count"] == len(lesion_algorithms)
    for got, want in zip(in_pacs["lesions"], offline["lesions"]):
        assert got["volume_mm3"] == pytest.approx(want["volume_mm3"], rel=1e-5)
    volume = volume_from_datasets([pydicom.dcmread(f) for f in files])
    masks = seg_masks_on_source(seg, volume.frames, volume.array.shape)
    in_seg = np.zeros(volume.array.shape, bool)
    for number, mask in masks.items():
        if number > 1:
            in_seg |= mask > 0
    offline_lesion = np.asanyarray(nib.load(str(tmp_path / "offline" / "lesion.nii.gz")).dataobj) > 0
    assert offline_lesion.shape == in_seg.shape and np.array_equal(offline_lesion, in_seg)
