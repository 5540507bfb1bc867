"""A real Orthanc on loopback, used as the PACS by `dicom-node demo`, the tests and the benches.

Orthanc runs from Debian's package with a config written here: its own storage folders,
DICOM and HTTP on free loopback ports, no remote access. No plugins, unless `dicomweb=True`
loads Debian's DICOMweb plugin (package orthanc-dicomweb: QIDO-RS, WADO-RS, STOW-RS under
``/dicom-web/``), which viewers and DICOMweb destinations need. Its REST API tells what arrived
(`/series`, `/instances/{id}/file`).

For DICOMweb destination tests it can also ask for HTTP basic auth (`users`: Orthanc's
RegisteredUsers); its own REST helpers then authenticate as the first user. (HTTPS: Debian's
Orthanc 1.10.1 dies with SIGSEGV on its first connection with SslEnabled, RSA or EC key alike;
tests put testbed.tls_front in front of it instead, as nginx or stunnel would be in a hospital.)
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def orthanc_binary() -> str:
    found = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if os.path.exists("/usr/sbin/Orthanc") else None)
    if found is None:
        raise FileNotFoundError("Orthanc is not installed (Debian package 'orthanc': make peers)")
    return found


DICOMWEB_PLUGINS = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so", "/usr/lib/orthanc/libOrthancDicomWeb.so")


def dicomweb_plugin() -> str:
    """The DICOMweb plugin's shared library (Debian package orthanc-dicomweb)."""
    for path in DICOMWEB_PLUGINS:
        if os.path.exists(path):
            return path
    raise FileNotFoundError("Orthanc's DICOMweb plugin is not installed (Debian orthanc-dicomweb: make peers)")


class LocalOrthanc:
    """Start/stop one Orthanc with its state under `workdir`."""

    def __init__(self, workdir: Path, ae_title: str = "ORTHANC", dicom_port: int | None = None,
                 http_port: int | None = None, dicomweb: bool = False, users: dict[str, str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.ae_title = ae_title
        self.dicom_port = dicom_port or free_port()
        self.http_port = http_port or free_port()
        self.dicomweb = dicomweb
        self.users = dict(users or {})
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb root (QIDO-RS/WADO-RS/STOW-RS); only served when started with dicomweb=True."""
        return f"{self.url}/dicom-web"

    def write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg = {
            "Name": "spine-node-test-pacs",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.ae_title,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": bool(self.users),
            "DicomServerEnabled": True,
            "DicomAlwaysAllowStore": True,
            "DicomCheckCalledAet": True,
            "Plugins": [dicomweb_plugin()] if self.dicomweb else [],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "Ssl": False},
            "StableAge": 2,
            "HttpTimeout": 30,
        }
        if self.users:
            cfg["RegisteredUsers"] = self.users
        path = self.workdir / "orthanc.json"
        path.write_text(json.dumps(cfg, indent=2))
        return path

    def start(self, timeout_s: float = 30.0) -> None:
        config = self.write_config()
        log = open(self.workdir / "orthanc.log", "ab")
        self.proc = subprocess.Popen([orthanc_binary(), str(config)], stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.proc.returncode}; see {self.workdir / 'orthanc.log'}")
            try:
                self.get("/system")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"Orthanc did not answer on {self.url} within {timeout_s} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def __enter__(self) -> "LocalOrthanc":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- REST -----------------------------------------------------------------------------
    def _open(self, path: str, timeout: float) -> bytes:
        """GET, as the first registered user when Orthanc asks for credentials."""
        request = urllib.request.Request(self.url + path)
        if self.users:
            user, password = next(iter(self.users.items()))
            request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return bytes(resp.read())

    def get(self, path: str) -> Any:
        body = self._open(path, 30)
        return json.loads(body) if body[:1] in (b"{", b"[") else body

    def get_bytes(self, path: str) -> bytes:
        return self._open(path, 60)

    def series_by_modality(self) -> dict[str, list[dict[str, Any]]]:
        """Orthanc series grouped by Modality (MR, SEG, SR, ...)."""
        out: dict[str, list[dict[str, Any]]] = {}
        for sid in self.get("/series"):
            info = self.get(f"/series/{sid}")
            out.setdefault(info["MainDicomTags"].get("Modality", ""), []).append(info)
        return out

    def instance_files(self, series_info: dict[str, Any]) -> list[bytes]:
        return [self.get_bytes(f"/instances/{iid}/file") for iid in series_info["Instances"]]
