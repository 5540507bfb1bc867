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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from dicom_node.catalog_migration import migrate

SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,  -- the catalog's series key
    study_uid       TEXT NOT NULL,
    series_uid      TEXT NOT NULL,
    patient_id      TEXT NOT NULL DEFAULT '',  -- the one patient of the study (store.py refuses another)
    modality        TEXT NOT NULL DEFAULT '',
    description     TEXT NOT NULL DEFAULT '',
    calling_ae      TEXT NOT NULL DEFAULT '',
    state           TEXT NOT NULL,       -- receiving | complete | routed | ignored | purged
    generation      INTEGER NOT NULL DEFAULT 1,  -- +1 each time late instances re-open it
    expected_count  INTEGER,             -- from the study when it says so, else NULL
    received_count  INTEGER NOT NULL DEFAULT 0,
    first_received  REAL NOT NULL,
    last_received   REAL NOT NULL,
    completed_at    REAL,
    completion_reason TEXT,              -- expected-count | idle
    routing_rule    TEXT,
    routing_reason  TEXT,
    UNIQUE (study_uid, series_uid)       -- a Series UID reused by another study is another series
);
CREATE INDEX IF NOT EXISTS series_state ON series(state);
CREATE INDEX IF NOT EXISTS series_by_uid ON series(series_uid);

CREATE TABLE IF NOT EXISTS instances (
    series_id        INTEGER NOT NULL REFERENCES series(id),
    sop_instance_uid TEXT NOT NULL,
    sop_class_uid    TEXT NOT NULL,
    path             TEXT NOT NULL,      -- relative to data_dir
    size             INTEGER NOT NULL,
    sha256           TEXT NOT NULL,
    transfer_syntax  TEXT NOT NULL,
    calling_ae       TEXT NOT NULL,
    received_at      REAL NOT NULL,
    PRIMARY KEY (series_id, sop_instance_uid)  -- re-sent under another study: kept apart, never moved
);

