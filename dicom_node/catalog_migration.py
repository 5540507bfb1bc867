"""Bring a catalog written by an earlier version up to the current schema, in place, once.

A node keeps its catalog for months; an upgrade must neither lose its history (jobs, deliveries,
purges) nor ask the operator to start afresh. The schema's version is SQLite's `user_version`.

v0 -> v1 (issue 23): series were keyed by Series Instance UID alone, so two studies that reuse a
Series UID became one series. v1 keys a series by (Study UID, Series UID) with an integer id,
an instance by (series id, SOP Instance UID), and jobs and purges name the series id. A v0
series is one v1 series with everything it held: what v0 merged stays merged (its job says what
went wrong), and what arrives after the upgrade is kept apart.

Before anything changes, the catalog is copied beside itself (`catalog.sqlite.v0-backup`); the
migration is one transaction, so a crash or an error leaves the old catalog as it was.
"""
from __future__ import annotations

import logging
import re
import sqlite3
from pathlib import Path

log = logging.getLogger(__name__)

# v0 -> v1: each rebuilt table with the SELECT that fills it from the v0 tables (v0 series were
# unique per Series UID, so joining on it finds exactly one v1 series)
_V1_COPIES = {
    "series": "SELECT NULL, study_uid, series_uid, patient_id, modality, description, calling_ae, state, generation,"
              " expected_count, received_count, first_received, last_received, completed_at, completion_reason,"
              " routing_rule, routing_reason FROM series ORDER BY first_received, rowid",
    "instances": "SELECT s.id, i.sop_instance_uid, i.sop_class_uid, i.path, i.size, i.sha256, i.transfer_syntax,"
                 " i.calling_ae, i.received_at FROM instances i JOIN series_v1 s ON s.series_uid = i.series_uid",
    "jobs": "SELECT j.id, s.id, j.generation, j.pipeline, j.rule, j.destinations, j.state, j.attempts, j.reason,"
            " j.created_at, j.updated_at, j.started_at, j.finished_at, j.supersedes_job, j.result_uids,"
            " j.measurements, j.timings FROM jobs j JOIN series_v1 s ON s.series_uid = j.series_uid",
    "purges": "SELECT p.id, s.id, p.generation, p.at, p.reason, p.instances, p.bytes, p.by_calling_ae, p.files,"
              " p.files_removed FROM purges p JOIN series_v1 s ON s.series_uid = p.series_uid",
}


class CatalogVersionError(RuntimeError):
    """The catalog cannot be used by this version of the node (newer, or a migration failed)."""


def _columns(con: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in con.execute(f"PRAGMA table_info({table})")]


def _table_ddl(schema: str, table: str) -> str:
    """The CREATE TABLE statement of `table` in `schema`, without IF NOT EXISTS."""
    found = re.search(rf"CREATE TABLE IF NOT EXISTS {table} \(.*?\n\);", schema, re.S)
    if found is None:
        raise ValueError(f"no table {table!r} in the schema")
    return found.group(0).replace(" IF NOT EXISTS", "")


def schema_version(con: sqlite3.Connection) -> int:
    """The catalog's schema version: user_version, or 0 for a v0 catalog (which never set it)."""
    version = int(con.execute("PRAGMA user_version").fetchone()[0])
    if version == 0 and "id" in _columns(con, "series"):
        return 1  # a v1 catalog whose creation stopped before it set user_version
    return version


def migrate(con: sqlite3.Connection, path: Path, target: int, schema: str) -> int:
    """Migrate the catalog open on `con` (autocommit mode) up to `target`, whose tables `schema`
    creates; returns the version found. A new, empty catalog needs nothing (the caller creates
    the schema)."""
    found = schema_version(con)
    if found > target:
        raise CatalogVersionError(
            f"catalog {path} has schema version {found}, written by a newer dicom-node; this one reads up to "
            f"{target}: run the newer version, or restore a backup made with this one")
    if found == 0 and _columns(con, "series"):
        _backup(con, path, found)
        _v0_to_v1(con, schema)
        log.warning("catalog %s migrated from schema v0 to v1 (series keyed by study and series UID); "
                    "the old catalog is kept at %s", path, _backup_path(path, found))
    return found


def _backup_path(path: Path, version: int) -> Path:
    return path.with_name(f"{path.name}.v{version}-backup")


def _backup(con: sqlite3.Connection, path: Path, version: int) -> None:
    out = sqlite3.connect(_backup_path(path, version))
    try:
        con.backup(out)
    finally:
        out.close()


def _v0_to_v1(con: sqlite3.Connection, schema: str) -> None:
    con.execute("PRAGMA foreign_keys=OFF")  # tables are rebuilt; only possible outside a transaction
    try:
        con.execute("BEGIN IMMEDIATE")
        try:
            counts = {t: con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in _V1_COPIES}
            for table, select in _V1_COPIES.items():
                ddl = _table_ddl(schema, table).replace(f"CREATE TABLE {table} (", f"CREATE TABLE {table}_v1 (")
                con.execute(ddl)
                con.execute(f"INSERT INTO {table}_v1 {select}")
                copied = con.execute(f"SELECT COUNT(*) FROM {table}_v1").fetchone()[0]
                if copied != counts[table]:
                    raise CatalogVersionError(
                        f"catalog migration v0 -> v1: {counts[table] - copied} of {counts[table]} rows of "
                        f"{table} name a series the catalog does not hold; nothing was changed")
            for table in _V1_COPIES:
                con.execute(f"DROP TABLE {table}")
            for table in _V1_COPIES:
                con.execute(f"ALTER TABLE {table}_v1 RENAME TO {table}")
            broken = con.execute("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise CatalogVersionError(f"catalog migration v0 -> v1 left {len(broken)} dangling reference(s) "
                                          f"(first: {tuple(broken[0])}); nothing was changed")
            con.execute("PRAGMA user_version = 1")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")
    finally:
        con.execute("PRAGMA foreign_keys=ON")
