"""What a radiologist does in OHIF 3.13's basic viewer, as steps a test (or a helper checking its own
SEG or SR) can run in headless Chromium: open the study list and a study, load a SEG or an SR from
the study browser, show one segment at a time, go to one source image, read the side panels.

Clicks go where a user clicks (double-click a thumbnail, "Yes" on the viewport's prompt, the panel
buttons); what a user sees but a test cannot click precisely (which image of the stack is shown,
where an image pixel lands on the screen, which segment is visible) goes through the objects OHIF
exposes on `window` (`cornerstone`, `cornerstoneTools`, `services`), the same calls its own UI makes.
Every wait is bounded and says what did not happen.
"""
from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from testbed.browser import Chromium

THUMBNAIL = "[data-cy=study-browser-thumbnail], [data-cy=study-browser-thumbnail-no-image]"
PROMPT_YES = "//button[normalize-space()='Yes']"
SEGMENTATION_PANEL = "[data-cy=panelSegmentation-btn]"
MEASUREMENTS_PANEL = "[data-cy=trackedMeasurements-btn]"


@dataclass(frozen=True)
class CanvasMap:
    """Where image pixels land on the screenshot: canvas = origin + col * du + row * dv (screen pixels)."""

    origin: np.ndarray
    du: np.ndarray
    dv: np.ndarray

    def image_index_of_screen(self, xy: np.ndarray) -> np.ndarray:
        """(col, row) of the image pixel under each screen point (N x 2). Cornerstone's image coordinates
        start at the top-left corner of the first pixel (not its centre): pixel i spans [i, i + 1)."""
        m = np.stack([self.du, self.dv], axis=1)
        return np.floor(np.linalg.solve(m, (xy - self.origin).T).T).astype(int)


