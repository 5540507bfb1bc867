"""Catalog lookups by Series UID for tests (the catalog keys a series by study and series UID)."""
from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from dicom_node.catalog import Catalog
from dicom_node.completion import CompletionTracker


def series_of(catalog: Catalog, series_uid: str) -> sqlite3.Row:
    """The one series with this Series UID (tests that reuse a UID across studies look by id)."""
    ids = catalog.series_ids(series_uid)
    assert len(ids) == 1, f"{len(ids)} series have Series UID {series_uid}"
    row = catalog.series_row(ids[0])
    assert row is not None
    return row


def series_id(catalog: Catalog, series_uid: str) -> int:
    return int(series_of(catalog, series_uid)["id"])


def completed(tracker: CompletionTracker, now: float | None = None) -> list[str]:
    """Series UIDs the tracker completes now (it returns (id, uid) pairs)."""
    return [uid for _, uid in tracker.check(now=now)]


def add_series(con: sqlite3.Connection, series_uid: str, study_uid: str = "1.2", state: str = "routed",
               at: float = 0.0) -> int:
    """A series row for tests that make jobs by hand (jobs reference their series by id)."""
    cur = con.execute("INSERT INTO series (study_uid, series_uid, state, first_received, last_received) "
                      "VALUES (?, ?, ?, ?, ?)", (study_uid, series_uid, state, at, at))
    return int(cur.lastrowid or 0)


def dispatching_jobs(catalog: Catalog, data_dir: Path, destinations: tuple[str, ...], jobs: int = 3) -> None:
    """`jobs` jobs in state dispatching, oldest first, each with one pending SEG (file job-N-DEST.dcm)
    for every destination in order; later jobs look due earlier, so order comes from the job."""
    from dicom_node.jobs import Jobs, JobState

    t = time.time() - 1
    for n in range(jobs):
        with catalog.transaction() as con:
            series = add_series(con, f"1.{n}", at=t)
            job_id, _ = Jobs.create(con, series, 1, "spine", "spinal_cord", list(destinations))
            con.execute("UPDATE jobs SET state=? WHERE id=?", (JobState.DISPATCHING.value, job_id))
            for dest in destinations:
                path = data_dir / f"job-{job_id}-{dest}.dcm"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"x")
                con.execute("INSERT INTO dispatches (job_id, destination, kind, sop_instance_uid, path, state, "
                            "attempts, next_attempt_at) VALUES (?, ?, 'seg', ?, ?, 'pending', 0, ?)",
                            (job_id, dest, f"2.{job_id}.{dest}", path.name, t - n))
