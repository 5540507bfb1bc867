"""What the radiologist sees: the node's SEG and SR opened in the OHIF Viewer (npm @ohif/app, pinned in
testbed/ohif.py), in headless Chromium, reading the study from Orthanc through its DICOMweb plugin.

The node runs on the bundled lesion sample (the shipped model, as `make demo` does) and stores its
SEG and SR in Orthanc; the viewer, served on loopback, is driven as a user drives it: the study
list, the study with its MR series, the SEG loaded onto the MR (each segment's overlay compared,
pixel for pixel on the screen, with our own mask projected through the same image), then the SR
(its lesion measurements in the measurements panel, no error in the browser console).
Screenshots of every step are kept under var/test-artifacts/ohif/ (ARTEFACTS below).
"""
from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
import pytest

from dicom_node.config import load_config
from dicom_node.service import Node
from testbed.browser import BrowserMissing, Chromium
from testbed.demo import SAMPLE_DIR, SAMPLES, wait_for_results
from testbed.node_process import node_config
from testbed.ohif import fetch
from testbed.ohif_ui import MEASUREMENTS_PANEL, SEGMENTATION_PANEL, OhifUI, iou, overlay_pixels, project_mask
from testbed.orthanc import LocalOrthanc
from testbed.series import write_series
from testbed.viewer import ViewerServer
from tests.helpers.env import IN_CI, REPO, require_tool

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ARTEFACTS = REPO / "var" / "test-artifacts" / "ohif"
NIFTI, DESCRIPTION, PATIENT_NAME, PATIENT_ID = SAMPLES["lesion"]
MIN_IOU = 0.8  # overlay vs our mask on screen; a misplaced or garbled overlay scores near 0
MIN_PIXELS = 4  # a segment smaller than this on its key image is not judged on screen


@dataclass
class Study:
    uid: str
    images: int  # MR instances sent
    seg: pydicom.Dataset
    sr: pydicom.Dataset
    masks: dict[int, dict[str, np.ndarray]]  # segment number -> source SOP Instance UID -> mask (rows x cols)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Study, LocalOrthanc]]:
    """The lesion sample sent to the node, its SEG and SR stored in an Orthanc that serves DICOMweb."""
    storescu = require_tool("storescu")
    require_tool("Orthanc")
    tmp = tmp_path_factory.mktemp("ohif")
    files = write_series(SAMPLE_DIR / NIFTI, tmp / "series", series_description=DESCRIPTION,
                         patient_name=PATIENT_NAME, patient_id=PATIENT_ID, uid_seed="ohif-test")
    study_uid = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
    with LocalOrthanc(tmp / "pacs", dicomweb=True) as pacs:
        node = Node(load_config(node_config(tmp, pacs, "cpu")))
        node.start()
        try:
            sent = subprocess.run([storescu, "-aet", "TEST_MR", "-aec", node.config.node.ae_title, "+sd",
                                   "127.0.0.1", str(node.port), str(tmp / "series")],
                                  capture_output=True, text=True, timeout=120)
            assert sent.returncode == 0, sent.stderr
            # the modality sends the series to the PACS too: the viewer shows our results on it
            sent = subprocess.run([storescu, "-aet", "TEST_MR", "-aec", pacs.ae_title, "+sd", "127.0.0.1",
                                   str(pacs.dicom_port), str(tmp / "series")], capture_output=True, text=True,
                                  timeout=120)
            assert sent.returncode == 0, sent.stderr
            results = wait_for_results(pacs, {study_uid}, timeout=300)[study_uid]
        finally:
            node.stop()
        seg = pydicom.dcmread(io.BytesIO(pacs.instance_files(results["SEG"])[0]))
        sr = pydicom.dcmread(io.BytesIO(pacs.instance_files(results["SR"])[0]))
        yield Study(study_uid, len(files), seg, sr, seg_masks(seg)), pacs