class OhifUI:
    """One browser session on one viewer server (`base_url`, e.g. http://127.0.0.1:PORT)."""

    def __init__(self, browser: Chromium, base_url: str, artefacts: Path | None = None) -> None:
        self.browser = browser
        self.driver = browser.driver
        self.base_url = base_url.rstrip("/")
        self.artefacts = artefacts
        self.shots: list[Path] = []
        self.timings: dict[str, float] = {}  # screenshot name -> seconds since the previous one
        self._last = time.monotonic()

    # ---- pages --------------------------------------------------------------------------------
    def open_study_list(self, expect_text: str, timeout: float = 60.0) -> str:
        """The worklist at /, waited for until `expect_text` (a patient name, an ID) shows; its text."""
        from selenium.webdriver.common.by import By

        self.driver.get(self.base_url + "/")
        self.browser.wait_for(lambda d: expect_text in d.find_element(By.TAG_NAME, "body").text, timeout,
                              f"the study list showing {expect_text!r}")
        return str(self.driver.find_element(By.TAG_NAME, "body").text)

    def open_study(self, study_uid: str, timeout: float = 90.0) -> None:
        self.browser.open_study(f"{self.base_url}/viewer?StudyInstanceUIDs={study_uid}", timeout)

    def thumbnails(self) -> list[str]:
        """The study browser's entries as shown (modality, description, counts), one string each."""
        from selenium.webdriver.common.by import By

        return [e.text for e in self.driver.find_elements(By.CSS_SELECTOR, THUMBNAIL)]

    def shot(self, name: str) -> Path | None:
        """A screenshot kept as a test artefact (numbered in step order)."""
        if self.artefacts is None:
            return None
        path = self.artefacts / f"{len(self.shots) + 1:02d}-{name}.png"
        self.shots.append(self.browser.screenshot(path))
        now = time.monotonic()
        self.timings[path.stem] = round(now - self._last, 2)
        self._last = now
        return path

    # ---- loading a SEG or an SR from the study browser ----------------------------------------------
    def _thumbnail(self, modality: str) -> Any:
        from selenium.webdriver.common.by import By

        for entry in self.driver.find_elements(By.CSS_SELECTOR, THUMBNAIL):
            if any(line.strip() == modality for line in entry.text.splitlines()):
                return entry
        raise AssertionError(f"no {modality} in the study browser; it shows {self.thumbnails()}")

    def open_series(self, modality: str) -> None:
        """Double-click the (first) `modality` entry of the study browser, as a user does to view it."""
        from selenium.webdriver.common.action_chains import ActionChains

        ActionChains(self.driver).double_click(self._thumbnail(modality)).perform()

    def prompt(self, timeout: float) -> Any:
        """The Yes button of the viewport's "Do you want to ...?" prompt once shown, or None after `timeout`."""
        from selenium.webdriver.common.by import By

        try:
            return self.browser.wait_for(
                lambda d: next((b for b in d.find_elements(By.XPATH, PROMPT_YES) if b.is_displayed()), False),
                timeout, "a prompt")
        except TimeoutError:
            return None

    def accept_prompt(self, timeout: float, what: str) -> None:
        """Wait for the viewport's "Do you want to ...?" prompt and answer Yes."""
        button = self.prompt(timeout)
        if button is None:
            raise TimeoutError(f"the viewer's prompt to {what}: not within {timeout:.0f} s")
        button.click()

    def load_seg(self, timeout: float = 90.0) -> list[str]:
        """Open the SEG and hydrate it onto its source series; the segment labels OHIF loaded."""
        self.open_series("SEG")
        self.accept_prompt(timeout, "open the segmentation")
        return list(self.browser.wait_for(lambda d: d.execute_script(_SEGMENT_LABELS) or False, timeout,
                                          "the SEG's segments loaded into the viewer"))

    def load_button(self) -> Any:
        """The viewport's LOAD button (a SEG or SR OHIF can load into its panels), or None when it offers none."""
        from selenium.webdriver.common.by import By

        found = [e for e in self.driver.find_elements(By.XPATH, "//*[normalize-space(text())='LOAD']")
                 if e.is_displayed()]
        return found[0] if found else None

    def annotation_text(self) -> str:
        """The text drawn over the image (cornerstone's SVG layer: measurement labels and values)."""
        return str(self.driver.execute_script(
            "return Array.from(document.querySelectorAll('svg text')).map(t => t.textContent).join('\\n');"))

    # ---- panels -------------------------------------------------------------------------------
    def panel_text(self, button_css: str, expect: str, timeout: float = 30.0) -> str:
        """Open a side panel (if not open) and return the right-hand panel's text once `expect` shows."""
        from selenium.webdriver.common.by import By

        def text(d: Any) -> str:
            return str(d.find_element(By.TAG_NAME, "body").text)

        if expect not in text(self.driver):
            self.driver.find_element(By.CSS_SELECTOR, button_css).click()
        self.browser.wait_for(lambda d: expect in text(d), timeout, f"{expect!r} in the side panel")
        panel = self.driver.execute_script(_RIGHT_PANEL_TEXT, expect)
        return str(panel or text(self.driver))

    def click_panel_row(self, text: str) -> bool:
        """Click the right-hand panel's row showing `text` (a measurement: OHIF then shows its image)."""
        from selenium.webdriver.common.by import By

        width = self.driver.execute_script("return window.innerWidth")
        rows = [e for e in self.driver.find_elements(By.XPATH, f"//*[normalize-space(text())='{text}']")
                if e.is_displayed() and e.location["x"] > 0.7 * width]
        if rows:
            rows[0].click()
            self.settle()
        return bool(rows)

    # ---- the viewport -------------------------------------------------------------------------
    def viewport_state(self) -> dict[str, Any]:
        """The first viewport: id, type, current image id and index, image ids, canvas rectangle."""
        return dict(self.driver.execute_script(_VIEWPORT_STATE))

    def show_image(self, sop_instance_uid: str, timeout: float = 30.0) -> None:
        """Scroll the viewport to the image whose SOP Instance UID is given (as the user's mouse wheel would)."""
        state = self.viewport_state()
        index = next((i for i, image_id in enumerate(state["imageIds"]) if f"/instances/{sop_instance_uid}/"
                      in image_id), None)
        if index is None:
            raise AssertionError(f"image {sop_instance_uid} is not in the viewport's stack")
        self.driver.execute_async_script(_JUMP, index)
        self.browser.wait_for(lambda d: self.viewport_state()["index"] == index, timeout, f"image #{index} shown")
        self.settle()

    def settle(self) -> None:
        """Two animation frames and a breath: what cornerstone needs to draw a change."""
        self.driver.execute_async_script(_FRAMES)
        time.sleep(0.3)

    def set_segments_visible(self, visible: set[int]) -> None:
        """Show only the segments numbered in `visible` (OHIF's segmentation service, as the eye buttons do)."""
        self.driver.execute_script(_SEGMENT_VISIBILITY, sorted(visible))
        self.settle()

    def canvas_map(self) -> CanvasMap:
        """Where the shown image's pixels are on the screenshot (cornerstone's image -> world -> canvas)."""
        got = self.driver.execute_script(_CANVAS_MAP)
        o, u, v = (np.asarray(got[k], dtype=float) for k in ("o", "u", "v"))
        return CanvasMap(origin=o, du=u - o, dv=v - o)

    def viewport_pixels(self) -> np.ndarray:
        """The screenshot's pixels inside the viewport canvas (rows x cols x RGB), screen-aligned with canvas_map."""
        from PIL import Image

        rect = self.viewport_state()["rect"]
        png = self.driver.get_screenshot_as_png()
        rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)
        x0, y0 = int(round(rect["left"])), int(round(rect["top"]))
        return rgb[y0:y0 + int(round(rect["height"])), x0:x0 + int(round(rect["width"]))]


