"""The SR's image regions (issue 20): each lesion and the cord outlined on a source image of its
own, with the tracking UID of its volumetric group, so that OHIF 3.13.2 loads and draws the SR."""
from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from dicom_node.results import codes as C
from dicom_node.results.key_images import is_axial_series
from dicom_node.results.outline import largest_region, polygon_area
from dicom_node.results.readback import (
    ResultValidationError,
    SRGroup,
    sr_image_regions,
    sr_measurements,
    sr_outline_areas,
)
from dicom_node.results.seg import build_seg
from dicom_node.results.sr import build_sr, outline_tracking_id
from dicom_node.results.validate import check_result, validate_dicom, write_result
from dicom_node.results.viewer_rules import ohif_sr_problems
from tests.helpers.env import require_shared, require_tool
from tests.helpers.results_cases import Case, make_case, multiframe_case
from tests.unit.test_outline import inside

AREA = C.metric_key(C.AREA)


def _write(case: Case, out: Path) -> Path:
    seg = build_seg(case.source, case.frames, case.analysis, series_uid=generate_uid(),
                    sop_instance_uid=generate_uid())
    sr = build_sr(case.source, case.analysis, seg, frames=case.frames, series_uid=generate_uid(),
                  sop_instance_uid=generate_uid(), image_library=False)
    return write_result(sr, out / "sr.dcm")


@pytest.fixture(scope="module", params=["sagittal", "axial", "oblique"])
def written(request, tmp_path_factory) -> tuple[Case, Path]:
    shared = require_shared("lesion-example")
    tmp = tmp_path_factory.mktemp(f"regions-{request.param}")
    case = make_case(shared.parent, tmp / "src", request.param)
    return case, _write(case, tmp)


def _slice_of(case: Case, group: SRGroup) -> int:
    assert group.region is not None
    key = (group.region.sop_instance_uid, group.region.frame_number or 1)
    slices = [k for k, f in enumerate(case.frames) if (f.sop_instance_uid, f.frame_number) == key]
    assert len(slices) == 1, f"{group.tracking_id}: its image is not one slice of the source"
    return slices[0]


def _pixel_area_mm2(case: Case) -> float:
    col, row = np.linalg.norm(np.asarray(case.analysis.affine)[:3, :2], axis=0)
    return float(col * row)


def test_valid_readable_and_loadable_by_ohif(written):
    require_tool("dciodvfy")
    _, path = written
    report = validate_dicom(path)
    assert report.errors == [] and all("99SPINE" in w for w in report.warnings), report
    check_result(path)  # dciodvfy, highdicom read-back and the viewer rules
    assert ohif_sr_problems(path) == []
    sr = hd.sr.srread(str(path))
    planar = sr.content.get_planar_roi_measurement_groups()
    assert sorted(g.tracking_identifier for g in planar) == ["Lesion 1", "Lesion 2", "Spinal cord"]
    for group in planar:
        region = group.roi
        assert region is not None and region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE


def test_each_finding_has_one_outline_with_its_volumetric_tracking_uid(written):
    _, path = written
    volumetric = {g.tracking_id: g for g in sr_measurements(path) if g.referenced_segment is not None}
    regions = sr_image_regions(path)
    assert [g.tracking_id for g in regions] == ["Lesion 1", "Lesion 2", "Spinal cord"]
    for group in regions:
        assert group.tracking_uid == volumetric[group.tracking_id].tracking_uid
        assert group.finding == volumetric[group.tracking_id].finding
        assert group.referenced_segment is None and group.numbers == {}
    areas = sr_outline_areas(path)  # the Area in the form OHIF loads into its freehand tool
    assert [g.tracking_id for g in areas] == [outline_tracking_id(1), outline_tracking_id(2)]
    for area, region in zip(areas, regions):
        assert area.tracking_uid == region.tracking_uid and area.finding == region.finding
        (ref,) = area.inferred_from
        assert ref.sop_instance_uid == region.region.sop_instance_uid
        np.testing.assert_array_equal(ref.points, region.region.points)
        assert list(area.numbers) == [AREA]


def test_lesion_outline_is_the_lesion_on_its_key_image(written):
    case, path = written
    analysis = case.analysis
    by_label = {les.label: les for les in analysis.metrics.lesions}
    for group, area in zip(sr_image_regions(path)[:2], sr_outline_areas(path)):
        label = int(group.tracking_id.rsplit(" ", 1)[-1])
        k = _slice_of(case, group)
        lesion = np.asarray(analysis.lesion_labels) == label
        if is_axial_series(analysis):  # the slice of the maximal axial area, as the metrics define it
            assert k == by_label[label].max_axial_area_slice
        else:  # no axial image: the slice where the lesion's section is largest
            assert lesion[:, :, k].sum() == lesion.sum(axis=(0, 1)).max()
        plane = lesion[:, :, k].T  # (Rows, Columns)
        points = group.region.points
        assert (points[0] == points[-1]).all(), "a closed polyline repeats its first point"
        assert points.min() >= 0 and (points.max(axis=0) <= plane.shape[::-1]).all()
        # round trip: the pixel centres inside the outline are the lesion's region on that image
        np.testing.assert_array_equal(inside(points, plane.shape), largest_region(plane))
        # its area is the lesion's pixel count there, but for pieces beside the largest and holes in it
        region = largest_region(plane)
        tolerance = int((plane & ~region).sum() + (region & ~plane).sum())
        assert polygon_area(points) == region.sum()
        assert abs(polygon_area(points) - plane.sum()) <= tolerance
        assert tolerance <= 0.1 * plane.sum()  # these lesions are one solid piece on their key image
        assert area.numbers[AREA] == pytest.approx(polygon_area(points) * _pixel_area_mm2(case), rel=1e-9)
        assert area.units[AREA] == "mm2"