CREATE TABLE IF NOT EXISTS jobs (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    series_id       INTEGER NOT NULL REFERENCES series(id),
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
CREATE INDEX IF NOT EXISTS jobs_series ON jobs(series_id);

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

CREATE TABLE IF NOT EXISTS purges (               -- dicom_node.retention: what was deleted, when, why
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    series_id       INTEGER NOT NULL REFERENCES series(id),
    generation      INTEGER NOT NULL,
    at              REAL NOT NULL,
    reason          TEXT NOT NULL,       -- finished | failed | space (retention.max_stored)
    instances       INTEGER NOT NULL,
    bytes           INTEGER NOT NULL,
    by_calling_ae   TEXT NOT NULL,       -- JSON {AE: instances}: keeps /metrics' received totals monotonic
    files           TEXT NOT NULL,       -- JSON: paths relative to data_dir (instance files, result folders)
    files_removed   INTEGER NOT NULL DEFAULT 0  -- 0 until the files are gone (a crash in between: redone at start)
);
CREATE INDEX IF NOT EXISTS purges_series ON purges(series_id);

CREATE TABLE IF NOT EXISTS dispatch_attempts (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    dispatch_id     INTEGER NOT NULL REFERENCES dispatches(id),
    at              REAL NOT NULL,
    ok              INTEGER NOT NULL,
    status          TEXT,                -- DIMSE status as hex, or the connection error
    seconds         REAL NOT NULL
);
"""


SCHEMA_VERSION = 1  # PRAGMA user_version; 0 = the catalog of before series had their own key


class IdentityConflict(ValueError):
    """An instance would join a study that belongs to another patient: refused, never merged."""


@dataclass(frozen=True)
class Recorded:
    """What recording one instance did."""

    series_id: int
    new: bool  # False: a re-send of an instance the series already holds
    reopened: bool  # a late or changed instance re-opened a complete/routed series
    generation: int
    reached_expected: bool = False  # the series now holds the count its header announced


class Catalog:
    """Thread-safe access to the SQLite catalog at `path` (created, or migrated, on first use).

    A series is keyed by (Study Instance UID, Series Instance UID) and its catalog id; an instance
    by its series and SOP Instance UID. Broken modalities and anonymisers reuse Series UIDs across
    studies: each study then has its own series, never one volume of two patients.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        migrate(self._con(), self.path, SCHEMA_VERSION, SCHEMA)
        # executescript() commits on its own: it cannot run inside transaction()
        self._con().executescript(SCHEMA + f"PRAGMA user_version = {SCHEMA_VERSION};")

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

    # -- instances and series (receiving side: store.py, completion.py) -----------------

    def identity_conflict(self, study_uid: str, patient_id: str, con: sqlite3.Connection | None = None) -> str:
        """Why an instance of `patient_id` cannot join study `study_uid`, or "" when it can.

        A study belongs to one patient; the same Study UID under another Patient ID is a sender's
        error (a reused or badly anonymised UID), and merging would put two patients in one result."""
        row = (con or self._con()).execute(
            "SELECT patient_id FROM series WHERE study_uid=? AND patient_id != ? LIMIT 1",
            (study_uid, patient_id)).fetchone()
        if row is None:
            return ""
        return (f"Study UID already holds patient {row[0]!r}, not {patient_id!r}: "
                "the sender reuses UIDs; fix its anonymiser or UID root")

    def record_instance(self, inst: dict[str, Any], series: dict[str, Any]) -> Recorded:
        """Upsert one stored instance and its series row in ONE transaction.

        `inst` has the columns of `instances` but series_id; `series` has study_uid, series_uid,
        patient_id, modality, description, calling_ae, expected_count. A re-sent instance (same
        series, same SOP Instance UID) does not count twice. A new or changed instance for a
        series that is no longer 'receiving' re-opens it with generation+1, so the worker knows
        earlier results are superseded. Raises IdentityConflict (nothing recorded) for an
        instance of another patient than its study's.
        """
        return self.record_instances([(inst, series)])[0]

    def record_instances(self, items: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[Recorded]:
        """`record_instance` for several instances in one transaction (one commit, one fsync).

        The listener's group commit uses it: concurrent associations share a commit.
        """
        with self.transaction() as con:
            return [self._record(con, inst, series) for inst, series in items]

    def _record(self, con: sqlite3.Connection, inst: dict[str, Any], series: dict[str, Any]) -> Recorded:
        at = inst["received_at"]
        conflict = self.identity_conflict(series["study_uid"], series["patient_id"], con)
        if conflict:
            raise IdentityConflict(conflict)
        row = con.execute("SELECT id, state, generation FROM series WHERE study_uid=? AND series_uid=?",
                          (series["study_uid"], series["series_uid"])).fetchone()
        if row is None:
            cur = con.execute(
                "INSERT INTO series (study_uid, series_uid, patient_id, modality, description, calling_ae,"
                " state, generation, expected_count, received_count, first_received, last_received)"
                " VALUES (?, ?, ?, ?, ?, ?, 'receiving', 1, ?, 0, ?, ?)",
                (series["study_uid"], series["series_uid"], series["patient_id"], series["modality"],
                 series["description"], series["calling_ae"], series["expected_count"], at, at),
            )
            series_id, state, generation = int(cur.lastrowid or 0), "receiving", 1
        else:
            series_id, state, generation = row["id"], row["state"], row["generation"]
        old = con.execute("SELECT sha256 FROM instances WHERE series_id=? AND sop_instance_uid=?",
                          (series_id, inst["sop_instance_uid"])).fetchone()
        new = old is None
        changed = new or old["sha256"] != inst["sha256"]
        cols = ["series_id", *inst]
        con.execute(
            f"INSERT INTO instances ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
            f"ON CONFLICT(series_id, sop_instance_uid) DO UPDATE SET "
            + ", ".join(f"{c}=excluded.{c}" for c in inst if c != "sop_instance_uid"),
            [series_id, *inst.values()],
        )
        reopen = changed and state != "receiving"
        generation = generation + 1 if reopen else generation
        reached = con.execute(
            "UPDATE series SET received_count=received_count+?, last_received=MAX(last_received, ?),"
            " expected_count=CASE WHEN ? IS NULL THEN expected_count"
            "   ELSE MAX(COALESCE(expected_count, 0), ?) END,"
            " state=CASE WHEN ? THEN 'receiving' ELSE state END, generation=?,"
            " completed_at=CASE WHEN ? THEN NULL ELSE completed_at END,"
            " completion_reason=CASE WHEN ? THEN NULL ELSE completion_reason END"
            " WHERE id=? RETURNING state = 'receiving' AND received_count >= expected_count",
            (int(new), at, series["expected_count"], series["expected_count"], reopen, generation,
             reopen, reopen, series_id),
        ).fetchone()
        return Recorded(int(series_id), new, reopen, generation, bool(reached and reached[0]))

    def series_row(self, series_id: int) -> sqlite3.Row | None:
        """The catalog row of one series, or None."""
        rows = self.query("SELECT * FROM series WHERE id=?", (series_id,))
        return rows[0] if rows else None

    def series_ids(self, series_uid: str) -> list[int]:
        """The catalog ids of the series with this Series UID (more than one when studies reuse it)."""
        return [r[0] for r in self.query("SELECT id FROM series WHERE series_uid=? ORDER BY id", (series_uid,))]

    def instance_paths(self, series_id: int) -> list[str]:
        """Paths (relative to data_dir) of a series' instances, in arrival-independent order."""
        rows = self.query("SELECT path FROM instances WHERE series_id=? ORDER BY path", (series_id,))
        return [r["path"] for r in rows]

    def complete_series(self, now: float, idle_seconds: float) -> list[tuple[int, str, str]]:
        """Mark 'receiving' series complete (expected count reached, or idle); return (id, uid, reason)."""
        done: list[tuple[int, str, str]] = []
        with self.transaction() as con:
            for reason, where, params in (
                ("expected-count", "expected_count IS NOT NULL AND received_count >= expected_count", ()),
                ("idle", "last_received <= ?", (now - idle_seconds,)),
            ):
                rows = con.execute(
                    f"SELECT id, series_uid FROM series WHERE state='receiving' AND {where}", params).fetchall()
                for series_id, uid in rows:
                    con.execute(
                        "UPDATE series SET state='complete', completed_at=?, completion_reason=? WHERE id=?",
                        (now, reason, series_id),
                    )
                    done.append((series_id, uid, reason))
        return done

    def set_series_routing(
        self, series_id: int, generation: int, state: str, rule: str | None, reason: str
    ) -> bool:
        """Record the routing decision of a complete series (state 'routed' or 'ignored').

        Only applies to the given generation still in state 'complete': if late instances
        re-opened the series meanwhile, this returns False and the caller drops its decision.
        """
        with self.transaction() as con:
            return self.record_routing(con, series_id, generation, state, rule, reason)

    @staticmethod
    def record_routing(
        con: sqlite3.Connection, series_id: int, generation: int, state: str, rule: str | None, reason: str
    ) -> bool:
        """``set_series_routing`` inside the caller's transaction (the router also queues the job in it)."""
        if state not in ("routed", "ignored"):
            raise ValueError(f"series state after routing is 'routed' or 'ignored', not {state!r}")
        cur = con.execute(
            "UPDATE series SET state=?, routing_rule=?, routing_reason=?"
            " WHERE id=? AND generation=? AND state='complete'",
            (state, rule, reason, series_id, generation),
        )
        return cur.rowcount == 1

    def first_instance(self, series_id: int) -> sqlite3.Row | None:
        """(path, calling_ae) of the first instance received for a series: what routing reads."""
        rows = self.query("SELECT path, calling_ae FROM instances WHERE series_id=? ORDER BY received_at LIMIT 1",
                          (series_id,))
        return rows[0] if rows else None

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None


def now() -> float:
    return time.time()


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=float)
