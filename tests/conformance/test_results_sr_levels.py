"""Vertebral levels in the TID 1500 SR: lesion finding sites with SNOMED vertebra codes, per-level CSA with
z-score and percentile in the cord group, C2-C3 CSA, compression ratios; conformant (dciodvfy) and read
back to the same numbers. Unknown levels write none of it."""
from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from dicom_node.results import codes as C
from dicom_node.results.readback import measurements_from_sr, sr_measurements
from dicom_node.results.seg import build_seg
from dicom_node.results.sr import build_sr
from dicom_node.results.validate import check_result, validate_dicom, write_result
from inference.demographics import Demographics
from inference.levels_csa import reference
from inference.measurements import LevelCsa, LevelMeasurements
from tests.helpers.env import require_shared, require_tool
from tests.helpers.results_cases import Case, make_case, private_codes


def _levels() -> LevelMeasurements:
    """Levels as inference.levels_csa reports them, with the z-scores of the shipped reference."""
    who = Demographics("F", 34.0)
    rows = []
    for level, csa in ((2, 74.0), (3, 72.5), (4, 76.0), (5, 61.0), (6, 70.0)):
        ref = reference(str(level), who)
        assert ref is not None
        z, pct = ref.z_and_percentile(csa)
        rows.append(LevelCsa(level, f"C{level}", csa, 15, z, pct))
    ref23 = reference("2:3", who)
    assert ref23 is not None
    z23, pct23 = ref23.z_and_percentile(73.2)
    return LevelMeasurements("labelled", "C2-C3 found automatically (margin 0.20)", tuple(rows),
                             cord_csa_c2c3_mm2=73.2, cord_csa_c2c3_z_score=z23, cord_csa_c2c3_percentile=pct23,
                             csa_reference_group=ref23.describe(), compression_level=5,
                             compression_ratio_pct=17.9, compression_ratio_normalized_pct=19.6)


def _with_levels(case: Case, levels: LevelMeasurements, spans: dict[int, str | None]) -> Case:
    metrics = case.analysis.metrics
    lesions = tuple(dataclasses.replace(les, level_span=spans.get(les.label)) for les in metrics.lesions)
    analysis = dataclasses.replace(case.analysis, metrics=metrics.with_levels(levels, lesions))
    return dataclasses.replace(case, analysis=analysis)


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Case, pydicom.Dataset, Path]:
    shared = require_shared("lesion-example")
    tmp = tmp_path_factory.mktemp("sr-levels")
    case = _with_levels(make_case(shared.parent, tmp / "src", "sagittal"), _levels(), {1: "C4-C5", 2: "C6"})
    seg = build_seg(case.source, case.frames, case.analysis, series_uid=generate_uid(),
                    sop_instance_uid=generate_uid())
    sr = build_sr(case.source, case.analysis, seg, frames=case.frames,
                  series_uid=generate_uid(), sop_instance_uid=generate_uid(),
                  image_library=False)
    write_result(seg, tmp / "seg.dcm")
    return case, sr, write_result(sr, tmp / "sr.dcm")


def test_sr_with_levels_is_conformant(written):
    require_tool("dciodvfy")
    _, _, path = written
    report = validate_dicom(path)
    assert report.errors == []
    assert all("99SPINE" in w for w in report.warnings), report.warnings
    check_result(path)  # the node's own gate: dciodvfy + highdicom read-back


def test_lesion_finding_sites_name_the_vertebrae(written):
    _, _, path = written
    groups = {g.tracking_id: g for g in sr_measurements(path)}
    cord_site = f"{C.SPINAL_CORD.value}^SCT"
    assert groups["Lesion 1"].finding_sites == [cord_site, "5329002^SCT", "36978003^SCT"]  # C4, C5 vertebra
    assert groups["Lesion 2"].finding_sites == [cord_site, "36054005^SCT"]  # C6 vertebra
    back = measurements_from_sr(path)
    assert [les["level_span"] for les in back["lesions"]] == ["C4-C5", "C6"]


def test_cord_group_holds_per_level_csa_with_norms(written):
    case, _, path = written
    levels = case.analysis.metrics.levels
    assert levels is not None
    back = measurements_from_sr(path)
    rows = {row["level"]: row for row in back["cord_csa_mm2_per_level"]}
    assert sorted(rows) == [r.level for r in levels.cord_csa_mm2_per_level]
    for row in levels.cord_csa_mm2_per_level:
        got = rows[row.level]
        assert (got["csa_mm2"], got["z_score"], got["percentile"]) == (row.csa_mm2, row.z_score, row.percentile)
    assert back["cord_csa_c2c3_mm2"] == levels.cord_csa_c2c3_mm2
    assert back["cord_csa_c2c3_z_score"] == levels.cord_csa_c2c3_z_score
    assert back["cord_csa_c2c3_percentile"] == levels.cord_csa_c2c3_percentile
    assert back["compression_level"] == 5 and back["compression_ratio_normalized_pct"] == 19.6
    # the numbers without a finding site are still exactly the cord's own two
    cord = next(g for g in sr_measurements(path) if g.referenced_segment == 1)
    assert len(cord.numbers) == len(C.CORD_METRICS)
    assert back["cord_csa_mm2_mean"] == case.analysis.metrics.cord.cord_csa_mm2_mean


def test_dsrdump_shows_levels_and_reference(written):
    _, _, path = written
    dump = subprocess.run([require_tool("dsrdump"), "+Pl", str(path)], capture_output=True, text=True,
                          check=True).stdout
    assert 'CODE:(,,"Finding Site")=(39976000,SCT,"C2 vertebra")' in dump
    assert 'CODE:(,,"Finding Site")=(36978003,SCT,"C5 vertebra")' in dump
    assert '"Z-Score of measurement"' in dump and '"Percentile Ranking of measurement"' in dump
    assert '"Cord compression ratio normalized to healthy adults"' in dump
    assert "csa_reference=PAM50-normalized-metrics sex=F,age=30-39" in dump


def test_unknown_levels_add_nothing(tmp_path):
    shared = require_shared("lesion-example")
    case = make_case(shared.parent, tmp_path / "src", "sagittal")
    case = _with_levels(case, LevelMeasurements("unknown", "slices 5.0 mm apart along the cord"), {})
    seg = build_seg(case.source, case.frames, case.analysis, series_uid=generate_uid(),
                    sop_instance_uid=generate_uid())
    sr = build_sr(case.source, case.analysis, seg, frames=case.frames,
                  series_uid=generate_uid(), sop_instance_uid=generate_uid(),
                  image_library=False)
    groups = sr_measurements(write_result(sr, tmp_path / "sr.dcm"))
    assert all(not g.site_numbers for g in groups)
    assert all(g.finding_sites in ([], [f"{C.SPINAL_CORD.value}^SCT"]) for g in groups)


def test_private_codes_of_levels_are_documented(written):
    import re

    _, sr, _ = written
    used = private_codes(sr)
    assert {"SPN012", "SPN013"} <= used
    codes_md = Path(C.__file__).with_name("CODES.md").read_text()
    assert used <= set(re.findall(r"^\| (SPN\d{3}) \|", codes_md, flags=re.M))