def test_cord_outline_and_totals_inferred_from_it(written):
    case, path = written
    cord_region = sr_image_regions(path)[-1]
    k = _slice_of(case, cord_region)
    cord = np.asarray(case.analysis.cord_mask) > 0
    assert cord[:, :, k].sum() == cord.sum(axis=(0, 1)).max()
    np.testing.assert_array_equal(inside(cord_region.region.points, cord[:, :, k].T.shape),
                                  largest_region(cord[:, :, k].T))
    assert cord_region.numbers == {}  # the cord's numbers are in its volumetric group
    totals = next(g for g in sr_measurements(path) if g.tracking_id == "All intramedullary lesions")
    assert len(totals.inferred_from) == len(C.TOTAL_METRICS)  # one per NUM
    for ref in totals.inferred_from:
        assert ref.sop_instance_uid == cord_region.region.sop_instance_uid
        np.testing.assert_array_equal(ref.points, cord_region.region.points)


def test_the_old_sr_without_outlines_is_what_crashed_ohif(written):
    """The rule set finds issue 20's TypeError in an SR of volumetric groups only."""
    _, path = written
    ds = pydicom.dcmread(path)
    old = copy.deepcopy(ds)
    container = next(item for item in old.ContentSequence if item.ConceptNameCodeSequence[0].CodeValue == "126010")
    container.ContentSequence = [g for g in container.ContentSequence
                                 if not any(i.ValueType == "SCOORD" for i in g.ContentSequence)]
    for group in container.ContentSequence:  # and the totals' INFERRED FROM outlines
        for item in group.ContentSequence:
            if item.ValueType == "NUM" and "ContentSequence" in item:
                item.ContentSequence = [c for c in item.ContentSequence if c.ValueType != "SCOORD"]
                if not item.ContentSequence:
                    del item.ContentSequence
    problems = ohif_sr_problems(old)
    assert len(problems) == 4 and all("reading coords[0].ReferencedSOPSequence" in p for p in problems), problems
    out = path.parent / "old-sr.dcm"
    old.save_as(out, enforce_file_format=True)
    with pytest.raises(ResultValidationError, match="viewers cannot show this SR"):
        check_result(out)


def test_no_cord_outlines_the_searched_image(tmp_path):
    require_tool("dciodvfy")
    shared = require_shared("lesion-example")
    case = make_case(shared.parent, tmp_path / "src", "sagittal", empty_cord=True)
    path = _write(case, tmp_path)
    check_result(path)
    (cord,) = sr_image_regions(path)
    k = _slice_of(case, cord)
    n_i, n_j, n_k = case.analysis.cord_mask.shape
    assert k == n_k // 2
    # the border, with the middle of the top edge as an extra vertex (OHIF reads 5 points as its rectangle)
    assert cord.region.points.tolist() == [[0, 0], [n_i / 2, 0], [n_i, 0], [n_i, n_j], [0, n_j], [0, 0]]


def test_dsrdump_shows_outlines_on_mr_images(written):
    _, path = written
    dump = subprocess.run([require_tool("dsrdump"), str(path)], capture_output=True, text=True, check=True).stdout
    assert dump.count('contains SCOORD:(,,"Image Region")=(POLYLINE') == 3  # two lesions, the cord
    inferred = len(C.TOTAL_METRICS) + 2  # each total, each lesion's Area
    assert dump.count('inferred from SCOORD:(,,"Source")=(POLYLINE') == inferred
    assert dump.count('selected from IMAGE:(,,"Source")=(MR image') == 3 + inferred


def test_multiframe_source_outlines_name_their_frame(tmp_path):
    """One enhanced multi-frame source stored in reverse: each outline names (instance, frame number)."""
    require_tool("dciodvfy")
    shared = require_shared("lesion-example")
    case = make_case(shared.parent, tmp_path / "src", "axial")
    mf_case, multi = multiframe_case(case)
    path = _write(mf_case, tmp_path)
    check_result(path)
    for group in sr_image_regions(path):
        assert group.region.sop_instance_uid == str(multi.SOPInstanceUID)
        assert group.region.frame_number is not None
        _slice_of(mf_case, group)  # (instance, frame) is one slice of the volume
    first = sr_image_regions(path)[0]
    assert _slice_of(mf_case, first) == case.analysis.metrics.lesions[0].max_axial_area_slice