@pytest.fixture(scope="module")
def ohif(study: tuple[Study, LocalOrthanc], tmp_path_factory: pytest.TempPathFactory) -> Iterator[OhifUI]:
    """The viewer on that Orthanc, in one headless Chromium; screenshots go to ARTEFACTS."""
    try:
        fetch(quiet=True)  # `make ohif` has done it; a no-op then
        shutil.rmtree(ARTEFACTS, ignore_errors=True)
        ARTEFACTS.mkdir(parents=True)
        with ViewerServer(study[1], access_log=ARTEFACTS / "viewer-access.log") as viewer, \
                Chromium(tmp_path_factory.mktemp("chrome")) as browser:
            ui = OhifUI(browser, viewer.url, ARTEFACTS)
            try:
                yield ui
            finally:
                (ARTEFACTS / "browser-console.json").write_text(json.dumps(browser.log(), indent=1))
    except BrowserMissing as exc:
        if IN_CI:
            pytest.fail(str(exc))
        pytest.skip(str(exc))


def seg_masks(seg: pydicom.Dataset) -> dict[int, dict[str, np.ndarray]]:
    """Our SEG decoded by highdicom: each segment's mask on each source image it covers."""
    import highdicom as hd

    decoded = hd.seg.Segmentation.from_dataset(seg)
    sources = [ref.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence
               for ref in s.ReferencedInstanceSequence]
    numbers = [int(s.SegmentNumber) for s in seg.SegmentSequence]
    pixels = decoded.get_pixels_by_source_instance(source_sop_instance_uids=sources, segment_numbers=numbers,
                                                   combine_segments=False, skip_overlap_checks=True,
                                                   ignore_spatial_locations=True)
    fractional = getattr(seg, "SegmentationType", "") == "FRACTIONAL"
    out: dict[int, dict[str, np.ndarray]] = {}
    for k, number in enumerate(numbers):
        for i, uid in enumerate(sources):
            mask = pixels[i, :, :, k] >= (0.5 if fractional else 1)
            if mask.any():
                out.setdefault(number, {})[uid] = mask
    return out


def segment_labels(seg: pydicom.Dataset) -> dict[int, str]:
    return {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg.SegmentSequence}


def console_errors(ui: OhifUI) -> list[str]:
    return ui.browser.console_errors()


def test_study_list_and_mr_series(study: tuple[Study, LocalOrthanc], ohif: OhifUI) -> None:
    s = study[0]
    worklist = ohif.open_study_list(PATIENT_ID)
    ohif.shot("study-list")
    assert "DEMO" in worklist, worklist
    ohif.open_study(s.uid)
    ohif.shot("study-mr-series")
    entries = "\n".join(ohif.thumbnails())
    for want in ("MR", DESCRIPTION[:14], "SEG", "SR"):  # the browser shows a description cut to its width
        assert want in entries, f"study browser lacks {want!r}: {entries!r} (see {ARTEFACTS})"
    state = ohif.viewport_state()
    assert state["type"] == "stack" and len(state["imageIds"]) == s.images, state
    assert console_errors(ohif) == [], f"browser console errors (see {ARTEFACTS})"


def test_seg_overlay_is_where_our_mask_is(study: tuple[Study, LocalOrthanc], ohif: OhifUI) -> None:
    s = study[0]
    ohif.browser.log()  # what came before is the other test's
    ohif.open_study(s.uid)
    labels = ohif.load_seg()
    ohif.shot("seg-loaded")
    want = segment_labels(s.seg)
    assert sorted(labels) == sorted(want.values()), f"OHIF loaded segments {labels}, our SEG has {want}"
    panel = ohif.panel_text(SEGMENTATION_PANEL, want[min(want)])
    for label in want.values():
        assert label in panel, f"segment {label!r} not in OHIF's segmentation panel: {panel!r}"
    ohif.shot("seg-panel")

    scores: dict[str, float] = {}
    for number, by_image in sorted(s.masks.items()):
        key_image = max(by_image, key=lambda uid: int(by_image[uid].sum()))
        mask = by_image[key_image]
        if mask.sum() < MIN_PIXELS:
            continue
        ohif.show_image(key_image)
        ohif.set_segments_visible(set())
        without = ohif.viewport_pixels()
        ohif.set_segments_visible({number})
        with_segment = ohif.viewport_pixels()
        ohif.shot(f"seg-{number}-{re.sub(r'[^a-z0-9]+', '-', want[number].lower())}")
        shown = overlay_pixels(with_segment, without)
        ours = project_mask(mask, ohif.canvas_map(), shown.shape)
        scores[want[number]] = iou(shown, ours)
        np.save(ARTEFACTS / f"seg-{number}-shown.npy", shown)
        np.save(ARTEFACTS / f"seg-{number}-ours.npy", ours)
    ohif.set_segments_visible(set(want))
    (ARTEFACTS / "seg-iou.json").write_text(json.dumps(scores, indent=1))
    assert set(scores) == set(want.values()), f"segments not judged on screen: {set(want.values()) - set(scores)}"
    bad = {k: round(v, 3) for k, v in scores.items() if v < MIN_IOU}
    assert not bad, f"overlay vs our mask, IoU below {MIN_IOU}: {bad} (screenshots in {ARTEFACTS})"
    assert console_errors(ohif) == [], f"browser console errors (see {ARTEFACTS})"


