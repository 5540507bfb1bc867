"""The node's HTTP side: /metrics, /health, the status page, overlay thumbnails, job retry.

Why the standard library's threading HTTP server: a handful of requests a minute from
Prometheus and an operator does not justify a framework, and it runs in the node's process
so it sees the same catalog and the same loaded model. Loopback by default; a token (when
set) is required for everything but /health (probes must not need secrets). The only
action, retry of a failed job, is a POST that carries the token in its body, and is not
offered at all without a token.
"""
from __future__ import annotations

import hmac
import json
import logging
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, quote, urlsplit

from dicom_node.catalog import Catalog
from dicom_node.config import Config
from dicom_node.health import HealthChecker
from dicom_node.metrics import RefusalCounter, render_metrics
from dicom_node.status_page import THUMB_NAME, render_status_page

log = logging.getLogger(__name__)

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
MAX_FORM_BYTES = 4096


class WebServer:
    """HTTP server in a daemon thread; `start()` binds (port 0 = any free port), `stop()` closes."""

    def __init__(self, config: Config, catalog: Catalog, refusals: RefusalCounter | None = None,
                 alive: Callable[[], dict[str, bool]] | None = None) -> None:
        self.config = config
        self.catalog = catalog
        self.refusals = refusals or RefusalCounter()
        self.health = HealthChecker(config, catalog, alive=alive)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("WebServer.port: not started")
        return int(self._server.server_address[1])

    def start(self) -> None:
        web = self.config.web
        app = self

        class Handler(_Handler):
            server_app = app

        try:
            self._server = ThreadingHTTPServer((web.host, web.port), Handler)
        except OSError as exc:
            raise RuntimeError(
                f"cannot serve HTTP on {web.host}:{web.port} ({exc}): change web.port or web.host") from exc
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="web", daemon=True)
        self._thread.start()
        log.info("web: status page, /metrics and /health on http://%s:%d/%s", web.host, self.port,
                 " (token required)" if web.token else "")

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if self._thread is not None:
                self._thread.join(timeout=10)
        self._server = None

    # ---- what the handler asks for ----------------------------------------------------------
    def authorized(self, supplied: str | None) -> bool:
        token = self.config.web.token
        return not token or (supplied is not None and hmac.compare_digest(supplied.encode(), token.encode()))

    def thumb_path(self, job_id: int) -> Path:
        return self.config.data_dir / "results" / f"job-{job_id}" / THUMB_NAME


class _Handler(BaseHTTPRequestHandler):
    server_app: WebServer
    server_version = "dicom-node"
    sys_version = ""

    def log_message(self, fmt: str, *args: Any) -> None:  # the path only: never the query (token)
        log.debug("web %s %s -> %s", self.command, urlsplit(self.path).path, args[1] if len(args) > 1 else "")

    def _send(self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in {**SECURITY_HEADERS, **(headers or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj, indent=1).encode(), "application/json")

    def _token(self, form: dict[str, list[str]] | None = None) -> str | None:
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            return auth[7:].strip()
        for source in (form or {}, parse_qs(urlsplit(self.path).query)):
            if source.get("token"):
                return source["token"][0]
        return None

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        app = self.server_app
        path = urlsplit(self.path).path
        try:
            if path in ("/health", "/health/ready", "/health/live"):
                live, ready, body = app.health.report()
                ok = live if path == "/health/live" else ready
                return self._json(200 if ok else 503, body)
            if not app.authorized(self._token()):
                return self._json(401, {"error": "token required: Authorization: Bearer TOKEN or ?token=TOKEN"})
            if path == "/metrics":
                text = render_metrics(app.catalog, app.config.data_dir, app.refusals)
                return self._send(200, text.encode(), "text/plain; version=0.0.4; charset=utf-8")
            if path == "/":
                notice = parse_qs(urlsplit(self.path).query).get("notice", [""])[0][:200]
                page = render_status_page(app.catalog, app.config.data_dir, app.config.node.ae_title,
                                          app.config.web.status_limit, token=self._token() or "",
                                          can_retry=bool(app.config.web.token), notice=notice)
                return self._send(200, page.encode(), "text/html; charset=utf-8")
            m = re.fullmatch(r"/jobs/(\d{1,12})/thumb\.png", path)
            if m:
                thumb = app.thumb_path(int(m.group(1)))
                if thumb.is_file():
                    return self._send(200, thumb.read_bytes(), "image/png")
            return self._json(404, {"error": f"no such page: {path}"})
        except Exception as exc:  # one bad request must not take the server down
            log.exception("web: GET %s failed", path)
            return self._json(500, {"error": f"{type(exc).__name__}: {exc}"})

    def do_POST(self) -> None:
        from dicom_node.jobs import retry_job

        app = self.server_app
        path = urlsplit(self.path).path
        m = re.fullmatch(r"/jobs/(\d{1,12})/retry", path)
        if m is None:
            return self._json(404, {"error": f"no such action: {path}"})
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_FORM_BYTES:
            return self._json(413, {"error": "form too large"})
        form = parse_qs(self.rfile.read(length).decode("utf-8", "replace")) if length else {}
        if not app.config.web.token:
            return self._json(403, {"error": "retry from the web page needs web.token set; "
                                              "use `dicom-node retry JOB` on the node"})
        supplied = self._token(form)
        if not app.authorized(supplied):
            return self._json(401, {"error": "token required"})
        job_id = int(m.group(1))
        try:
            what = retry_job(app.catalog, job_id)
            status, notice = 303, f"job {job_id}: {what}"
            log.info("web: retry of job %d requested: %s", job_id, what)
        except ValueError as exc:
            status, notice = 303, f"retry refused: {exc}"
        if "text/html" not in self.headers.get("Accept", "") and "application/json" in self.headers.get("Accept", ""):
            return self._json(200 if notice.startswith("job") else 409, {"result": notice})
        location = f"/?token={quote(supplied or '')}&notice={quote(notice)}"
        return self._send(status, b"", "text/plain", {"Location": location})
