"""Jobs: their states and every transition between them, in one place.

Why one owner: the worker, the dispatcher, the operator's retry and retention all move jobs; when
each wrote its own UPDATE, a state was a bare string in five files and nothing said which moves
are allowed. Here each move is one method, run in one catalog transaction:

  create -> QUEUED --claim--> RUNNING --finish--> DISPATCHING <-> RETRYING --settle--> DONE | FAILED
                                 |  \\--fail (retry)--> QUEUED      (no destination: finish -> DONE)
                                 \\--fail--> FAILED;  any active job --supersede--> SUPERSEDED
  retry: FAILED | DONE -> DISPATCHING (results kept) or QUEUED (run again)
"""
from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from enum import Enum
from typing import Any

from dicom_node.catalog import Catalog, dumps, now


class JobState(str, Enum):
    """The `jobs.state` column's values."""

    QUEUED = "queued"
    RUNNING = "running"
    DISPATCHING = "dispatching"
    RETRYING = "retrying"
    DONE = "done"
    FAILED = "failed"
    SUPERSEDED = "superseded"


ACTIVE_STATES = (JobState.QUEUED, JobState.RUNNING, JobState.DISPATCHING, JobState.RETRYING)
FINISHED_STATES = (JobState.DONE, JobState.FAILED, JobState.SUPERSEDED)
# states in which a job may hold results a later job of the same series replaces
WITH_RESULTS = (JobState.DONE, JobState.DISPATCHING, JobState.RETRYING, JobState.FAILED)


def sql_states(states: tuple[JobState, ...]) -> str:
    """An SQL list literal of states, e.g. ('queued', 'running'), for queries that filter on them."""
    return "(" + ", ".join(f"'{s.value}'" for s in states) + ")"


@dataclass(frozen=True)
class Job:
    """One row of `jobs`, typed."""

    id: int
    series_id: int
    series_uid: str
    generation: int
    pipeline: str
    rule: str
    destinations: tuple[str, ...]
    state: JobState
    attempts: int
    supersedes_job: int | None
    result_uids: dict[str, Any] | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        return cls(id=int(row["id"]), series_id=int(row["series_id"]), series_uid=row["series_uid"],
                   generation=int(row["generation"]),
                   pipeline=row["pipeline"], rule=row["rule"], destinations=tuple(json.loads(row["destinations"])),
                   state=JobState(row["state"]), attempts=int(row["attempts"]), supersedes_job=row["supersedes_job"],
                   result_uids=json.loads(row["result_uids"]) if row["result_uids"] else None)


@dataclass(frozen=True)
class Delivery:
    """One result file to send to one destination (a `dispatches` row once the job finishes)."""

    destination: str
    kind: str  # seg | sr | scN
    sop_instance_uid: str
    path: str  # relative to data_dir


