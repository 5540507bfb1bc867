"""3D Slicer's readers (dcmqi) on our results: the SEG back to label images equal to our masks, the SR
back to JSON with every measurement and the segment it is about.

The sagittal and oblique cases are 99 x 99 per frame and the axial one 29 x 99: pixel counts that are
not a multiple of 8, where bit-packed frames start inside a byte. Every SEG variant a destination can
ask for (build.VARIANTS: binary and fractional for generic viewers, byte frames for OHIF; all frames
or only non-empty ones) must come back voxel for voxel, compared in patient coordinates.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from dicom_node.results.build import VARIANTS, seg_options
from dicom_node.results.readback import sr_image_regions, sr_measurements
from dicom_node.results.seg import build_seg, lesion_tracking_id
from dicom_node.results.sr import build_sr
from dicom_node.results.validate import validate_dicom, write_result
from tests.helpers.dcmqi import label_images, tid1500_json
from tests.helpers.env import require_shared, require_tool
from tests.helpers.results_cases import Case, make_case


@pytest.fixture(scope="module", params=["sagittal", "axial", "oblique"])
def case(request, tmp_path_factory) -> Case:
    shared = require_shared("lesion-example")
    return make_case(shared.parent, tmp_path_factory.mktemp(f"dcmqi-{request.param}"), request.param)


def _written(case: Case, tmp: Path, variant: str) -> tuple[pydicom.Dataset, Path]:
    seg = build_seg(case.source, case.frames, case.analysis, series_uid=generate_uid(),
                    sop_instance_uid=generate_uid(), **seg_options(variant))
    return seg, write_result(seg, tmp / f"seg-{variant}.dcm")


def test_cases_have_frames_of_no_whole_bytes(case):
    """The point of these cases: Rows x Columns is not a multiple of 8."""
    rows, cols = case.analysis.cord_mask.shape[1], case.analysis.cord_mask.shape[0]
    assert (rows * cols) % 8 != 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_segimage2itkimage_gives_back_our_masks(case, tmp_path, variant):
    require_tool("dciodvfy")
    seg, path = _written(case, tmp_path, variant)
    assert validate_dicom(path).errors == []
    a = case.analysis
    labels = sorted(int(v) for v in np.unique(a.lesion_labels) if v)
    images = label_images(path, tmp_path / "dcmqi", a.affine, a.cord_mask.shape)
    assert sorted(images) == [1] + [n + 1 for n in labels]
    assert images[1][0] == "Spinal cord"
    if variant.startswith("fractional"):  # the soft cord: stored 0..255, within half a step of the probability
        assert np.max(np.abs(images[1][1] / 255.0 - a.cord_prob)) <= 0.5 / 255 + 1e-6
    else:
        assert np.array_equal(images[1][1] > 0, a.cord_mask > 0)
    for n in labels:
        label, values = images[n + 1]
        assert label == lesion_tracking_id(n)
        assert np.array_equal(values > 0, a.lesion_labels == n), f"lesion {n}"
        assert set(np.unique(values)) <= {0, n + 1 if variant.startswith("binary") else 255}


def _items(group_numbers: dict, site_numbers: dict) -> Counter[tuple[str, float]]:
    """Our group's numbers as (concept 'value^scheme', value to 6 significant digits)."""
    values = [(key[0], v) for key, v in group_numbers.items()] + [(key[1], v) for key, v in site_numbers.items()]
    return Counter((name, float(f"{v:.6g}")) for name, v in values)


@pytest.mark.parametrize("variant", ["binary", "ohif"])
def test_tid1500reader_reads_every_measurement_with_its_segment(case, tmp_path, variant):
    _check_tid1500reader(case, tmp_path, variant)


def test_tid1500reader_reads_the_per_level_numbers_too(tmp_path):
    """With vertebral levels: per-level CSA, z-score and percentile, compression ratios, lesion spans.

    dcmqi 1.5.7 keeps every number but drops what a NUM's own modifiers say (its Finding Site: the
    level; its Measurement Method): it warns "interpreted only at the MeasurementGroup level".
    """
    from tests.conformance.test_results_sr_levels import _levels, _with_levels

    case = _with_levels(make_case(require_shared("lesion-example").parent, tmp_path / "src", "sagittal"),
                        _levels(), {1: "C4-C5", 2: "C6"})
    levels = case.analysis.metrics.levels
    assert levels is not None and len(levels.cord_csa_mm2_per_level) == 5
    _check_tid1500reader(case, tmp_path, "binary")


def _check_tid1500reader(case: Case, tmp_path: Path, variant: str) -> None:
    seg, seg_path = _written(case, tmp_path, variant)
    sr = build_sr(case.source, case.analysis, seg, frames=case.frames, series_uid=generate_uid(),
                  sop_instance_uid=generate_uid())
    sr_path = write_result(sr, tmp_path / "sr.dcm")
    report, _warnings = tid1500_json(sr_path, tmp_path / "dcmqi")

    assert report["compositeContext"] == [str(seg.SOPInstanceUID)]
    # a finding's volumetric group (TID 1411, its SEG segment) and its key-image outline (TID 1410) share
    # the tracking UID: a group is known by that UID and the segment it references, if any
    theirs = {(m["TrackingUniqueIdentifier"], m.get("ReferencedSegment")): m for m in report["Measurements"]}
    ours = sr_measurements(sr_path) + sr_image_regions(sr_path)
    assert len(theirs) == len(report["Measurements"]) == len(ours)
    referenced = set()
    for group in ours:
        m = theirs[(group.tracking_uid, group.referenced_segment)]
        assert m["TrackingIdentifier"] == group.tracking_id
        if group.referenced_segment is not None:
            assert m["segmentationSOPInstanceUID"] == str(seg.SOPInstanceUID)
            referenced.add(group.referenced_segment)
        got = Counter((f"{i['quantity']['CodeValue']}^{i['quantity']['CodingSchemeDesignator']}",
                       float(f"{float(i['value']):.6g}")) for i in m["measurementItems"])
        assert got == _items(group.numbers, group.site_numbers), group.tracking_id
    assert referenced == {int(s.SegmentNumber) for s in seg.SegmentSequence}  # cord and every lesion


def test_the_grid_comparison_refuses_misplaced_images():
    """on_grid is the geometry judge above: half a voxel off, or voxels outside our grid, must fail."""
    from tests.helpers.dcmqi import on_grid

    values = np.zeros((4, 4, 3), np.uint8)
    values[1, 2, 1] = 1
    affine = np.diag([0.8, 0.8, 2.0, 1.0])
    assert np.array_equal(on_grid(values, affine, affine, (4, 4, 3)), values)
    shifted = affine.copy()
    shifted[0, 3] = 0.4
    with pytest.raises(AssertionError, match="do not share voxel centres"):
        on_grid(values, shifted, affine, (4, 4, 3))
    moved = affine.copy()
    moved[2, 3] = 10.0  # every slice of the image lies beyond our grid
    with pytest.raises(AssertionError, match="non-zero voxels lie off the grid"):
        on_grid(values, moved, affine, (4, 4, 3))
