"""How dispatch behaves through a long outage, without a network: the retry window, the order a
backlog is sent in, one destination never holding up another, and what the operator sees.

Issue 23 item 6: the old defaults gave up after about a minute. The network path itself is in
tests/integration/test_dispatch.py and tests/faults/test_outage.py.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from dicom_node import dispatch
from dicom_node.catalog import Catalog
from dicom_node.config import Config, DestinationSettings, DispatchSettings, StorageSettings
from dicom_node.dispatch import Dispatcher, SendOutcome, backoff_seconds
from dicom_node.jobs import JobState
from dicom_node.metrics import render_metrics
from dicom_node.status_page import render_status_page
from tests.helpers.catalog import dispatching_jobs


def test_the_default_retries_outlive_a_night_of_pacs_maintenance() -> None:
    settings = DispatchSettings()
    waits = [backoff_seconds(settings, attempt) for attempt in range(1, settings.max_attempts)]
    assert sum(waits) >= 24 * 3600, f"the defaults give up after {sum(waits) / 3600:.1f} h"
    assert max(waits) == settings.backoff_max_s <= 900  # a PACS that is back waits at most 15 min


@pytest.fixture()
def node(tmp_path: Path) -> tuple[Config, Catalog]:
    cfg = Config(storage=StorageSettings(data_dir=str(tmp_path / "node"), fsync=False),
                 destinations={"down": DestinationSettings(port=1), "up": DestinationSettings(port=2)})
    cat = Catalog(cfg.catalog_path)
    dispatching_jobs(cat, cfg.data_dir, ("up", "down"))  # three jobs, each with a SEG for both
    return cfg, cat


def test_a_down_destination_costs_the_others_one_attempt_per_round(node, monkeypatch) -> None:
    cfg, cat = node
    sent: list[tuple[str, str]] = []

    def fake_store(path: Path, dest: DestinationSettings, *args: object) -> SendOutcome:
        name = "down" if dest.port == 1 else "up"
        sent.append((name, path.name))
        return SendOutcome(name == "up", "0x0000" if name == "up" else "connection refused", 0.0)

    monkeypatch.setattr(dispatch, "c_store", fake_store)
    assert Dispatcher(cfg, cat).run_due() == 4  # one try for 'down', then all three for 'up'
    assert sent == [("up", "job-1-up.dcm"), ("down", "job-1-down.dcm"), ("up", "job-2-up.dcm"),
                    ("up", "job-3-up.dcm")], "oldest job first (though later ones look due earlier), 'down' once"
    waiting = cat.query("SELECT job_id, attempts FROM dispatches WHERE destination='down' ORDER BY job_id")
    assert [(r["job_id"], r["attempts"]) for r in waiting] == [(1, 1), (2, 0), (3, 0)]


def test_the_operator_sees_who_a_job_waits_for_and_when_it_tries_again(node, monkeypatch) -> None:
    cfg, cat = node
    monkeypatch.setattr(dispatch, "c_store", lambda path, dest, *a: SendOutcome(dest.port == 2, "refused", 0.0))
    Dispatcher(cfg, cat).run_due()
    row = cat.query("SELECT j.state, d.next_attempt_at FROM jobs j JOIN dispatches d ON d.job_id = j.id "
                    "WHERE j.id = 1 AND d.destination = 'down'")[0]
    assert row["state"] == JobState.RETRYING.value
    page = render_status_page(cat, cfg.data_dir, "node", 10)
    again = time.strftime("%m-%d %H:%M:%S", time.localtime(row["next_attempt_at"]))
    assert f"waiting for down: next attempt {again}" in page
    text = render_metrics(cat, cfg.data_dir)
    assert 'dicom_node_dispatch_waiting{destination="down"} 1' in text
    assert 'dicom_node_dispatch_next_attempt_timestamp_seconds{destination="down"}' in text
