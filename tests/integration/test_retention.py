"""Retention: finished series lose their files after the configured days, nothing else does, a crash
mid-purge is finished at start, a series sent again is received as new, and retry says why not."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pydicom
import pytest

from dicom_node.catalog import Catalog
from dicom_node.config import ConfigError, RetentionSettings, load_config
from dicom_node.jobs import retry_job
from dicom_node.retention import DAY_S, Retention
from dicom_node.store import InstanceStore, SharedExclusive
from tests.helpers.catalog import series_id, series_of
from tests.helpers.env import require_shared

NOW = 2_000_000_000.0
STUDY = "1.2.826.0.1.3680043.10.999.1"


@pytest.fixture()
def store(tmp_path: Path) -> InstanceStore:
    return InstanceStore(tmp_path, Catalog(tmp_path / "catalog.sqlite"), fsync=True)  # deletions fsynced too


def receive(store: InstanceStore, series_uid: str, count: int = 3) -> list[Path]:
    ds = pydicom.dcmread(require_shared("dicom/pydicom/MR_small.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY, series_uid
    paths = []
    for i in range(count):
        ds.SOPInstanceUID = f"{series_uid}.{i + 1}"
        paths.append(store.data_dir / store.store(ds, "MODALITY").path)
    return paths


def finish(store: InstanceStore, series_uid: str, at: float, job_state: str | None) -> Path | None:
    """Route the series as the worker would: store-only (job_state None) or one job in `job_state`
    that ended at `at`, with a results folder."""
    con_state = "ignored" if job_state is None else "routed"
    with store.catalog.transaction() as con:
        con.execute("UPDATE series SET state=?, completed_at=? WHERE series_uid=?", (con_state, at, series_uid))
        (series_id,) = con.execute("SELECT id FROM series WHERE series_uid=?", (series_uid,)).fetchone()
        if job_state is None:
            return None
        job_id = con.execute(
            "INSERT INTO jobs (series_id, generation, pipeline, rule, destinations, state, created_at, updated_at,"
            " finished_at) VALUES (?, 1, 'spinal_cord', 'spine-t2', '[\"pacs\"]', ?, ?, ?, ?)",
            (series_id, job_state, at, at, at if job_state in ("done", "failed") else None)).lastrowid
    results = store.data_dir / "results" / f"job-{job_id}"
    results.mkdir(parents=True)
    (results / "seg.dcm").write_bytes(b"seg")
    return results


def state(store: InstanceStore, series_uid: str) -> str:
    return series_of(store.catalog, series_uid)["state"]


def test_only_finished_series_past_their_days_are_purged(store: InstanceStore) -> None:
    old, fresh = NOW - 8 * DAY_S, NOW - 6 * DAY_S
    done_old = receive(store, "1.2.3.1")
    done_results = finish(store, "1.2.3.1", old, "done")
    stored_only = receive(store, "1.2.3.2")
    finish(store, "1.2.3.2", old, None)
    done_fresh = receive(store, "1.2.3.3")
    finish(store, "1.2.3.3", fresh, "done")
    failed_old = receive(store, "1.2.3.4")
    failed_results = finish(store, "1.2.3.4", old, "failed")
    sending_old = receive(store, "1.2.3.5")
    finish(store, "1.2.3.5", old, "retrying")
    receiving = receive(store, "1.2.3.6")
    size = sum(p.stat().st_size for p in done_old + stored_only)

    purged = Retention(RetentionSettings(finished_days=7, failed_days=0), store.catalog, store).sweep(NOW)

    assert sorted((p.series_uid, p.reason, p.instances) for p in purged) == [("1.2.3.1", "finished", 3),
                                                                             ("1.2.3.2", "finished", 3)]
    assert sum(p.bytes for p in purged) == size
    assert not any(p.exists() for p in done_old + stored_only) and not done_results.exists()
    assert all(p.exists() for p in done_fresh + failed_old + sending_old + receiving) and failed_results.exists()
    assert [state(store, s) for s in ("1.2.3.1", "1.2.3.2", "1.2.3.3", "1.2.3.4", "1.2.3.5", "1.2.3.6")] == [
        "purged", "purged", "routed", "routed", "routed", "receiving"]
    assert not (done_old[0].parent).exists()  # the empty series folder goes too; the study folder stays
    assert done_old[0].parent.parent.exists()
    rows = store.catalog.query("SELECT s.series_uid, COUNT(*) FROM instances i JOIN series s ON s.id = i.series_id "
                               "GROUP BY s.series_uid ORDER BY s.series_uid")
    assert [tuple(r) for r in rows] == [("1.2.3.3", 3), ("1.2.3.4", 3), ("1.2.3.5", 3), ("1.2.3.6", 3)]
    purge = store.catalog.query("SELECT * FROM purges WHERE series_id=?", (series_id(store.catalog, "1.2.3.1"),))[0]
    assert (purge["reason"], purge["files_removed"], purge["at"]) == ("finished", 1, NOW)
    assert "results/job-1" in json.loads(purge["files"])

    # failed series have their own days; a second sweep finds nothing more to do
    retention = Retention(RetentionSettings(finished_days=7, failed_days=7), store.catalog, store)
    assert [(p.series_uid, p.reason) for p in retention.sweep(NOW)] == [("1.2.3.4", "failed")]
    assert not any(p.exists() for p in failed_old) and not failed_results.exists()
    assert retention.sweep(NOW) == []


def test_metrics_keep_counting_purged_instances(store: InstanceStore) -> None:
    from dicom_node.metrics import render_metrics

    receive(store, "1.2.3.1", count=4)
    finish(store, "1.2.3.1", NOW - 8 * DAY_S, "done")
    before = render_metrics(store.catalog, store.data_dir)
    assert 'dicom_node_instances_received_total{calling_ae="MODALITY"} 4' in before
    Retention(RetentionSettings(finished_days=7), store.catalog, store).sweep(NOW)
    after = render_metrics(store.catalog, store.data_dir)
    assert 'dicom_node_instances_received_total{calling_ae="MODALITY"} 4' in after  # a counter never drops
    assert 'dicom_node_retention_purged_series_total{reason="finished"} 1' in after
    size = store.catalog.query("SELECT bytes FROM purges")[0][0]
    assert size > 0 and f'dicom_node_retention_purged_bytes_total{{reason="finished"}} {size}' in after


def test_over_max_stored_the_oldest_finished_series_go_early(store: InstanceStore) -> None:
    files = {}
    for k, age_days in enumerate((3, 2, 1), start=1):  # all well inside finished_days
        files[k] = receive(store, f"1.2.3.{k}")
        finish(store, f"1.2.3.{k}", NOW - age_days * DAY_S, "done")
    failed = receive(store, "1.2.3.8")
    finish(store, "1.2.3.8", NOW - 9 * DAY_S, "failed")  # the oldest, but failed: the operator's
    running = receive(store, "1.2.3.9")
    finish(store, "1.2.3.9", NOW - 9 * DAY_S, "running")
    series_bytes = sum(p.stat().st_size for p in files[1])
    total = 5 * series_bytes
    cap = total - series_bytes - series_bytes // 2  # one and a half series too many
    settings = RetentionSettings(finished_days=30, max_stored=cap)
    purged = Retention(settings, store.catalog, store).sweep(NOW)
    assert [(p.series_uid, p.reason) for p in purged] == [("1.2.3.1", "space"), ("1.2.3.2", "space")]
    assert all(p.exists() for p in files[3] + failed + running)
    assert store.catalog.query("SELECT SUM(size) FROM instances")[0][0] <= cap
    assert Retention(settings, store.catalog, store).sweep(NOW) == []  # under the cap now


def test_zero_days_keeps_everything(store: InstanceStore) -> None:
    files = receive(store, "1.2.3.1")
    finish(store, "1.2.3.1", NOW - 3650 * DAY_S, "done")
    assert Retention(RetentionSettings(finished_days=0), store.catalog, store).sweep(NOW) == []
    assert all(p.exists() for p in files) and state(store, "1.2.3.1") == "routed"


def test_a_series_sent_again_after_its_purge_is_received_as_new(store: InstanceStore) -> None:
    receive(store, "1.2.3.1")
    finish(store, "1.2.3.1", NOW - 8 * DAY_S, "done")
    Retention(RetentionSettings(finished_days=7), store.catalog, store).sweep(NOW)
    again = receive(store, "1.2.3.1")
    assert all(p.exists() for p in again)
    row = series_of(store.catalog, "1.2.3.1")
    assert (row["state"], row["generation"], row["received_count"]) == ("receiving", 2, 3)
    assert len(store.catalog.instance_paths(row["id"])) == 3


def test_retry_of_a_purged_job_says_why_and_what_to_do(store: InstanceStore) -> None:
    receive(store, "1.2.3.1")
    finish(store, "1.2.3.1", NOW - 8 * DAY_S, "done")
    Retention(RetentionSettings(finished_days=7), store.catalog, store).sweep(NOW)
    with pytest.raises(ValueError, match=r"job 1: .*deleted by retention on .*send the series again from the PACS"):
        retry_job(store.catalog, 1)


def test_a_crash_after_the_catalog_change_is_finished_at_start(store: InstanceStore, tmp_path: Path) -> None:
    files = receive(store, "1.2.3.1")
    results = finish(store, "1.2.3.1", NOW - 8 * DAY_S, "done")
    retention = Retention(RetentionSettings(finished_days=7), store.catalog, store)
    retention._purge(series_id(store.catalog, "1.2.3.1"), 1, "finished", NOW)  # the catalog side committed; died
    assert all(p.exists() for p in files) and results.exists()
    restarted = InstanceStore(tmp_path, Catalog(tmp_path / "catalog.sqlite"), fsync=False)
    assert Retention(RetentionSettings(finished_days=7), restarted.catalog, restarted).finish_pending() == 1
    assert not any(p.exists() for p in files) and not results.exists()
    assert restarted.catalog.query("SELECT files_removed FROM purges")[0][0] == 1
    assert Retention(RetentionSettings(), restarted.catalog, restarted).finish_pending() == 0


def test_a_series_reopened_before_its_purge_is_kept(store: InstanceStore) -> None:
    receive(store, "1.2.3.1")
    finish(store, "1.2.3.1", NOW - 8 * DAY_S, "done")
    retention = Retention(RetentionSettings(finished_days=7), store.catalog, store)
    due = retention.due(NOW)
    assert [d[0] for d in due] == [series_id(store.catalog, "1.2.3.1")]
    ds = pydicom.dcmread(require_shared("dicom/pydicom/MR_small.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = STUDY, "1.2.3.1", "1.2.3.1.99"
    store.store(ds, "MODALITY")  # a late instance between the look and the purge
    assert retention._purge(*due[0], NOW) is None
    assert len(store.catalog.query("SELECT * FROM instances")) == 4 and state(store, "1.2.3.1") == "receiving"


def test_purge_waits_for_a_store_in_progress() -> None:
    gate = SharedExclusive()
    order: list[str] = []
    storing = threading.Event()

    def store_one() -> None:
        with gate.shared():
            storing.set()
            time.sleep(0.2)
            order.append("stored")

    t = threading.Thread(target=store_one)
    t.start()
    assert storing.wait(5)
    with gate.exclusive():
        order.append("purged")
    t.join(5)
    assert order == ["stored", "purged"]
    # and a store that comes while a purge holds the gate waits for it
    order.clear()
    storing.clear()
    with gate.exclusive():
        t = threading.Thread(target=store_one)
        t.start()
        time.sleep(0.1)
        assert not storing.is_set()  # held at the gate
        order.append("purged")
    t.join(5)
    assert order == ["purged", "stored"]


@pytest.mark.parametrize("text, message", [
    ("retention: {finished_days: -1}", "retention.finished_days"),
    ("retention: {failed_days: .nan}", "retention.failed_days"),
    ("retention: {interval_s: 0}", "retention.interval_s"),
    ("retention: {max_stored: 10%}", "retention.max_stored: a size"),
    ("retention: {max_stored: lots}", "retention.max_stored"),
])
def test_bad_retention_settings_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "node.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError, match=message):
        load_config(path)


@pytest.mark.integration
def test_the_node_purges_a_finished_series_and_takes_it_again(tmp_path: Path) -> None:
    """The whole node: storescu sends a store-only series, retention deletes it after its (tiny)
    days, the same series sent again is received and completed as new, then purged again."""
    from dicom_node.config import Config, StorageSettings
    from dicom_node.service import Node
    from testbed.node_process import wait_until
    from tests.integration.test_scp import storescu

    series = require_shared("dicom/dcm_qa_decubitus_HFS_t1_sag")
    uid = pydicom.dcmread(sorted(series.glob("*.dcm"))[0], stop_before_pixels=True).SeriesInstanceUID
    cfg = Config(storage=StorageSettings(data_dir=str(tmp_path / "node"), fsync=False), pipelines={},
                 routing=[{"name": "keep", "when": {}, "pipeline": None, "destinations": []}],
                 retention=RetentionSettings(finished_days=1.0 / DAY_S, interval_s=0.2))  # 1 s
    cfg.node.port, cfg.node.ae_title = 0, "SPINE_NODE"
    cfg.completion.idle_seconds, cfg.completion.poll_interval_s = 0.5, 0.1
    node = Node(cfg)
    node.start()
    purges = lambda: node.catalog.query(  # noqa: E731
        "SELECT p.* FROM purges p JOIN series s ON s.id = p.series_id WHERE s.series_uid=?", (uid,))
    try:
        for generation in (1, 2):
            sent = storescu(node.port, series, aec="SPINE_NODE")
            assert sent.returncode == 0, sent.stderr
            # the lambda runs inside wait_until, before `generation` moves on
            wait_until(lambda: len(purges()) == generation and purges()[-1]["files_removed"], 30,  # noqa: B023
                       what=f"purge of generation {generation}")
            row = series_of(node.catalog, uid)
            assert (row["state"], row["generation"]) == ("purged", generation)
            assert purges()[-1]["instances"] == len(list(series.glob("*.dcm")))
            assert not list((tmp_path / "node" / "instances").rglob("*.dcm"))
            assert all(node.alive().values())
    finally:
        node.stop()
