"""The status page's measurement cell: each lesion's vertebral levels and the C2-C3 CSA, or why levels are
unknown; jobs measured before levels existed show neither."""
from __future__ import annotations

import json

from dicom_node.status_page import measurement_summary


def _summary(extra: dict[str, object], lesions: list[dict[str, object]] | None = None) -> str:
    m = {"lesion_count": len(lesions or []), "lesions": lesions or [], "total_volume_mm3": 12.0,
         "cord_volume_mm3": 9000.0, "cord_csa_mm2_mean": 70.0, **extra}
    return measurement_summary(json.dumps(m))


def test_labelled_levels_show_lesion_span_and_c2c3():
    html = _summary({"vertebral_levels_status": "labelled", "vertebral_levels_reason": "C2-C3 found",
                     "cord_csa_c2c3_mm2": 75.34, "cord_csa_c2c3_z_score": 0.469, "cord_csa_c2c3_percentile": 68.0},
                    [{"label": 1, "level_span": "C4-C5"}, {"label": 2, "level_span": None}])
    assert "lesion 1: C4-C5" in html and "lesion 2: level unknown" in html
    assert "C2-C3 CSA: 75.3 mm² (z 0.47, 68th percentile)" in html


def test_unknown_levels_say_why_escaped():
    html = _summary({"vertebral_levels_status": "unknown", "vertebral_levels_reason": "slices 5.0 mm apart <axial>"})
    assert "levels: unknown (slices 5.0 mm apart &lt;axial&gt;)" in html
    assert "C2-C3" not in html


def test_older_measurements_show_no_level_line():
    html = _summary({})
    assert "levels" not in html and "C2-C3" not in html and "cord CSA mean: 70.0 mm²" in html
