"""One dispatch lane per destination (issue 23): an outage of one destination never delays the others.

Without a network: `dicom_node.dispatch.c_store` is replaced by a fake in which destination
"down" blocks (as a PACS that does not answer until the timeout) and then fails. The network
path is in tests/faults/test_outage.py.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from dicom_node import dispatch
from dicom_node.catalog import Catalog
from dicom_node.config import (
    Config,
    DestinationSettings,
    DestinationTlsSettings,
    DispatchSettings,
    StorageSettings,
)
from dicom_node.dispatch import Dispatcher, SendOutcome
from dicom_node.jobs import JobState
from dicom_node.metrics import render_metrics
from dicom_node.status_page import render_status_page
from tests.helpers.catalog import dispatching_jobs

BLOCK_S = 2.0  # how long "down" holds an attempt before it fails
PORTS = {1: "down", 2: "up"}


def make_node(tmp_path: Path, configured: dict[str, DestinationSettings], rows_for: tuple[str, ...], jobs: int = 3,
              dispatch_settings: DispatchSettings | None = None) -> tuple[Config, Catalog]:
    """A catalog with `jobs` jobs in state dispatching, oldest first, each with one pending SEG for
    every destination in `rows_for` (configured or not); each file is job-N-DEST.dcm."""
    cfg = Config(storage=StorageSettings(data_dir=str(tmp_path / "node"), fsync=False), destinations=configured,
                 dispatch=dispatch_settings or DispatchSettings())
    cat = Catalog(cfg.catalog_path)
    dispatching_jobs(cat, cfg.data_dir, rows_for, jobs)
    return cfg, cat


def two_destinations() -> dict[str, DestinationSettings]:
    return {name: DestinationSettings(port=port) for port, name in PORTS.items()}


class FakeStore:
    """c_store's stand-in: "up" answers at once; "down" blocks up to BLOCK_S (or until released), then fails."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, float]] = []  # (destination, file, monotonic time of the answer)
        self.release = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, path: Path, dest: DestinationSettings, *args: object) -> SendOutcome:
        name = PORTS[dest.port]
        if name == "down":
            self.release.wait(BLOCK_S)
        with self.lock:
            self.sent.append((name, path.name, time.monotonic()))
        return SendOutcome(name == "up", "0x0000" if name == "up" else "no association (timed out)", 0.0)

    def files(self, name: str) -> list[str]:
        return [f for n, f, _ in self.sent if n == name]


def states(cat: Catalog, destination: str) -> list[tuple[int, str, int]]:
    rows = cat.query("SELECT job_id, state, attempts FROM dispatches WHERE destination=? ORDER BY job_id",
                     (destination,))
    return [(r["job_id"], r["state"], r["attempts"]) for r in rows]


def test_a_destination_that_hangs_does_not_delay_the_lane_of_another(tmp_path: Path, monkeypatch) -> None:
    cfg, cat = make_node(tmp_path, two_destinations(), ("down", "up"))
    fake = FakeStore()
    monkeypatch.setattr(dispatch, "c_store", fake)
    dispatcher = Dispatcher(cfg, cat)  # one dispatcher, as in the node: the lanes share it
    done: dict[str, float] = {}

    def lane(name: str) -> None:
        dispatcher.run_due(name)
        done[name] = time.monotonic()

    t0 = time.monotonic()
    threads = {name: threading.Thread(target=lane, args=(name,), daemon=True) for name in ("down", "up")}
    threads["down"].start()  # "down" first: its lane is blocked before "up" begins
    threads["up"].start()
    try:
        threads["up"].join(timeout=BLOCK_S)
        assert "up" in done, "the 'up' lane waited for 'down'"
        assert done["up"] - t0 < BLOCK_S / 2, f"'up' took {done['up'] - t0:.2f} s"
        assert threads["down"].is_alive(), "'down' should still be blocked in its first attempt"
        assert fake.files("up") == ["job-1-up.dcm", "job-2-up.dcm", "job-3-up.dcm"]  # oldest job first
        assert states(cat, "up") == [(1, "sent", 1), (2, "sent", 1), (3, "sent", 1)]
        assert [r[0] for r in cat.query("SELECT state FROM jobs ORDER BY id")] == ["dispatching"] * 3
    finally:
        threads["down"].join(timeout=BLOCK_S + 5)
    assert "down" in done and done["down"] - t0 >= BLOCK_S * 0.9
    # the 'down' lane kept its own rule: one attempt (oldest job), the rest waits for the next round
    assert fake.files("down") == ["job-1-down.dcm"]
    assert states(cat, "down") == [(1, "pending", 1), (2, "pending", 0), (3, "pending", 0)]
    assert cat.query("SELECT state FROM jobs WHERE id=1")[0][0] == JobState.RETRYING.value


