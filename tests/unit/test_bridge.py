"""The node reaches inference through one module, and every measured number has an SR code.

Why tests: the layering (dicom_node -> inference.api -> the rest of inference) and the SR's
completeness are easy to erode one import or one renamed field at a time, silently.
"""
from __future__ import annotations

import ast
import dataclasses
import json
import re
from pathlib import Path

from dicom_node.results import codes
from inference import measurements as M

ROOT = Path(__file__).resolve().parents[2]
BRIDGE = "inference.api"
MODULE_NAME = re.compile(r"(inference|dicom_node)(\.[a-z_][a-z0-9_]*)+")  # a dotted name, not prose


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in a file, at any depth, and of module names given as
    strings to importlib (the CLI's command table)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, node.module)] + [(node.lineno, f"{node.module}.{a.name}") for a in node.names
                                                     if node.module == "inference"]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_NAME.fullmatch(node.value):
            found.append((node.lineno, node.value))
    return found


def test_the_node_imports_inference_only_through_the_bridge() -> None:
    offending = [f"{path.relative_to(ROOT)}:{line} imports {module}"
                 for path in sorted((ROOT / "dicom_node").rglob("*.py"))
                 for line, module in _imported_modules(path)
                 if (module == "inference" or module.startswith("inference.")) and module != BRIDGE]
    assert not offending, "dicom_node may import only inference.api:\n" + "\n".join(offending)


def test_inference_never_imports_the_node() -> None:
    offending = [f"{path.relative_to(ROOT)}:{line} imports {module}"
                 for path in sorted((ROOT / "inference").rglob("*.py"))
                 for line, module in _imported_modules(path)
                 if module == "dicom_node" or module.startswith("dicom_node.")]
    assert not offending, "inference is below the node and must not import it:\n" + "\n".join(offending)


def test_the_bridge_does_not_import_torch() -> None:
    from tests.helpers.env import assert_runs_without_torch

    assert_runs_without_torch("import inference.api\nimport dicom_node.worker\n")


def _fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def test_every_lesion_metric_has_an_sr_code() -> None:
    measured = _fields(M.LesionMetrics) - set(M.LESION_NON_METRICS)
    coded = {m.key for m in codes.LESION_METRICS}
    assert measured == coded, (f"lesion fields without SR code: {measured - coded}; "
                               f"codes for nothing: {coded - measured}")


def test_every_cord_metric_has_an_sr_code() -> None:
    measured, coded = _fields(M.CordMeasurements), {m.key for m in codes.CORD_METRICS}
    assert measured == coded, f"cord fields without SR code: {measured - coded}; codes for nothing: {coded - measured}"


def test_every_study_total_has_an_sr_code() -> None:
    # Measurements' own numbers; its parts (lesions, cord, per_slice, lesion_filter) are checked
    # above or are not SR numbers: the per-slice area is a curve, the filter an algorithm parameter
    # (SEG and SR name it), x* a slice index.
    not_numbers = {"lesions", "cord", "per_slice", "lesion_filter", "levels", "interpolated_midsagittal_slice"}
    measured = (_fields(M.Measurements) - not_numbers) | {"lesion_count"}
    coded = {m.key for m in codes.TOTAL_METRICS}
    assert measured == coded, f"totals without SR code: {measured - coded}; codes for nothing: {coded - measured}"
    for name in coded:
        assert hasattr(M.Measurements, name) or name in _fields(M.Measurements)


def test_measurements_json_round_trip() -> None:
    lesion = M.LesionMetrics(1, 10.0, 4.0, 2.0, 3.0, 0.4, None, 2.0, 1.0, 0.5, 1.5, 20.0, 10.0, (1.0, 2.0, 3.0),
                             level_span="C4-C5")
    levels = M.LevelMeasurements("labelled", "C2-C3 found automatically", (
        M.LevelCsa(4, "C4", 75.5, 15, -0.25, 40.1), M.LevelCsa(5, "C5", 74.0, 14, None, None)),
        cord_csa_c2c3_mm2=75.0, cord_csa_c2c3_z_score=0.4, cord_csa_c2c3_percentile=65.5,
        csa_reference_group="all (n=203)", compression_level=5, compression_ratio_pct=2.0,
        compression_ratio_normalized_pct=5.0)
    m = M.Measurements(lesions=(lesion,), total_volume_mm3=10.0, total_length_mm=4.0, max_axial_damage_ratio=0.4,
                       interpolated_midsagittal_slice=12.5, cord=M.CordMeasurements(70.0, 5000.0),
                       per_slice=M.CsaPerSlice((None, 69.0, 71.0)), lesion_filter=M.LesionFilter(5.0, 2),
                       levels=levels)
    data = m.to_json()
    assert M.Measurements.from_json(json.loads(json.dumps(data, allow_nan=False))) == m
    assert set(data) == set(M.json_keys())
    unknown = dataclasses.replace(m, levels=M.LevelMeasurements("unknown", "axial slices"))
    assert M.Measurements.from_json(unknown.to_json()) == unknown
    assert M.Measurements.from_json(dataclasses.replace(m, levels=None).to_json()).levels is None


def test_cohort_columns_are_measurement_keys() -> None:
    from inference.cohort import CASE_COLUMNS, _lesion_columns

    numbers = set(CASE_COLUMNS[4:-1])  # after case, input, status, error; before seconds
    assert numbers <= set(M.json_keys()), numbers - set(M.json_keys())
    assert set(_lesion_columns()) - {"case", "centroid_ras_x_mm", "centroid_ras_y_mm", "centroid_ras_z_mm"} == (
        _fields(M.LesionMetrics) - {"centroid_ras_mm"})


def test_the_product_never_imports_the_dev_tools() -> None:
    # the CLI's command table may name testbed modules (demo, make-series): loaded only when run
    offending = [f"{path.relative_to(ROOT)}:{line} imports {module}"
                 for package in ("dicom_node", "inference") for path in sorted((ROOT / package).rglob("*.py"))
                 for line, module in _imported_modules(path)
                 if module == "testbed" or module.startswith("testbed.")]
    assert not offending, "testbed/ is for tests, bench and the demo:\n" + "\n".join(offending)
