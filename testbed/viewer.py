"""The OHIF Viewer served on loopback in front of one local Orthanc: what `dicom-node demo` prints a
link to, and what the viewer tests drive in headless Chromium.

One origin serves both the app and the data: the fetched `dist/` (with the single-page app's
fallback to index.html for /viewer, /segmentation, ...), our `app-config.js` (testbed.ohif), and
`/dicom-web/` reverse-proxied to Orthanc's DICOMweb plugin. Same origin means no CORS set-up on
Orthanc and no viewer config naming a port. The pages are served cross-origin isolated
(COOP/COEP), as OHIF's own deploy does, so its decoders may use SharedArrayBuffer.

`python -m testbed.viewer FILE_OR_DIR...` loads DICOM files into a fresh Orthanc, serves the viewer
and either prints the study's URL and waits (Ctrl-C) or, with --screenshot, opens it in headless
Chromium and saves what the viewer shows.
"""
from __future__ import annotations

import argparse
import http.client
import mimetypes
import sys
import tempfile
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from testbed.ohif import DICOMWEB_PATH, app_config, dist_dir
from testbed.orthanc import LocalOrthanc, free_port

TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm",
         ".json": "application/json", ".css": "text/css", ".html": "text/html; charset=utf-8",
         ".svg": "image/svg+xml", ".woff2": "font/woff2", ".ico": "image/x-icon", ".png": "image/png"}
ISOLATION = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp",
             "Cross-Origin-Resource-Policy": "same-origin"}
PROXIED_REQUEST_HEADERS = ("Accept", "Content-Type", "Range", "Authorization")
PROXIED_RESPONSE_HEADERS = ("Content-Type", "Content-Range", "ETag", "Last-Modified")


def content_type(path: Path) -> str:
    return TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"


