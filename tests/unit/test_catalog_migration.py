"""A catalog written by the version before series had their own key is migrated in place, once.

The fixture is a dump of a catalog made by a real run of that version (tests/fixtures/catalog_v0.sql
says how): four series, one of them two studies merged under one reused Series UID, jobs done,
superseded and failed, deliveries, and a purge. Issue 23 item 4.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from dicom_node.catalog import SCHEMA_VERSION, Catalog, IdentityConflict
from dicom_node.catalog_migration import CatalogVersionError
from dicom_node.jobs import Jobs
from dicom_node.metrics import render_metrics
from dicom_node.status_page import render_status_page

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "catalog_v0.sql"


def v0_catalog(path: Path, extra_sql: str = "") -> Path:
    con = sqlite3.connect(path)
    con.executescript(FIXTURE.read_text() + extra_sql)
    con.close()
    return path


def shape(con: sqlite3.Connection) -> dict[str, tuple]:
    """Columns, keys, foreign keys and indexes per table: what the schema means, not how it is spelt."""
    out = {}
    tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table' "
                                        "AND name NOT LIKE 'sqlite_%' ORDER BY name")]
    for t in tables:
        indexes = sorted(
            (bool(unique), tuple(c[2] for c in con.execute(f"PRAGMA index_info('{name}')")))
            for _, name, unique, *_ in con.execute(f"PRAGMA index_list('{t}')"))
        out[t] = (tuple(tuple(r[1:]) for r in con.execute(f"PRAGMA table_info('{t}')")),
                  tuple(sorted(tuple(r[2:5]) for r in con.execute(f"PRAGMA foreign_key_list('{t}')"))),
                  tuple(indexes))
    return out


def test_a_v0_catalog_is_migrated_in_place_keeping_every_row(tmp_path: Path) -> None:
    path = v0_catalog(tmp_path / "catalog.sqlite")
    old = sqlite3.connect(path)
    counts = {t: old.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
              for t in ("series", "instances", "jobs", "dispatches", "dispatch_attempts", "purges")}
    job_series = dict(old.execute("SELECT id, series_uid FROM jobs").fetchall())
    purged = old.execute("SELECT series_uid FROM purges").fetchall()
    old.close()
    assert counts["jobs"] == 4 and counts["purges"] == 1 and counts["instances"] == 24

    cat = Catalog(path)
    con = cat._con()
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert {t: con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in counts} == counts
    assert dict(con.execute("SELECT j.id, s.series_uid FROM jobs j JOIN series s ON s.id = j.series_id")) == job_series
    assert [tuple(r) for r in con.execute("SELECT s.series_uid FROM purges p JOIN series s ON s.id = p.series_id")] \
        == purged
    assert con.execute("PRAGMA foreign_key_check").fetchall() == []
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    fresh = Catalog(tmp_path / "fresh.sqlite")
    assert shape(con) == shape(fresh._con()), "the migrated schema differs from a new catalog's"

    backup = sqlite3.connect(tmp_path / "catalog.sqlite.v0-backup")
    assert "id" not in [r[1] for r in backup.execute("PRAGMA table_info(series)")]  # the v0 catalog, as it was
    assert backup.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 4
    backup.close()

    # new rows continue the old ids; the operator's tools read the migrated catalog
    (failed,) = con.execute("SELECT id FROM jobs WHERE state='failed'").fetchall()
    assert Jobs(cat).get(failed[0]).series_uid == job_series[failed[0]]
    assert "V0_MR" in render_status_page(cat, tmp_path, "node", 10)
    assert "dicom_node_jobs" in render_metrics(cat, tmp_path)

    cat.close()
    Catalog(path).close()  # opening again migrates nothing and keeps the one backup
    assert [p.name for p in tmp_path.glob("*backup")] == ["catalog.sqlite.v0-backup"]


def test_after_migration_a_reused_series_uid_is_kept_apart_and_another_patient_refused(tmp_path: Path) -> None:
    cat = Catalog(v0_catalog(tmp_path / "catalog.sqlite"))
    merged = cat.query("SELECT id, study_uid, series_uid, patient_id FROM series WHERE patient_id='V0-P1'")[0]
    inst = {"sop_instance_uid": "1.2.3.999", "sop_class_uid": "1.2.840.10008.5.1.4.1.1.4", "path": "instances/x.dcm",
            "size": 1, "sha256": "x", "transfer_syntax": "1.2.840.10008.1.2.1", "calling_ae": "MR", "received_at": 1.0}
    series = {"study_uid": "1.2.3.4.5", "series_uid": merged["series_uid"], "patient_id": "NEW-P", "modality": "MR",
              "description": "T2", "calling_ae": "MR", "expected_count": None}
    rec = cat.record_instance(inst, series)
    assert rec.new and rec.series_id != merged["id"] and rec.generation == 1
    assert cat.series_ids(merged["series_uid"]) == [merged["id"], rec.series_id]
    with pytest.raises(IdentityConflict, match="already holds patient 'V0-P1'"):
        cat.record_instance(inst, {**series, "study_uid": merged["study_uid"]})


def test_a_newer_catalog_is_refused_with_what_to_do(tmp_path: Path) -> None:
    Catalog(tmp_path / "c.sqlite").close()
    con = sqlite3.connect(tmp_path / "c.sqlite")
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.close()
    with pytest.raises(CatalogVersionError, match="newer dicom-node.*restore a backup"):
        Catalog(tmp_path / "c.sqlite")


def test_a_migration_that_cannot_finish_changes_nothing(tmp_path: Path) -> None:
    # a job naming a series the catalog lacks (a hand-edited catalog): refused, v0 left as it was
    path = v0_catalog(tmp_path / "catalog.sqlite", "UPDATE jobs SET series_uid='9.9' WHERE id=2;")
    with pytest.raises(CatalogVersionError, match="1 of 4 rows of jobs name a series"):
        Catalog(path)
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == 0
    assert "id" not in [r[1] for r in con.execute("PRAGMA table_info(series)")]
    assert con.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 4
