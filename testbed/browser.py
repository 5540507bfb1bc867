"""Headless Chromium (Debian's chromium + chromedriver, driven by Selenium) set up for a WebGL viewer.

Why these flags: OHIF renders with WebGL (cornerstone3D, vtk.js); a headless machine has no GPU,
so ANGLE's SwiftShader (software Vulkan) stands in, which recent Chromium only allows when asked
(--enable-unsafe-swiftshader). Every host name but loopback resolves to nothing: a viewer test
must not reach, nor wait on, anything beyond this machine. The browser log (console errors,
failed requests) is kept so a test can assert that nothing went wrong out of sight.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

VIEWPORT_CANVAS = "canvas.cornerstone-canvas"  # OHIF's rendering canvas, one per viewport
WINDOW = (1600, 1000)


class BrowserMissing(FileNotFoundError):
    """chromium / chromedriver are not installed (make peers)."""


def chromium_paths() -> tuple[str, str]:
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver):
        raise BrowserMissing("chromium and chromium-driver (Debian) are needed for the viewer: make peers")
    return browser, driver


class Chromium:
    """One headless Chromium session with its own profile under `profile_dir`."""

    def __init__(self, profile_dir: Path, window: tuple[int, int] = WINDOW) -> None:
        self.profile_dir = Path(profile_dir)
        self.window = window
        self.driver: Any = None
        self._log: list[dict[str, Any]] = []

    def start(self) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        browser, driver = chromium_paths()
        opts = webdriver.ChromeOptions()
        opts.binary_location = browser
        for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--no-first-run",
                     "--use-angle=swiftshader", "--use-gl=angle", "--enable-unsafe-swiftshader",
                     "--ignore-gpu-blocklist", "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", "--disable-quic", "--disable-features=Translate,MediaRouter",
                     "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
                     f"--window-size={self.window[0]},{self.window[1]}", "--force-device-scale-factor=1",
                     f"--user-data-dir={self.profile_dir}"):
            opts.add_argument(flag)
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        self.driver = webdriver.Chrome(service=Service(executable_path=driver), options=opts)
        self.driver.set_page_load_timeout(60)
        self.driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": _REPORT_ERRORS})

    def stop(self) -> None:
        if self.driver is not None:
            try:
                self.driver.quit()
            finally:
                self.driver = None

    def __enter__(self) -> "Chromium":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- what a test asks ---------------------------------------------------------------------
    def log(self) -> list[dict[str, Any]]:
        """Every browser-log entry so far (Chromium hands each one out once; kept here)."""
        self._log.extend(self.driver.get_log("browser"))
        return list(self._log)

    def console_errors(self) -> list[str]:
        return [e["message"] for e in self.log() if e.get("level") == "SEVERE"]

    def screenshot(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(path))
        return path

    def wait_for(self, condition: Any, timeout: float, what: str) -> Any:
        """WebDriverWait with a message that says what did not happen."""
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.25).until(condition)
        except TimeoutException:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s") from None

    def open_study(self, url: str, timeout: float = 60.0) -> None:
        """Load the viewer on a study and wait until a viewport has drawn an image (a non-black canvas)."""
        self.driver.get(url)
        self.wait_for(lambda d: d.execute_script(_CANVAS_DRAWN, VIEWPORT_CANVAS), timeout,
                      f"a viewport canvas with an image at {url}")
        time.sleep(0.5)  # the overlays (orientation markers, annotations) settle after the first frame


# An error thrown inside a promise nobody awaits (where OHIF's SR loader failed with issue 20's TypeError)
# reaches Chromium's log only if the page reports it: every page reports such rejections and uncaught
# errors as console errors, so console_errors() sees them.
_REPORT_ERRORS = """
window.addEventListener('unhandledrejection',
                        e => console.error('unhandledrejection: ' + (e.reason && e.reason.stack || e.reason)));
window.addEventListener('error', e => console.error('error: ' + e.message));
"""

# true once some viewport canvas has non-black pixels; WebGL canvases are read through a 2D copy
_CANVAS_DRAWN = """
const canvases = document.querySelectorAll(arguments[0]);
for (const c of canvases) {
  if (!c.width || !c.height) continue;
  const probe = document.createElement('canvas');
  probe.width = 64; probe.height = 64;
  const ctx = probe.getContext('2d');
  try { ctx.drawImage(c, 0, 0, 64, 64); } catch (e) { continue; }
  const px = ctx.getImageData(0, 0, 64, 64).data;
  for (let i = 0; i < px.length; i += 4) { if (px[i] + px[i + 1] + px[i + 2] > 30) return true; }
}
return false;
"""