class _Handler(BaseHTTPRequestHandler):
    """Static files of dist/ + our app-config + /dicom-web/ proxied to Orthanc."""

    protocol_version = "HTTP/1.1"  # keep-alive: the viewer makes hundreds of small requests
    server: "_Server"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        if self.server.access_log is not None:
            self.server.access_log.write(f"{self.address_string()} {format % args}\n")

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._route()

    def do_HEAD(self) -> None:  # noqa: N802
        self._route()

    def do_POST(self) -> None:  # noqa: N802 (STOW-RS, QIDO by POST: proxied only)
        if self._proxied():
            self._proxy()
        else:
            self._send(405, b"only /dicom-web/ takes POST\n", "text/plain")

    def _proxied(self) -> bool:
        return self.path == DICOMWEB_PATH or self.path.startswith(DICOMWEB_PATH + "/")

    def _route(self) -> None:
        if self._proxied():
            self._proxy()
            return
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        if path == "/app-config.js":
            self._send(200, self.server.app_config, "text/javascript", cache=False)
            return
        root = self.server.dist
        file = (root / path.lstrip("/")).resolve()
        if not file.is_relative_to(root):
            self._send(403, b"outside the viewer\n", "text/plain")
            return
        if not file.is_file():
            if "." in path.rsplit("/", 1)[-1]:  # a missing asset is a 404, a route (/viewer) is the app
                self._send(404, b"not found\n", "text/plain")
                return
            file = root / "index.html"
        self._send(200, file.read_bytes(), content_type(file), cache=file.name != "index.html")

    def _send(self, status: int, body: bytes, ctype: str, cache: bool = True,
              extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "max-age=3600" if cache else "no-store")
        for key, value in {**ISOLATION, **(extra or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _proxy(self) -> None:
        """Forward to Orthanc, which serves its DICOMweb root at the same path."""
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k in PROXIED_REQUEST_HEADERS if (v := self.headers.get(k))}
        conn = http.client.HTTPConnection("127.0.0.1", self.server.orthanc_port, timeout=120)
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            extra = {k: v for k in PROXIED_RESPONSE_HEADERS[1:] if (v := resp.getheader(k))}
            self._send(resp.status, data, resp.getheader("Content-Type") or "application/octet-stream",
                       cache=False, extra=extra)
        except (OSError, http.client.HTTPException) as exc:
            self._send(502, f"Orthanc did not answer: {exc}\n".encode(), "text/plain")
        finally:
            conn.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    dist: Path
    app_config: bytes
    orthanc_port: int
    access_log: Any


class ViewerServer:
    """OHIF on http://127.0.0.1:PORT/ reading `orthanc` (started with dicomweb=True) through /dicom-web/."""

    def __init__(self, orthanc: LocalOrthanc, port: int | None = None, access_log: Path | None = None,
                 dist: Path | None = None) -> None:
        if not orthanc.dicomweb:
            raise ValueError("the viewer reads Orthanc through DICOMweb: use LocalOrthanc(..., dicomweb=True)")
        self.orthanc = orthanc
        self.port = port or free_port()
        self.access_log_path = access_log
        self.dist = dist  # the viewer's dist/ (default: the fetched OHIF)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def study_url(self, study_uid: str) -> str:
        """The viewer opened on one study (OHIF's basic viewer mode)."""
        return f"{self.url}/viewer?StudyInstanceUIDs={study_uid}"

    def start(self) -> None:
        server = _Server(("127.0.0.1", self.port), _Handler)
        server.dist = (self.dist or dist_dir()).resolve()
        server.app_config = app_config().encode()
        server.orthanc_port = self.orthanc.http_port
        server.access_log = open(self.access_log_path, "a", buffering=1) if self.access_log_path else None
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="ohif-viewer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if self._server.access_log is not None:
                self._server.access_log.close()
            self._server = None

    def __enter__(self) -> "ViewerServer":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def for_ohif(config: Path, destination: str = "pacs") -> Path:
    """A node config whose `destination` is read with OHIF: the SEG profile OHIF reads right
    (destinations.X.viewer: ohif, byte frames at any image size). Rewrites the file; returns it."""
    import yaml

    cfg = yaml.safe_load(config.read_text())
    cfg["destinations"][destination]["viewer"] = "ohif"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return config


def wait_for_interrupt() -> None:
    """Sleep until Ctrl-C (SIGINT) or SIGTERM: `kill` stops a backgrounded server as cleanly as Ctrl-C."""
    import signal

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def upload(orthanc: LocalOrthanc, paths: list[Path]) -> set[str]:
    """POST every DICOM file under `paths` to Orthanc's REST API; returns the study UIDs stored."""
    import json
    import urllib.request

    studies: set[str] = set()
    files = [f for p in paths for f in (sorted(p.rglob("*")) if p.is_dir() else [p]) if f.is_file()]
    for f in files:
        req = urllib.request.Request(orthanc.url + "/instances", data=f.read_bytes(), method="POST",
                                     headers={"Content-Type": "application/dicom"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            answer = json.loads(resp.read())
        studies.add(orthanc.get(f"/studies/{answer['ParentStudy']}")["MainDicomTags"]["StudyInstanceUID"])
    if not studies:
        raise ValueError(f"no DICOM files under {', '.join(map(str, paths))}")
    return studies


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m testbed.viewer", description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="+", type=Path, help="DICOM files or folders (a study: MR series, SEG, SR)")
    p.add_argument("--port", type=int, default=0, help="viewer port (default: a free one)")
    p.add_argument("--screenshot", type=Path, help="open the study in headless Chromium, save a PNG here, exit")
    p.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the viewport (with --screenshot)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ohif-orthanc-") as tmp, \
            LocalOrthanc(Path(tmp), dicomweb=True) as orthanc, \
            ViewerServer(orthanc, port=args.port or None) as viewer:
        studies = sorted(upload(orthanc, args.paths))
        for uid in studies:
            print(viewer.study_url(uid), flush=True)
        if args.screenshot is None:
            print("viewer and Orthanc running; Ctrl-C stops them", file=sys.stderr)
            wait_for_interrupt()
            return 0
        from testbed.browser import Chromium

        with Chromium(Path(tmp) / "chrome") as browser:
            browser.open_study(viewer.study_url(studies[0]), timeout=args.wait)
            browser.screenshot(args.screenshot)
            for entry in browser.console_errors():
                print(f"console: {entry}", file=sys.stderr)
        print(args.screenshot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
