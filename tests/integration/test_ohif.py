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
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from dicom_node.config import load_config
from dicom_node.service import Node
from testbed.browser import BrowserMissing, Chromium
from testbed.demo import SAMPLE_DIR, SAMPLES, wait_for_results
from testbed.node_process import node_config
from testbed.ohif import OHIF_VERSION, fetch
from testbed.ohif_ui import MEASUREMENTS_PANEL, SEGMENTATION_PANEL, OhifUI, iou, overlay_pixels, project_mask
from testbed.orthanc import LocalOrthanc
from testbed.series import write_series
from testbed.viewer import ViewerServer, for_ohif
from tests.helpers.env import IN_CI, REPO, require_tool

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ARTEFACTS = REPO / "var" / "test-artifacts" / "ohif"
NIFTI, DESCRIPTION, PATIENT_NAME, PATIENT_ID = SAMPLES["lesion"]
MIN_IOU = 0.9  # overlay vs our mask on screen: 0.99 when right, half a pixel off 0.77-0.88, garbled 0.01-0.1
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
        node = Node(load_config(for_ohif(node_config(tmp, pacs, "cpu"))))
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
                (ARTEFACTS / "step-seconds.json").write_text(json.dumps(ui.timings, indent=1))
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
    segment: str  # the SEG segment it measures (Spinal cord, Lesion 1, ...)
    image: str  # SOP Instance UID the outline is drawn on
    values: tuple[tuple[str, float, str], ...]  # (concept, value, unit)


def planar_rois(sr: pydicom.Dataset, labels: dict[int, str]) -> list[PlanarRoi]:
    """Our SR's outlines (a measurement group with an image region: a SCOORD of its own or under one of its
    NUMs), each with the segment it measures: the volumetric group with the same Tracking Unique Identifier
    references that segment."""
    def uid_of(items: list[Any]) -> str:
        return next((str(i.UID) for i in items if i.get("ValueType") == "UIDREF"
                     and i.ConceptNameCodeSequence[0].CodeMeaning == "Tracking Unique Identifier"), "")

    groups = [list(g.ContentSequence) for g in _walk(sr) if g.get("ValueType") == "CONTAINER" and
              "ContentSequence" in g and uid_of(list(g.ContentSequence))]
    def segment(ref: Any) -> str:
        number = ref.ReferencedSegmentNumber  # US, VM 1-n: one number here
        return labels[int(number[0] if isinstance(number, pydicom.multival.MultiValue) else number)]

    segment_of = {uid_of(items): segment(i.ReferencedSOPSequence[0]) for items in groups for i in items
                  if i.get("ValueType") == "IMAGE" and "ReferencedSegmentNumber" in i.ReferencedSOPSequence[0]}
    out = []
    for items in groups:
        nums = [i for i in items if i.get("ValueType") == "NUM" and "MeasuredValueSequence" in i]
        regions = [i for i in items if i.get("ValueType") == "SCOORD"] + \
            [c for n in nums for c in getattr(n, "ContentSequence", []) if c.get("ValueType") == "SCOORD"]
        if not regions or uid_of(items) not in segment_of:
            continue
        image = next(str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) for i in regions[0].ContentSequence
                     if i.get("ValueType") == "IMAGE")
        values = tuple((str(i.ConceptNameCodeSequence[0].CodeMeaning), float(i.MeasuredValueSequence[0].NumericValue),
                        str(i.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue)) for i in nums)
        out.append(PlanarRoi(segment_of[uid_of(items)], image, values))
    return out


def _walk(ds: Any) -> Iterator[Any]:
    for item in getattr(ds, "ContentSequence", []):
        yield item
        yield from _walk(item)


def shows(text: str, value: float) -> bool:
    """`value` is among the numbers in `text`, as a viewer rounds it (2 decimals, or 1 % for big ones)."""
    numbers = [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?", text)]
    return any(abs(n - value) <= max(0.051, 0.01 * abs(value)) for n in numbers)


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
    rois = planar_rois(s.sr, segment_labels(s.seg))
    for lesion in lesions:
        assert any(r.segment == lesion for r in rois), (
            f"our SR has no image-region measurement (TID 1410 planar ROI) for {lesion}: nothing OHIF can show")

    # on the image: each outline's numbers, on its own image
    for roi in rois:
        ohif.show_image(roi.image)
        ohif.shot(f"sr-on-image-{re.sub(r'[^a-z0-9]+', '-', roi.segment.lower())}")
        text = ohif.annotation_text()
        for concept, value, unit in roi.values:
            assert shows(text, value), f"{roi.segment} {concept} {value} {unit} not on the image: {text!r}"

    # in the measurements panel: OHIF lists an SR's measurements once the user says Yes to tracking them (it asks
    # on opening an SR it can load, or after its LOAD button)
    if ohif.prompt(10.0) is None:
        load = ohif.load_button()
        assert load is not None, (
            "OHIF neither asks to track our SR's measurements nor offers LOAD: it marks the SR 'not compatible with "
            f"this application' and its measurements panel stays empty. OHIF {OHIF_VERSION} loads a TID 1500 group "
            "when its Tracking Identifier names a cornerstone tool (e.g. 'Cornerstone3DTools@^0.1.0:PlanarFreehandROI'"
            ", whose reader takes the outline from the SCOORD under the group's first NUM, INFERRED FROM) or it is a "
            f"DCM:111030 rectangle or point; our outlines measure {sorted({r.segment for r in rois})}")
        load.click()
    ohif.accept_prompt(60.0, "track the SR's measurements")
    ohif.settle()
    ohif.shot("sr-loaded")
    panel = ohif.panel_text(MEASUREMENTS_PANEL, "Measurements")
    ohif.click_panel_row("Lesion")  # OHIF labels a tracked measurement with its Finding: shows its image
    ohif.shot("sr-measurements")
    (ARTEFACTS / "sr-measurements-panel.txt").write_text(panel)
    for roi in rois:
        for concept, value, unit in roi.values:
            assert shows(panel, value), (
                f"{roi.segment} {concept} {value} {unit} not in OHIF's measurements panel: {panel!r}")
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


def test_a_viewer_tarball_that_is_not_the_pinned_one_is_refused(tmp_path: Path) -> None:
    """`make ohif` unpacks only the tarball whose SHA-512 is pinned (npm checks the registry's hash; we check ours)."""
    require_tool("npm")
    wrong = "sha512-" + "A" * 86 + "=="
    with pytest.raises(RuntimeError, match="is not the pinned"):
        fetch(quiet=True, cache=tmp_path / "ohif", integrity=wrong)
    assert not (tmp_path / "ohif" / "dist").exists() and not (tmp_path / "ohif" / ".fetched").exists()
    assert not list(tmp_path.glob(".fetch-*")), "the download is not left behind"
