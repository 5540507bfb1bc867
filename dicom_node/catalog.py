"""The one SQLite catalog (WAL) that holds all node state.

Instances, series, jobs and dispatch attempts live here and nowhere else; files on disk are
only referenced from it. Every thread gets its own connection (sqlite3 objects are not shared
across threads); writes are short transactions so the listener never waits long.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid TEXT PRIMARY KEY,
    sop_class_uid    TEXT NOT NULL,
    series_uid       TEXT NOT NULL,
    study_uid        TEXT NOT NULL,
    path             TEXT NOT NULL,      -- relative to data_dir
    size             INTEGER NOT NULL,
    sha256           TEXT NOT NULL,
    transfer_syntax  TEXT NOT NULL,
    calling_ae       TEXT NOT NULL,
    received_at      REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_series ON instances(series_uid);

CREATE TABLE IF NOT EXISTS series (
    series_uid      TEXT PRIMARY KEY,
    study_uid       TEXT NOT NULL,
    patient_id      TEXT NOT NULL DEFAULT '',
    modality        TEXT NOT NULL DEFAULT '',
    description     TEXT NOT NULL DEFAULT '',
    calling_ae      TEXT NOT NULL DEFAULT '',
    state           TEXT NOT NULL,       -- receiving | complete | routed | ignored
    generation      INTEGER NOT NULL DEFAULT 1,  -- +1 each time late instances re-open it
    expected_count  INTEGER,             -- from the study when it says so, else NULL
    received_count  INTEGER NOT NULL DEFAULT 0,
    first_received  REAL NOT NULL,
    last_received   REAL NOT NULL,
    completed_at    REAL,
    completion_reason TEXT,              -- expected-count | idle
    routing_rule    TEXT,
    routing_reason  TEXT
);
CREATE INDEX IF NOT EXISTS series_state ON series(state);

CREATE TABLE IF NOT EXISTS jobs (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    series_uid      TEXT NOT NULL,
    generation      INTEGER NOT NULL,
    pipeline        TEXT NOT NULL,
    rule            TEXT NOT NULL,
    destinations    TEXT NOT NULL,       -- JSON list of destination keys
    state           TEXT NOT NULL,       -- queued | running | dispatching | retrying | done | failed | superseded
    attempts        INTEGER NOT NULL DEFAULT 0,
    reason          TEXT,
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL,
    started_at      REAL,
    finished_at     REAL,
    supersedes_job  INTEGER,             -- the earlier job of the same series this one replaces
    result_uids     TEXT,                -- JSON: UIDs of SEG/SR (reused on re-send)
    measurements    TEXT,                -- JSON measurements of the Analysis
    timings         TEXT                 -- JSON seconds per stage
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE INDEX IF NOT EXISTS jobs_series ON jobs(series_uid);

CREATE TABLE IF NOT EXISTS dispatches (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id          INTEGER NOT NULL REFERENCES jobs(id),
    destination     TEXT NOT NULL,
    kind            TEXT NOT NULL,       -- seg | sr | sc
    sop_instance_uid TEXT NOT NULL,
    path            TEXT NOT NULL,       -- relative to data_dir
    state           TEXT NOT NULL,       -- pending | sent | failed
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error      TEXT,
    sent_at         REAL,
    UNIQUE (job_id, destination, kind)
);
CREATE INDEX IF NOT EXISTS dispatches_state ON dispatches(state, next_attempt_at);

CREATE TABLE IF NOT EXISTS dispatch_attempts (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    dispatch_id     INTEGER NOT NULL REFERENCES dispatches(id),
    at              REAL NOT NULL,
    ok              INTEGER NOT NULL,
    status          TEXT,                -- DIMSE status as hex, or the connection error
    seconds         REAL NOT NULL
);
"""


class Catalog:
    """Thread-safe access to the SQLite catalog at `path` (created on first use)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self.transaction() as con:
            con.executescript(SCHEMA)

    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            con.row_factory = sqlite3.Row
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=FULL")
            con.execute("PRAGMA foreign_keys=ON")
            con.execute("PRAGMA busy_timeout=30000")
            self._local.con = con
        return con

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error): one writer at a time, no lost updates."""
        con = self._con()
        con.execute("BEGIN IMMEDIATE")
        try:
            yield con
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")

    def query(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> list[sqlite3.Row]:
        return self._con().execute(sql, params).fetchall()

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None


def now() -> float:
    return time.time()


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=float)