@dataclass(frozen=True)
class PlanarRoi:
    tracking_id: str
    values: tuple[tuple[str, float, str], ...]  # (concept, value, unit)


def planar_rois(sr: pydicom.Dataset) -> list[PlanarRoi]:
    """Our SR's measurement groups that carry an image region (SCOORD / SCOORD3D): what OHIF can draw."""
    out = []
    for group in _walk(sr):
        items = getattr(group, "ContentSequence", [])
        if group.get("ValueType") != "CONTAINER" or not any(i.get("ValueType") in ("SCOORD", "SCOORD3D")
                                                             for i in _walk(group)):
            continue
        if any(i.get("ValueType") == "CONTAINER" for i in items):
            continue  # an outer container: its innermost group is the one
        tracking = next((str(i.TextValue) for i in items if i.get("ValueType") == "TEXT"
                         and i.ConceptNameCodeSequence[0].CodeMeaning == "Tracking Identifier"), "")
        values = tuple((str(i.ConceptNameCodeSequence[0].CodeMeaning),
                        float(i.MeasuredValueSequence[0].NumericValue),
                        str(i.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue))
                       for i in items if i.get("ValueType") == "NUM" and "MeasuredValueSequence" in i)
        out.append(PlanarRoi(tracking, values))
    return out


def _walk(ds: Any) -> Iterator[Any]:
    for item in getattr(ds, "ContentSequence", []):
        yield item
        yield from _walk(item)


def shown_numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?", text)]


def test_sr_measurements_shown_without_error(study: tuple[Study, LocalOrthanc], ohif: OhifUI) -> None:
    s = study[0]
    lesions = [label for label in segment_labels(s.seg).values() if label.lower().startswith("lesion")]
    assert lesions, "the lesion sample must give at least one lesion"
    ohif.browser.log()
    ohif.open_study(s.uid)
    ohif.open_series("SR")
    ohif.settle()
    time.sleep(2.0)  # what a user sees a moment after the double-click
    ohif.shot("sr-opened")
    assert ohif.browser.driver.execute_script(_ANY_CANVAS_DRAWN), (
        f"the viewport is blank after opening our SR (see {ARTEFACTS}); console: {console_errors(ohif)}")
    rois = planar_rois(s.sr)
    for lesion in lesions:
        assert any(lesion in r.tracking_id for r in rois), (
            f"our SR has no image-region measurement (TID 1410 planar ROI) for {lesion}: nothing OHIF can show")
    ohif.accept_prompt(60.0, "track the SR's measurements")
    ohif.settle()
    ohif.shot("sr-loaded")
    panel = ohif.panel_text(MEASUREMENTS_PANEL, lesions[0])
    ohif.shot("sr-measurements")
    (ARTEFACTS / "sr-measurements-panel.txt").write_text(panel)
    numbers = shown_numbers(panel)
    for lesion in lesions:
        assert lesion in panel, f"{lesion} not in OHIF's measurements panel: {panel!r}"
    for roi in rois:
        for concept, value, unit in roi.values:
            assert any(abs(n - value) <= max(0.051, 0.01 * abs(value)) for n in numbers), (
                f"{roi.tracking_id} {concept} {value} {unit} not in OHIF's measurements panel: {panel!r}")
    assert console_errors(ohif) == [], f"browser console errors after loading the SR (see {ARTEFACTS})"


_ANY_CANVAS_DRAWN = """
for (const c of document.querySelectorAll('canvas.cornerstone-canvas')) {
  const p = document.createElement('canvas'); p.width = 64; p.height = 64;
  const ctx = p.getContext('2d'); ctx.drawImage(c, 0, 0, 64, 64);
  const px = ctx.getImageData(0, 0, 64, 64).data;
  for (let i = 0; i < px.length; i += 4) if (px[i] + px[i + 1] + px[i + 2] > 30) return true;
}
return false;
"""
