"""Operating the node: /metrics, /health and the status page of a running node, in a real browser.

One node runs in-process with the tiny random-weight model; dcmtk's storescu sends a spine
series (processed) and a brain series (stored only), a rogue echoscu is refused, and the PACS
destination is a closed port, so the job fails in dispatch with a reason. Then:
Prometheus' own parser reads /metrics, /health says ready, headless Chromium (Debian's
chromium + chromedriver, driven by Selenium) shows the page with the overlay thumbnail, a
screenshot is saved, and the retry button re-queues the results (a new dispatch attempt).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from dicom_node.catalog import Catalog
from dicom_node.config import (
    Config,
    DestinationSettings,
    DispatchSettings,
    ModelSettings,
    PeerSettings,
    SecuritySettings,
    StorageSettings,
    WebSettings,
)
from dicom_node.service import Node
from dicom_node.web import WebServer
from testbed.node_process import wait_until
from testbed.orthanc import free_port
from testbed.series import write_series
from testbed.tiny_model import make_tiny_model
from tests.helpers.env import IN_CI, require_shared, require_tool

TOKEN = "test-token-0123456789"
RULES = [
    {"name": "spine", "when": {"attribute": "SeriesDescription", "matches": "spine"}, "pipeline": "spinal_cord",
     "destinations": ["pacs"]},
    {"name": "rest", "when": {}, "pipeline": None, "destinations": []},
]


def http(url: str, token: str | None = None, data: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    req = urllib.request.Request(url, data=data, headers={**(headers or {})})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as rsp:
            return rsp.status, rsp.read(), dict(rsp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def metric(families: dict, name: str, **labels: str) -> float:
    for sample in families[name].samples if name in families else []:
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
            return sample.value
    for fam in families.values():
        for sample in fam.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise KeyError(f"{name}{labels} not in /metrics")


def chromium_driver(tmp: Path):
    """Selenium with Debian's chromium + chromedriver (no browser download is possible here)."""
    browser, driver_bin = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver_bin):
        if IN_CI:
            pytest.fail("chromium and chromium-driver are required in CI (make peers)")
        pytest.skip("chromium / chromedriver not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,900", f"--user-data-dir={tmp / 'chrome-profile'}"):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=driver_bin), options=opts)


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """A node that has received two series and failed to deliver the spine one's results."""
    storescu, echoscu = require_tool("storescu"), require_tool("echoscu")
    require_tool("dciodvfy")
    tmp = tmp_path_factory.mktemp("web")
    model = make_tiny_model(tmp / "model", thresholds=(0.5, 1.01), patch=(32, 32, 32))
    cfg = Config(
        storage=StorageSettings(data_dir=str(tmp / "node"), fsync=False),
        models={"default": ModelSettings(path=str(model))},
        destinations={"pacs": DestinationSettings(port=free_port(), ae_title="NOBODY")},  # closed port
        dispatch=DispatchSettings(max_attempts=1, timeout_s=5.0),
        security=SecuritySettings(allowed_peers=[PeerSettings(ae_title="TEST_MR")], min_free_disk=0),
        web=WebSettings(enabled=True, port=0, token=TOKEN),
        routing=RULES,
    )
    cfg.node.port = 0
    cfg.worker.device, cfg.worker.torch_threads, cfg.worker.poll_interval_s = "cpu", 1, 0.2
    cfg.completion.poll_interval_s = 0.2
    src = require_shared("lesion-example/t2_fake_lesion.nii.gz")
    spine = write_series(src, tmp / "spine", series_description="T2 SAG SPINE", uid_seed="web-spine")
    brain = write_series(src, tmp / "brain", series_description="T2 SAG BRAIN", uid_seed="web-brain")
    node = Node(cfg)
    node.start()
    try:
        assert node.web is not None
        for folder in (tmp / "spine", tmp / "brain"):
            subprocess.run([storescu, "-aet", "TEST_MR", "-aec", "SPINE_NODE", "+sd", "+r", "127.0.0.1",
                            str(node.port), str(folder)], check=True, capture_output=True, timeout=120)
        rogue = subprocess.run([echoscu, "-aet", "ROGUE", "-aec", "SPINE_NODE", "127.0.0.1", str(node.port)],
                               capture_output=True, timeout=60)
        assert rogue.returncode != 0
        cat = node.catalog
        wait_until(lambda: cat.query("SELECT 1 FROM jobs WHERE state='failed'"), 240, 0.2, "job failed in dispatch")
        yield node, f"http://127.0.0.1:{node.web.port}", tmp, len(spine) + len(brain)
    finally:
        node.stop()


