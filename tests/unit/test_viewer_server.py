"""The viewer server (testbed/viewer.py) without a browser: the single-page app's routes, MIME types,
cross-origin isolation, our app-config, and /dicom-web/ proxied as it is (status, body, Accept) to
a stand-in for Orthanc's DICOMweb plugin."""
from __future__ import annotations

import http.client
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from testbed.ohif import app_config
from testbed.orthanc import LocalOrthanc, free_port
from testbed.viewer import ViewerServer

INDEX = b"<!doctype html><title>viewer</title>"


class _Upstream(BaseHTTPRequestHandler):
    """Answers like Orthanc's DICOMweb root would, and records what it was asked."""

    seen: list[dict[str, Any]] = []

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.seen.append({"method": self.command, "path": self.path, "accept": self.headers.get("Accept"),
                          "body": body})
        status, payload = (400, b'{"error": "bad"}') if "bad" in self.path else (200, b'[{"00100020": {}}]')
        self.send_response(status)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _answer  # noqa: N815 (http.server's naming)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[ViewerServer, list[dict[str, Any]]]]:
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "index.html").write_bytes(INDEX)
    (dist / "app.bundle.js").write_text("console.log(1)")
    (dist / "codec.wasm").write_bytes(b"\0asm")
    (tmp_path / "secret.txt").write_text("not the viewer's")
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    _Upstream.seen = []
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    orthanc = LocalOrthanc(tmp_path / "orthanc", dicomweb=True, http_port=upstream.server_address[1])
    with ViewerServer(orthanc, dist=dist) as viewer:
        yield viewer, _Upstream.seen
    upstream.shutdown()
    upstream.server_close()


def fetch(viewer: ViewerServer, path: str, method: str = "GET", body: bytes | None = None,
          headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", viewer.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_routes_of_the_single_page_app_serve_index_html_cross_origin_isolated(served: Any) -> None:
    viewer, _ = served
    for route in ("/", "/viewer?StudyInstanceUIDs=1.2.3", "/segmentation", "/viewer/dicomweb"):
        status, headers, body = fetch(viewer, route)
        assert (status, body) == (200, INDEX), route
        assert headers["content-type"].startswith("text/html")
        assert headers["cross-origin-opener-policy"] == "same-origin"
        assert headers["cross-origin-embedder-policy"] == "require-corp"


def test_assets_have_their_types_and_missing_ones_are_not_the_app(served: Any) -> None:
    viewer, _ = served
    assert fetch(viewer, "/app.bundle.js")[1]["content-type"] == "text/javascript"
    assert fetch(viewer, "/codec.wasm")[1]["content-type"] == "application/wasm"  # streaming compile needs it
    assert fetch(viewer, "/missing.bundle.js")[0] == 404
    assert fetch(viewer, "/%2e%2e/secret.txt")[0] in (403, 404)


def test_app_config_points_at_the_same_origin_and_turns_the_prompts_off(served: Any) -> None:
    viewer, _ = served
    status, headers, body = fetch(viewer, "/app-config.js")
    text = body.decode()
    assert status == 200 and headers["content-type"] == "text/javascript" and text == app_config()
    assert not re.search(r"https?://", text), "no public (nor any absolute) URL in the viewer's config"
    config = json.loads(text[text.index("{", text.index("const cfg")):text.index(";\n  const root")])
    source = config["dataSources"][0]
    assert config["defaultDataSourceName"] == source["sourceName"]
    assert source["namespace"].endswith("dataSourcesModule.dicomweb")
    assert config["investigationalUseDialog"] == {"option": "never"}
    assert config["showWarningMessageForCrossOrigin"] is False and config["showCPUFallbackMessage"] is False
    assert {"ohif.tours": {"$set": []}} in config["customizationService"]
    for key in ("qidoRoot", "wadoRoot", "wadoUriRoot"):
        assert f"cfg.dataSources[0].configuration.{key} = root;" in text
    assert "window.location.origin + \"/dicom-web\"" in text


def test_dicomweb_is_proxied_as_asked_and_answered(served: Any) -> None:
    viewer, seen = served
    status, headers, body = fetch(viewer, "/dicom-web/studies?PatientID=DEMO-1&limit=101",
                                  headers={"Accept": "application/dicom+json"})
    assert (status, body) == (200, b'[{"00100020": {}}]')
    assert headers["content-type"] == "application/dicom+json"
    assert seen[-1] == {"method": "GET", "path": "/dicom-web/studies?PatientID=DEMO-1&limit=101",
                        "accept": "application/dicom+json", "body": b""}
    assert fetch(viewer, "/dicom-web/studies/bad/frames/1")[0] == 400  # Orthanc's refusals reach the viewer
    status, _, _ = fetch(viewer, "/dicom-web/studies", method="POST", body=b"--part--",
                         headers={"Content-Type": "multipart/related; type=\"application/dicom\""})
    assert status == 200 and seen[-1]["method"] == "POST" and seen[-1]["body"] == b"--part--"
    assert fetch(viewer, "/index.html", method="POST", body=b"x")[0] == 405


def test_an_orthanc_that_is_down_is_a_502(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "index.html").write_bytes(INDEX)
    with ViewerServer(LocalOrthanc(tmp_path, dicomweb=True, http_port=free_port()), dist=dist) as viewer:
        status, _, body = fetch(viewer, "/dicom-web/studies")
    assert status == 502 and b"Orthanc did not answer" in body


def test_a_viewer_needs_orthanc_with_dicomweb(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="dicomweb=True"):
        ViewerServer(LocalOrthanc(tmp_path))
