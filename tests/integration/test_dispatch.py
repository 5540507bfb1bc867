"""Dispatch against a real Orthanc: delivery, retries with backoff, give-up, and `retry`."""
from __future__ import annotations

import json
import shutil
import sqlite3
import time
from pathlib import Path

import pydicom
import pytest

from dicom_node.catalog import Catalog, now
from dicom_node.config import Config, DestinationSettings, DispatchSettings, StorageSettings
from dicom_node.dispatch import Dispatcher, backoff_seconds
from dicom_node.jobs import retry_job
from testbed.orthanc import LocalOrthanc, free_port
from tests.helpers.catalog import add_series
from tests.helpers.env import require_shared, require_tool


def make_config(tmp_path: Path, port: int, max_attempts: int = 3) -> Config:
    cfg = Config(storage=StorageSettings(data_dir=str(tmp_path / "node")),
                 destinations={"pacs": DestinationSettings(ae_title="ORTHANC", host="127.0.0.1", port=port)},
                 dispatch=DispatchSettings(max_attempts=max_attempts, backoff_initial_s=0.05, backoff_factor=2.0,
                                           backoff_max_s=0.2, timeout_s=5.0))
    return cfg


def queue_one(cfg: Config, cat: Catalog, src: Path) -> int:
    """A job in state 'dispatching' with one pending dispatch of a real MR file."""
    rel = Path("results/job-1/mr.dcm")
    (cfg.data_dir / rel).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, cfg.data_dir / rel)
    t = now()
    with cat.transaction() as con:
        add_job(con, 1, "dispatching", ["pacs"])
        con.execute("INSERT INTO dispatches (job_id, destination, kind, sop_instance_uid, path, state, "
                    "next_attempt_at) VALUES (1, 'pacs', 'sr', '1.2.3.4', ?, 'pending', ?)", (str(rel), t))
    return 1


def add_job(con: sqlite3.Connection, job_id: int, state: str, destinations: list[str]) -> None:
    """A job row in `state` (its series made for it), as the worker leaves one."""
    t = now()
    con.execute("INSERT INTO jobs (id, series_id, generation, pipeline, rule, destinations, state, created_at, "
                "updated_at) VALUES (?, ?, 1, 'spinal_cord', 'spine-t2', ?, ?, ?, ?)",
                (job_id, add_series(con, f"1.2.{job_id}"), json.dumps(destinations), state, t, t))


def job_state(cat: Catalog) -> tuple[str, str | None]:
    row = cat.query("SELECT state, reason FROM jobs WHERE id=1")[0]
    return row["state"], row["reason"]


def test_backoff_grows_and_caps() -> None:
    s = DispatchSettings(backoff_initial_s=2.0, backoff_factor=2.0, backoff_max_s=10.0)
    assert [backoff_seconds(s, n) for n in (1, 2, 3, 4, 5)] == [2.0, 4.0, 8.0, 10.0, 10.0]


@pytest.mark.integration
def test_delivers_to_orthanc(tmp_path: Path) -> None:
    require_tool("Orthanc")
    src = require_shared("dicom/pydicom/MR_small.dcm")
    with LocalOrthanc(tmp_path / "pacs") as pacs:
        cfg = make_config(tmp_path, pacs.dicom_port)
        cat = Catalog(cfg.catalog_path)
        queue_one(cfg, cat, src)
        assert Dispatcher(cfg, cat).run_due() == 1
        assert job_state(cat) == ("done", None)
        assert len(pacs.get("/instances")) == 1
        attempts = cat.query("SELECT ok, status FROM dispatch_attempts")
        assert [(a["ok"], a["status"]) for a in attempts] == [(1, "0x0000")]


@pytest.mark.integration
def test_outage_retries_then_fails_then_retry_delivers(tmp_path: Path) -> None:
    require_tool("Orthanc")
    src = require_shared("dicom/pydicom/MR_small.dcm")
    port = free_port()  # nothing listens yet: the PACS is down
    cfg = make_config(tmp_path, port, max_attempts=3)
    cat = Catalog(cfg.catalog_path)
    queue_one(cfg, cat, src)
    d = Dispatcher(cfg, cat)
    deadline = time.monotonic() + 20
    while job_state(cat)[0] not in ("failed",) and time.monotonic() < deadline:
        if not d.run_due():
            time.sleep(0.05)
    state, reason = job_state(cat)
    assert state == "failed"
    assert "dispatch failed" in (reason or "") and "pacs sr" in reason
    attempts = cat.query("SELECT at, ok FROM dispatch_attempts ORDER BY id")
    assert len(attempts) == 3 and not any(a["ok"] for a in attempts)
    gaps = [b["at"] - a["at"] for a, b in zip(attempts, attempts[1:])]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1  # exponential backoff between attempts

    with LocalOrthanc(tmp_path / "pacs", dicom_port=port) as pacs:  # the PACS comes back
        assert retry_job(cat, 1) == "results queued for sending again"
        assert job_state(cat)[0] == "dispatching"
        d.run_due()
        assert job_state(cat) == ("done", None)
        assert len(pacs.get("/instances")) == 1


def test_retry_refuses_running_job(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "c.sqlite")
    with cat.transaction() as con:
        add_job(con, 7, "running", [])
    with pytest.raises(ValueError, match="job 7 is running"):
        retry_job(cat, 7)
    with pytest.raises(ValueError, match="no job 8"):
        retry_job(cat, 8)


@pytest.mark.integration
def test_a_jobs_seg_and_sr_go_in_one_association(tmp_path: Path) -> None:
    """Issue 21: one handshake per job and destination, each file its own C-STORE and outcome."""
    from pynetdicom import AE, evt

    files = {"seg": require_shared("dicom/dcmqi/seg.dcm"), "sr": require_shared("dicom/highdicom/sr_document.dcm")}
    associations: list[int] = []
    stored: list[str] = []
    pacs = AE(ae_title="PACS")
    for f in files.values():
        pacs.add_supported_context(pydicom.dcmread(f, stop_before_pixels=True).SOPClassUID)
    handlers = [(evt.EVT_ACCEPTED, lambda event: associations.append(1)),
                (evt.EVT_C_STORE, lambda event: stored.append(str(event.request.AffectedSOPInstanceUID)) or 0)]
    server = pacs.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
    try:
        cfg = make_config(tmp_path, server.server_address[1])
        cfg.destinations["pacs"].ae_title = "PACS"
        cat = Catalog(cfg.catalog_path)
        t = now()
        with cat.transaction() as con:
            add_job(con, 1, "dispatching", ["pacs"])
            for kind, src in files.items():
                rel = Path(f"results/job-1/{kind}.dcm")
                (cfg.data_dir / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(src, cfg.data_dir / rel)
                sop = pydicom.dcmread(src, stop_before_pixels=True).SOPInstanceUID
                con.execute("INSERT INTO dispatches (job_id, destination, kind, sop_instance_uid, path, state, "
                            "next_attempt_at) VALUES (1, 'pacs', ?, ?, ?, 'pending', ?)", (kind, sop, str(rel), t))
        assert Dispatcher(cfg, cat).run_due("pacs") == 2
    finally:
        server.shutdown()
    assert len(associations) == 1 and len(stored) == 2
    assert job_state(cat) == ("done", None)
    assert [tuple(r) for r in cat.query("SELECT ok, status FROM dispatch_attempts")] == [(1, "0x0000")] * 2