def test_metrics_prometheus_format_and_values(running) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    node, base, _tmp, n_instances = running
    assert http(f"{base}/metrics")[0] == 401  # token set: not without it
    status, body, headers = http(f"{base}/metrics", TOKEN)
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}  # the reference parser
    assert metric(families, "dicom_node_instances_received_total", calling_ae="TEST_MR") == n_instances
    assert metric(families, "dicom_node_refused_total", calling_ae="ROGUE", what="association") == 1
    assert metric(families, "dicom_node_series_completed_total", reason="expected-count") == 2
    assert metric(families, "dicom_node_jobs", state="failed") == 1
    assert metric(families, "dicom_node_series", state="ignored") == 1
    assert metric(families, "dicom_node_stage_seconds_count", stage="inference") == 1
    assert metric(families, "dicom_node_stage_seconds_bucket", stage="inference", le="+Inf") == 1
    assert metric(families, "dicom_node_stage_seconds_sum", stage="inference") > 0
    assert metric(families, "dicom_node_stage_seconds_count", stage="end_to_end") == 0  # nothing delivered
    assert metric(families, "dicom_node_dispatch_attempts_total", destination="pacs", outcome="error") == 2  # SEG + SR
    assert metric(families, "dicom_node_dispatch_failed") == 2
    assert metric(families, "dicom_node_disk_free_bytes") > 0


def test_health_ready_and_unready(running, tmp_path: Path) -> None:
    node, base, _tmp, _n = running
    status, body, _ = http(f"{base}/health")  # open without the token: for probes
    report = json.loads(body)
    assert status == 200 and report["ready"] and report["live"], report
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["catalog"]["ok"] and checks["disk"]["ok"]
    assert checks["model:default"]["ok"] and "(loaded)" in checks["model:default"]["detail"]
    assert set(report["threads"]) == {"listener", "completion", "worker", "dispatch-pacs", "dispatch-unconfigured",
                                      "retention"}  # one dispatch lane per destination, one for removed ones

    # a node whose worker thread died, whose model is gone and whose disk is "full": 503, checks named
    model = tmp_path / "gone"
    cfg = Config(storage=StorageSettings(data_dir=str(tmp_path / "d")), models={"default": ModelSettings(str(model))},
                 security=SecuritySettings(min_free_disk="99.99%"), web=WebSettings(enabled=True, port=0))
    web = WebServer(cfg, Catalog(cfg.catalog_path), alive=lambda: {"listener": True, "worker": False})
    web.start()
    try:
        status, body, _ = http(f"http://127.0.0.1:{web.port}/health")
        report = json.loads(body)
        assert status == 503 and report["status"] == "down" and not report["live"]
        failing = {c["name"] for c in report["checks"] if not c["ok"]}
        assert failing == {"disk", "model:default"}, report
        assert http(f"http://127.0.0.1:{web.port}/health/live")[0] == 503
        # no token configured: the page is readable on loopback, the retry action is refused
        assert http(f"http://127.0.0.1:{web.port}/")[0] == 200
        assert http(f"http://127.0.0.1:{web.port}/jobs/1/retry", data=b"")[0] == 403
    finally:
        web.stop()


def test_status_page_in_chromium_with_retry(running) -> None:
    from selenium.webdriver.common.by import By

    node, base, tmp, _n = running
    attempts = lambda: node.catalog.query("SELECT COUNT(*) FROM dispatch_attempts")[0][0]  # noqa: E731
    before = attempts()
    assert http(f"{base}/")[0] == 401
    shots = Path(tempfile.gettempdir()) / "dicom-node-web"
    shots.mkdir(exist_ok=True)
    driver = chromium_driver(tmp)
    try:
        driver.set_page_load_timeout(60)
        driver.get(f"{base}/?token={TOKEN}")
        rows = driver.find_elements(By.CSS_SELECTOR, "table#series tr[data-series]")
        texts = [r.text for r in rows]
        assert len(rows) == 2, texts
        spine = next(r for r in rows if "T2 SAG SPINE" in r.text)
        brain = next(r for r in rows if "T2 SAG BRAIN" in r.text)
        assert "TEST_MR" in spine.text and "routed" in spine.text and "spine" in spine.text
        assert "failed" in spine.text and "dispatch failed" in spine.text and "lesions: 0" in spine.text
        assert "ignored" in brain.text and "rest" in brain.text
        img = spine.find_element(By.TAG_NAME, "img")
        assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) >= 100
        driver.save_screenshot(str(shots / "status-before-retry.png"))

        spine.find_element(By.CSS_SELECTOR, "button[id^=retry-]").click()
        wait_until(lambda: driver.find_elements(By.ID, "notice"), 30, 0.2, "page after retry")
        assert "results queued for sending again" in driver.find_element(By.ID, "notice").text
        wait_until(lambda: attempts() > before, 60, 0.2, "a new dispatch attempt after retry")
        driver.save_screenshot(str(shots / "status-after-retry.png"))
    finally:
        driver.quit()
    print(f"screenshots in {shots}")