def overlay_pixels(with_overlay: np.ndarray, without: np.ndarray, threshold: int = 40) -> np.ndarray:
    """Screen pixels an overlay changed: summed |RGB difference| above `threshold` (0-765)."""
    return np.abs(with_overlay - without).sum(axis=-1) > threshold


def project_mask(mask: np.ndarray, cmap: CanvasMap, shape: tuple[int, int]) -> np.ndarray:
    """Our mask (rows x cols of the source image) drawn on a canvas of `shape` as cornerstone places the image."""
    h, w = shape
    ys, xs = np.mgrid[0:h, 0:w]
    centres = np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], axis=1)
    col_row = cmap.image_index_of_screen(centres)
    inside = (col_row[:, 0] >= 0) & (col_row[:, 0] < mask.shape[1]) & (col_row[:, 1] >= 0) & \
        (col_row[:, 1] < mask.shape[0])
    out = np.zeros(h * w, dtype=bool)
    out[inside] = mask[col_row[inside, 1], col_row[inside, 0]]
    return out.reshape(h, w)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


_SEGMENT_LABELS = """
const segs = window.cornerstoneTools.segmentation.state.getSegmentations();
if (!segs.length) return null;
const labels = [];
for (const s of segs)
  for (const [i, seg] of Object.entries(s.segments)) if (seg && Number(i) > 0) labels.push(seg.label);
return labels.length ? labels : null;
"""

_VIEWPORT_STATE = """
const e = window.cornerstone.getEnabledElements()[0];
const vp = e.viewport;
const r = vp.canvas.getBoundingClientRect();
return {id: e.viewportId, type: vp.type, imageIds: vp.getImageIds ? vp.getImageIds() : [],
        index: vp.getCurrentImageIdIndex ? vp.getCurrentImageIdIndex() : -1,
        imageId: vp.getCurrentImageId ? vp.getCurrentImageId() : null,
        rect: {left: r.left, top: r.top, width: r.width, height: r.height}};
"""

_JUMP = """
const done = arguments[arguments.length - 1];
const vp = window.cornerstone.getEnabledElements()[0].viewport;
window.cornerstone.utilities.jumpToSlice(vp.element, {imageIndex: arguments[0]})
  .then(() => done(true), e => done(String(e)));
"""

_FRAMES = """
const done = arguments[arguments.length - 1];
requestAnimationFrame(() => requestAnimationFrame(() => done(true)));
"""

_SEGMENT_VISIBILITY = """
const visible = new Set(arguments[0]);
const vpId = window.cornerstone.getEnabledElements()[0].viewportId;
const service = window.services.segmentationService;
for (const s of window.cornerstoneTools.segmentation.state.getSegmentations())
  for (const i of Object.keys(s.segments).map(Number)) if (i > 0)
    service.setSegmentVisibility(vpId, s.segmentationId, i, visible.has(i));
window.cornerstone.getEnabledElements()[0].viewport.render();
"""

_CANVAS_MAP = """
const cs = window.cornerstone;
const vp = cs.getEnabledElements()[0].viewport;
const id = vp.getCurrentImageId();
const r = vp.canvas.getBoundingClientRect();
const at = (x, y) => { const c = vp.worldToCanvas(cs.utilities.imageToWorldCoords(id, [x, y])); return [c[0], c[1]]; };
return {o: at(0, 0), u: at(1, 0), v: at(0, 1)};
"""

# the text of the right-hand side panel holding `expect` (the smallest panel-sized ancestor of the match)
_RIGHT_PANEL_TEXT = """
const want = arguments[0];
const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
let node;
while ((node = walker.nextNode())) {
  if (!node.textContent.includes(want)) continue;
  let el = node.parentElement;
  while (el && el.parentElement && el.getBoundingClientRect().height < window.innerHeight * 0.6) el = el.parentElement;
  return el ? el.innerText : null;
}
return null;
"""