def test_all_rows_in_one_round_as_before(tmp_path: Path, monkeypatch) -> None:
    """run_due() without a destination walks every destination's rows, as the single loop did."""
    cfg, cat = make_node(tmp_path, two_destinations(), ("down", "up"))
    fake = FakeStore()
    fake.release.set()  # no need to wait here
    monkeypatch.setattr(dispatch, "c_store", fake)
    assert Dispatcher(cfg, cat).run_due() == 4
    assert [(n, f) for n, f, _ in fake.sent] == [("down", "job-1-down.dcm"), ("up", "job-1-up.dcm"),
                                                 ("up", "job-2-up.dcm"), ("up", "job-3-up.dcm")]


def test_rows_of_a_removed_destination_fail_in_their_own_lane(tmp_path: Path, monkeypatch) -> None:
    """'gone' was in the config when the jobs were made; the node restarted without it."""
    settings = DispatchSettings(max_attempts=2, backoff_initial_s=0.0, backoff_max_s=0.0)
    cfg, cat = make_node(tmp_path, {"up": DestinationSettings(port=2)}, ("gone", "up"), dispatch_settings=settings)
    fake = FakeStore()
    monkeypatch.setattr(dispatch, "c_store", fake)
    dispatcher = Dispatcher(cfg, cat)

    assert dispatcher.run_due("up") == 3 and fake.files("up") == ["job-1-up.dcm", "job-2-up.dcm", "job-3-up.dcm"]
    assert states(cat, "gone") == [(1, "pending", 0), (2, "pending", 0), (3, "pending", 0)]  # not the up lane's

    assert dispatcher.run_unconfigured() == 1  # one failure: the rest of the round waits, as for any destination
    row = cat.query("SELECT attempts, last_error FROM dispatches WHERE destination='gone' AND job_id=1")[0]
    assert row["attempts"] == 1 and row["last_error"] == "destination 'gone' is no longer configured"
    assert [r[0] for r in cat.query("SELECT state FROM jobs ORDER BY id")] == [JobState.RETRYING.value,
                                                                              "dispatching", "dispatching"]
    deadline = time.monotonic() + 10
    while cat.query("SELECT 1 FROM dispatches WHERE state='pending'") and time.monotonic() < deadline:
        dispatcher.run_unconfigured()
    assert states(cat, "gone") == [(1, "failed", 2), (2, "failed", 2), (3, "failed", 2)]
    assert fake.sent and all(n == "up" for n, _, _ in fake.sent)  # never sent anywhere
    jobs = cat.query("SELECT state, reason FROM jobs ORDER BY id")
    assert [(j["state"], j["reason"]) for j in jobs] == [
        ("failed", "dispatch failed: gone seg: destination 'gone' is no longer configured")] * 3


def test_run_due_none_still_handles_a_removed_destination(tmp_path: Path, monkeypatch) -> None:
    cfg, cat = make_node(tmp_path, {"up": DestinationSettings(port=2)}, ("gone", "up"), jobs=1)
    fake = FakeStore()
    monkeypatch.setattr(dispatch, "c_store", fake)
    assert Dispatcher(cfg, cat).run_due() == 2
    assert states(cat, "up") == [(1, "sent", 1)] and states(cat, "gone") == [(1, "pending", 1)]