class Jobs:
    """The jobs table's transitions over one catalog."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def get(self, job_id: int) -> Job:
        rows = self.catalog.query("SELECT j.*, s.series_uid FROM jobs j JOIN series s ON s.id = j.series_id "
                                  "WHERE j.id=?", (job_id,))
        if not rows:
            raise ValueError(f"no job {job_id}")
        return Job.from_row(rows[0])

    @staticmethod
    def create(con: sqlite3.Connection, series_id: int, generation: int, rule: str, pipeline: str,
               destinations: list[str]) -> tuple[int, int | None]:
        """Queue a job for a routed series generation, inside the caller's routing transaction.

        Earlier generations still queued or running are superseded (their input changed); the
        latest job with results is named as the one this replaces, so the new SR can reference
        its predecessor. Returns (job id, superseded job id or None)."""
        t = now()
        con.execute(f"UPDATE jobs SET state=?, updated_at=? WHERE series_id=? AND generation < ? "
                    f"AND state IN {sql_states((JobState.QUEUED, JobState.RUNNING))}",
                    (JobState.SUPERSEDED.value, t, series_id, generation))
        done = con.execute(f"SELECT id FROM jobs WHERE series_id=? AND state IN {sql_states(WITH_RESULTS)} "
                           "AND result_uids IS NOT NULL ORDER BY id DESC LIMIT 1", (series_id,)).fetchone()
        supersedes = done[0] if done is not None else None
        cur = con.execute(
            "INSERT INTO jobs (series_id, generation, pipeline, rule, destinations, state, created_at, "
            "updated_at, supersedes_job) VALUES (?,?,?,?,?,?,?,?,?)",
            (series_id, generation, pipeline, rule, json.dumps(destinations), JobState.QUEUED.value, t, t,
             supersedes))
        return int(cur.lastrowid or 0), supersedes

    def recover(self) -> int:
        """On start: jobs left RUNNING by a crash go back to the queue. Returns how many."""
        with self.catalog.transaction() as con:
            cur = con.execute("UPDATE jobs SET state=?, updated_at=?, reason='resumed after restart' WHERE state=?",
                              (JobState.QUEUED.value, now(), JobState.RUNNING.value))
            return cur.rowcount

    def claim_next(self) -> int | None:
        """Atomically move the oldest queued job to RUNNING (one more attempt); its id, or None."""
        t = now()
        with self.catalog.transaction() as con:
            row = con.execute("SELECT id FROM jobs WHERE state=? ORDER BY id LIMIT 1",
                              (JobState.QUEUED.value,)).fetchone()
            if row is None:
                return None
            con.execute("UPDATE jobs SET state=?, attempts=attempts+1, started_at=?, updated_at=? WHERE id=?",
                        (JobState.RUNNING.value, t, t, row[0]))
            return int(row[0])

    def supersede(self, job_id: int) -> None:
        self._set(job_id, state=JobState.SUPERSEDED.value)

    def fail(self, job_id: int, reason: str, retry: bool, max_attempts: int) -> bool:
        """FAILED with `reason`, or back to QUEUED when `retry` and attempts are left. True when requeued."""
        t = now()
        with self.catalog.transaction() as con:
            attempts = con.execute("SELECT attempts FROM jobs WHERE id=?", (job_id,)).fetchone()[0]
            if retry and attempts < max_attempts:
                con.execute("UPDATE jobs SET state=?, reason=?, updated_at=? WHERE id=?",
                            (JobState.QUEUED.value, f"attempt {attempts} failed: {reason}", t, job_id))
                return True
            con.execute("UPDATE jobs SET state=?, reason=?, finished_at=?, updated_at=? WHERE id=?",
                        (JobState.FAILED.value, reason, t, t, job_id))
            return False

    def keep_result_uids(self, job_id: int, uids: dict[str, Any]) -> None:
        """Store the UIDs a job's results will carry, so a re-run or re-send reuses them."""
        self._set(job_id, result_uids=json.dumps(uids))

    def result_uids(self, job_id: int | None) -> dict[str, Any] | None:
        if not job_id:
            return None
        row = self.catalog.query("SELECT result_uids FROM jobs WHERE id=?", (job_id,))
        return json.loads(row[0]["result_uids"]) if row and row[0]["result_uids"] else None

    def finish(self, job_id: int, deliveries: list[Delivery], measurements: dict[str, Any],
               timings: dict[str, float]) -> bool:
        """Record the results and queue their deliveries: DISPATCHING, or DONE when there is nothing
        to send. False (nothing written) when the job is no longer RUNNING (superseded meanwhile)."""
        t = now()
        with self.catalog.transaction() as con:
            state = con.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()[0]
            if state != JobState.RUNNING.value:
                return False
            con.executemany(
                "INSERT OR REPLACE INTO dispatches (job_id, destination, kind, sop_instance_uid, path, state, "
                "attempts, next_attempt_at) VALUES (?,?,?,?,?,'pending',0,?)",
                [(job_id, d.destination, d.kind, d.sop_instance_uid, d.path, t) for d in deliveries])
            has_dispatch = con.execute("SELECT COUNT(*) FROM dispatches WHERE job_id=?", (job_id,)).fetchone()[0]
            con.execute("UPDATE jobs SET state=?, reason=NULL, measurements=?, timings=?, updated_at=?, "
                        "finished_at=? WHERE id=?",
                        ((JobState.DISPATCHING if has_dispatch else JobState.DONE).value, dumps(measurements),
                         dumps(timings), t, None if has_dispatch else t, job_id))
        return True

    @staticmethod
    def settle(con: sqlite3.Connection, job_id: int, t: float) -> None:
        """After a dispatch attempt, inside its transaction: DONE when every dispatch is sent, FAILED
        when one has given up, else DISPATCHING or RETRYING (a send has failed and waits to retry)."""
        states = [r[0] for r in con.execute("SELECT state FROM dispatches WHERE job_id=?", (job_id,))]
        job_state = con.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()[0]
        if job_state not in (JobState.DISPATCHING.value, JobState.RETRYING.value):
            return
        if states and all(s == "sent" for s in states):
            con.execute("UPDATE jobs SET state=?, reason=NULL, finished_at=?, updated_at=? WHERE id=?",
                        (JobState.DONE.value, t, t, job_id))
        elif "failed" in states and "pending" not in states:
            errors = [r[0] for r in con.execute(
                "SELECT destination || ' ' || kind || ': ' || COALESCE(last_error, '?') FROM dispatches "
                "WHERE job_id=? AND state='failed'", (job_id,))]
            con.execute("UPDATE jobs SET state=?, reason=?, finished_at=?, updated_at=? WHERE id=?",
                        (JobState.FAILED.value, "dispatch failed: " + "; ".join(errors), t, t, job_id))
        elif any(s != "sent" for s in states):
            # a pending row with an error has failed once, or waits behind a destination that is down
            any_retry = con.execute("SELECT 1 FROM dispatches WHERE job_id=? AND last_error IS NOT NULL "
                                    "AND state='pending'", (job_id,)).fetchone()
            con.execute("UPDATE jobs SET state=?, updated_at=? WHERE id=?",
                        ((JobState.RETRYING if any_retry else JobState.DISPATCHING).value, t, job_id))

    def retry(self, job_id: int) -> str:
        """The operator's retry of a FAILED or DONE job: re-send its results if they exist, else run it
        again. Returns what was done; ValueError says why not (unknown job, still active, purged)."""
        t = now()
        with self.catalog.transaction() as con:
            row = con.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                raise ValueError(f"no job {job_id}")
            if row[0] not in (JobState.FAILED.value, JobState.DONE.value):
                raise ValueError(f"job {job_id} is {row[0]}; only failed or done jobs can be retried")
            purged = con.execute("SELECT p.at FROM purges p JOIN jobs j ON j.series_id = p.series_id"
                                 " WHERE j.id=? AND p.generation = j.generation", (job_id,)).fetchone()
            if purged is not None:
                when = time.strftime("%Y-%m-%d %H:%M", time.localtime(purged[0]))
                raise ValueError(f"job {job_id}: its series' instances and results were deleted by retention on "
                                 f"{when} (retention.finished_days / failed_days); send the series again from the "
                                 "PACS to process it anew")
            n = con.execute("SELECT COUNT(*) FROM dispatches WHERE job_id=?", (job_id,)).fetchone()[0]
            if n:
                only_unsent = " AND state != 'sent'" if row[0] == JobState.FAILED.value else ""
                con.execute("UPDATE dispatches SET state='pending', attempts=0, next_attempt_at=?, last_error=NULL "
                            "WHERE job_id=?" + only_unsent, (t, job_id))
                con.execute("UPDATE jobs SET state=?, reason=NULL, finished_at=NULL, updated_at=? WHERE id=?",
                            (JobState.DISPATCHING.value, t, job_id))
                return "results queued for sending again"
            con.execute("UPDATE jobs SET state=?, attempts=0, reason=NULL, finished_at=NULL, updated_at=? WHERE id=?",
                        (JobState.QUEUED.value, t, job_id))
            return "job queued to run again"

    def _set(self, job_id: int, **values: Any) -> None:
        cols = ", ".join(f"{k}=?" for k in values)
        with self.catalog.transaction() as con:
            con.execute(f"UPDATE jobs SET {cols}, updated_at=? WHERE id=?", (*values.values(), now(), job_id))


def retry_job(catalog: Catalog, job_id: int) -> str:
    """`dicom-node retry JOB` and the status page's retry button (see Jobs.retry)."""
    return Jobs(catalog).retry(job_id)
