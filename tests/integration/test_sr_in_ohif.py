"""Our SR opened in the real OHIF 3.13.2 (issue 20): no error, the lesion drawn with its numbers, and
after the radiologist accepts tracking, the lesions in the measurements panel.

Before the outlines, double-clicking our SR left a blank viewport (TypeError reading
coords[0].ReferencedSOPSequence in OHIF's SR loader; see dicom_node/results/viewer_rules.py).
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from dicom_node.results.seg import build_seg
from dicom_node.results.sr import build_sr
from dicom_node.results.validate import write_result
from tests.helpers.env import IN_CI, require_shared, require_tool
from tests.helpers.results_cases import make_case

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _viewer_ready() -> None:
    require_tool("chromium")
    require_tool("chromedriver")
    from testbed.ohif import OhifMissing, dist_dir

    try:
        dist_dir()
    except OhifMissing as exc:
        if IN_CI:
            pytest.fail(str(exc))
        pytest.skip(str(exc))


def _texts(driver) -> list[str]:
    """What the viewport's annotation layer writes (OHIF draws labels as SVG text)."""
    return driver.execute_script("return Array.from(document.querySelectorAll('svg text')).map(t => t.textContent)")


def test_sr_opens_with_lesion_numbers_and_fills_the_panel(tmp_path: Path) -> None:
    _viewer_ready()
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    from testbed.browser import Chromium
    from testbed.orthanc import LocalOrthanc
    from testbed.viewer import ViewerServer, upload

    shared = require_shared("lesion-example")
    case = make_case(shared.parent, tmp_path / "src", "sagittal")
    seg = build_seg(case.source, case.frames, case.analysis, series_uid=generate_uid(),
                    sop_instance_uid=generate_uid())
    sr = build_sr(case.source, case.analysis, seg, frames=case.frames, series_uid=generate_uid(),
                  sop_instance_uid=generate_uid())
    write_result(seg, tmp_path / "results" / "seg.dcm")
    write_result(sr, tmp_path / "results" / "sr.dcm")
    first = case.analysis.metrics.lesions[0]
    shots = tmp_path / "screenshots"

    with LocalOrthanc(tmp_path / "orthanc", dicomweb=True) as orthanc, ViewerServer(orthanc) as viewer, \
            Chromium(tmp_path / "chrome") as browser:
        (study,) = upload(orthanc, [tmp_path / "src", tmp_path / "results"])
        browser.open_study(viewer.study_url(study), timeout=90)
        driver = browser.driver
        def sr_thumbnail(d):
            return next((t for t in d.find_elements(By.CSS_SELECTOR, "[data-cy^='study-browser-thumbnail']")
                         if "S:9902" in t.text.replace(" ", "")), None)

        sr_thumb = browser.wait_for(sr_thumbnail, 30, "the SR series in the study browser")
        ActionChains(driver).double_click(sr_thumb).perform()
        browser.wait_for(lambda d: any("Volume" in t for t in _texts(d)), 60, "the SR's lesion labels")
        browser.screenshot(shots / "sr.png")
        shown = " ".join(_texts(driver))
        assert f"Volume: {first.volume_mm3:.2f} mm3" in shown, shown
        assert f"Width: {first.width_mm:.2f} mm" in shown, shown
        assert "Area:" in shown, shown
        assert browser.console_errors() == []  # the page reports unhandled rejections (testbed.browser)

        driver.find_element(By.CSS_SELECTOR, "[data-cy='yes-hydrate-btn']").click()
        driver.find_element(By.CSS_SELECTOR, "[data-cy='trackedMeasurements-btn']").click()
        browser.wait_for(lambda d: "Measurements (2)" in d.execute_script("return document.body.innerText"),
                         30, "both lesions in the measurements panel")
        time.sleep(1)
        browser.screenshot(shots / "panel.png")
        assert browser.console_errors() == []