def test_the_tls_context_cache_is_built_once_for_concurrent_lanes(tmp_path: Path, monkeypatch) -> None:
    import dicom_node.security

    built: list[str] = []

    def slow_context(tls: DestinationTlsSettings, resolve: object, key: str = "") -> object:
        built.append(key)
        time.sleep(0.05)  # long enough for every thread to find the cache empty without the lock
        return object()

    monkeypatch.setattr(dicom_node.security, "destination_ssl_context", slow_context)
    dest = DestinationSettings(tls=DestinationTlsSettings(enabled=True))
    cfg = Config(storage=StorageSettings(data_dir=str(tmp_path / "node")), destinations={"pacs": dest})
    dispatcher = Dispatcher(cfg, Catalog(cfg.catalog_path))
    got: list[object] = []
    threads = [threading.Thread(target=lambda: got.append(dispatcher.ssl_context("pacs", dest))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert built == ["destinations.pacs.tls"] and len(got) == 8 and all(c is got[0] for c in got)


@pytest.mark.parametrize("names, other", [
    (("pacs", "archive"), "dispatch-unconfigured"),
    (("pacs", "unconfigured"), "dispatch-unconfigured_"),  # thread names are /health's keys: never two alike
])
def test_the_node_runs_one_lane_per_destination(tmp_path: Path, names: tuple[str, ...], other: str) -> None:
    from dicom_node.service import Node

    cfg = Config(storage=StorageSettings(data_dir=str(tmp_path / "node"), fsync=False),
                 destinations={n: DestinationSettings() for n in names})
    node = Node(cfg)
    try:
        lanes = node._dispatch_lanes()
        assert [name for name, _, _ in lanes] == [f"dispatch-{n}" for n in names] + [other]
    finally:
        node.store.close()
        node.catalog.close()


class Pacs:
    """c_store's stand-in for one destination that goes down and comes back; `refuse` names files it
    answers with a failure status (the destination is up, the result is refused)."""

    def __init__(self, refuse: tuple[str, ...] = ()) -> None:
        self.up = False
        self.refuse = refuse
        self.tried: list[str] = []
        self.sent: list[str] = []

    def __call__(self, path: Path, dest: DestinationSettings, *args: object) -> SendOutcome:
        self.tried.append(path.name)
        if not self.up:
            return SendOutcome(False, "no association by PACS@127.0.0.1:1", 0.0, associated=False)
        if path.name in self.refuse:
            return SendOutcome(False, "0xA900", 0.0, associated=True)
        self.sent.append(path.name)
        return SendOutcome(True, "0x0000", 0.0, associated=True)


FAST = DispatchSettings(max_attempts=1000, backoff_initial_s=0.02, backoff_factor=2.0, backoff_max_s=0.05)


def run_for(dispatcher: Dispatcher, seconds: float, destination: str = "pacs") -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not dispatcher.run_due(destination):
            time.sleep(0.005)


def test_a_backlog_waits_behind_the_probe_and_goes_oldest_first_when_the_destination_is_back(
        tmp_path: Path, monkeypatch) -> None:
    cfg, cat = make_node(tmp_path, {"pacs": DestinationSettings()}, ("pacs",), jobs=3, dispatch_settings=FAST)
    pacs = Pacs()
    monkeypatch.setattr(dispatch, "c_store", pacs)
    dispatcher = Dispatcher(cfg, cat)
    run_for(dispatcher, 0.6)
    assert len(pacs.tried) >= 5 and set(pacs.tried) == {"job-1-pacs.dcm"}, "only the oldest result probes"
    assert states(cat, "pacs")[1:] == [(2, "pending", 0), (3, "pending", 0)]  # no attempts spent while it is down

    pacs.up = True
    deadline = time.monotonic() + 5
    while cat.query("SELECT 1 FROM dispatches WHERE state='pending'") and time.monotonic() < deadline:
        if dispatcher.run_due("pacs"):
            break  # the round in which the probe got through
        time.sleep(0.005)
    assert pacs.sent == ["job-1-pacs.dcm", "job-2-pacs.dcm", "job-3-pacs.dcm"], "the whole backlog in that round"
    sent_at = [r[0] for r in cat.query("SELECT sent_at FROM dispatches ORDER BY job_id")]
    assert sent_at == sorted(sent_at)
    assert [r[0] for r in cat.query("SELECT state FROM jobs ORDER BY id")] == ["done"] * 3


def test_a_probe_that_gives_up_hands_over_to_the_next_oldest(tmp_path: Path, monkeypatch) -> None:
    settings = DispatchSettings(max_attempts=3, backoff_initial_s=0.0, backoff_max_s=0.0)
    cfg, cat = make_node(tmp_path, {"pacs": DestinationSettings()}, ("pacs",), jobs=3, dispatch_settings=settings)
    pacs = Pacs()
    monkeypatch.setattr(dispatch, "c_store", pacs)
    dispatcher = Dispatcher(cfg, cat)
    deadline = time.monotonic() + 10
    while cat.query("SELECT 1 FROM dispatches WHERE state='pending'") and time.monotonic() < deadline:
        dispatcher.run_due("pacs")
    assert pacs.tried == ["job-1-pacs.dcm"] * 3 + ["job-2-pacs.dcm"] * 3 + ["job-3-pacs.dcm"] * 3
    assert states(cat, "pacs") == [(1, "failed", 3), (2, "failed", 3), (3, "failed", 3)]


def test_a_result_the_destination_refuses_holds_up_nobody(tmp_path: Path, monkeypatch) -> None:
    """A failure status is the result's own (the destination answered): the others are not held back."""
    settings = DispatchSettings(backoff_initial_s=60.0)  # job 1 is not due again during this test
    cfg, cat = make_node(tmp_path, {"pacs": DestinationSettings()}, ("pacs",), jobs=3, dispatch_settings=settings)
    pacs = Pacs(refuse=("job-1-pacs.dcm",))
    pacs.up = True
    monkeypatch.setattr(dispatch, "c_store", pacs)
    dispatcher = Dispatcher(cfg, cat)
    assert dispatcher.run_due("pacs") == 1  # refused: the rest of this round waits
    assert dispatcher.run_due("pacs") == 2  # job 1 backs off on its own; 2 and 3 go
    assert pacs.sent == ["job-2-pacs.dcm", "job-3-pacs.dcm"]
    assert states(cat, "pacs") == [(1, "pending", 1), (2, "sent", 1), (3, "sent", 1)]


def test_the_backlog_behind_a_down_destination_shows_as_waiting_and_survives_a_restart(
        tmp_path: Path, monkeypatch) -> None:
    settings = DispatchSettings(backoff_initial_s=60.0)
    cfg, cat = make_node(tmp_path, {"pacs": DestinationSettings()}, ("pacs",), jobs=3, dispatch_settings=settings)
    pacs = Pacs()
    monkeypatch.setattr(dispatch, "c_store", pacs)
    assert Dispatcher(cfg, cat).run_due("pacs") == 1
    rows = cat.query("SELECT job_id, attempts, last_error, next_attempt_at FROM dispatches ORDER BY job_id")
    assert [r["attempts"] for r in rows] == [1, 0, 0]
    assert all(r["last_error"].startswith("waiting: pacs is down (no association") for r in rows[1:])
    assert len({r["next_attempt_at"] for r in rows}) == 1, "the backlog is due when the probe is"
    assert [r[0] for r in cat.query("SELECT state FROM jobs ORDER BY id")] == [JobState.RETRYING.value] * 3
    assert 'dicom_node_dispatch_waiting{destination="pacs"} 3' in render_metrics(cat, cfg.data_dir)
    assert render_status_page(cat, cfg.data_dir, "node", 10).count("waiting for pacs: next attempt") == 3
    # a restart forgets nothing: a new dispatcher finds nothing due before the probe's time
    assert Dispatcher(cfg, Catalog(cfg.catalog_path)).run_due("pacs") == 0 and pacs.tried == ["job-1-pacs.dcm"]
