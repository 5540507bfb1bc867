"""Retention: delete what the node has finished with, so a node that runs for months keeps its disk.

A series is finished when it was stored only (routing sent it nowhere) or when every job of it is
done (results acknowledged by every destination). `retention.finished_days` after that, its
instance files and result folders are deleted; `retention.failed_days` does the same for a series
whose current job failed (kept longer, or for ever, so that `dicom-node retry` can still re-send).
A series still receiving, waiting, running or sending is never touched. With
`retention.max_stored` set, while the instances stored exceed it, the oldest other finished
series go early (reason `space`), so a burst does not drive the disk to `min_free_disk`, where
C-STOREs are refused.

The catalog keeps the series and its jobs (state `purged`, with a `purges` row saying when, why
and how much) so the status page and an audit still see them; only the instance rows go, so a
series sent again is received as new (a new generation, processed again).

Order, for crash safety: the catalog change commits first (rows gone, files listed in `purges`),
then the files are deleted and the row marked `files_removed`; a crash in between leaves files
that `finish_pending` deletes at the next start, before the listener accepts anything. Both run
under the instance store's exclusive gate, so no C-STORE can write into a series between the
purge's reading of the catalog and its deleting of files.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from dicom_node.catalog import Catalog
from dicom_node.config import RetentionSettings
from dicom_node.jobs import ACTIVE_STATES, JobState
from dicom_node.security import DiskThreshold
from dicom_node.store import InstanceStore, fsync_dir

log = logging.getLogger("dicom_node.retention")

DAY_S = 86400.0
ACTIVE_JOB_STATES = tuple(state.value for state in ACTIVE_STATES)

# Per routed or store-only series: when it finished, whether a job is still active, whether its
# current generation's job failed.
_CANDIDATES = f"""
SELECT s.id, s.series_uid, s.generation, s.state,
       COALESCE((SELECT MAX(COALESCE(j.finished_at, j.updated_at)) FROM jobs j WHERE j.series_id = s.id),
                s.completed_at, s.last_received) AS finished,
       (SELECT COUNT(*) FROM jobs j WHERE j.series_id = s.id
          AND j.state IN ({", ".join(repr(state) for state in ACTIVE_JOB_STATES)})) AS active,
       (SELECT COUNT(*) FROM jobs j WHERE j.series_id = s.id AND j.generation = s.generation
          AND j.state = '{JobState.FAILED.value}') AS failed,
       (SELECT COALESCE(SUM(i.size), 0) FROM instances i WHERE i.series_id = s.id) AS bytes
FROM series s WHERE s.state IN ('routed', 'ignored')
ORDER BY finished
"""


@dataclass(frozen=True)
class Purge:
    """One series whose files were deleted."""

    series_id: int
    series_uid: str
    reason: str  # finished | failed | space
    instances: int
    bytes: int


class Retention:
    """Finds finished series past their retention and deletes their files (see the module docstring)."""

    def __init__(self, settings: RetentionSettings, catalog: Catalog, store: InstanceStore) -> None:
        self.settings = settings
        self.catalog = catalog
        self.store = store
        self.data_dir = store.data_dir.resolve()
        self.max_stored = DiskThreshold.parse(settings.max_stored, "retention.max_stored").bytes  # 0: no cap

    def due(self, now: float) -> list[tuple[int, int, str]]:
        """(series id, generation, reason) of every series to purge at `now`: past its days
        (reason finished or failed), then, while the instances stored exceed retention.max_stored,
        the oldest other finished series (reason space; failed ones stay for the operator)."""
        limits = {"finished": self.settings.finished_days, "failed": self.settings.failed_days}
        cap = self.max_stored
        if not any(limits.values()) and not cap:
            return []  # keep everything: no need to look
        out, early = [], []
        left = self.catalog.query("SELECT COALESCE(SUM(size), 0) FROM instances")[0][0] if cap else 0
        for row in self.catalog.query(_CANDIDATES):  # oldest first
            if row["active"]:
                continue
            reason = "failed" if row["failed"] else "finished"
            days = limits[reason]
            if days > 0 and row["finished"] is not None and row["finished"] <= now - days * DAY_S:
                out.append((row["id"], row["generation"], reason))
                left -= row["bytes"]
            elif reason == "finished":
                early.append(row)
        for row in early:
            if not cap or left <= cap:
                break
            out.append((row["id"], row["generation"], "space"))
            left -= row["bytes"]
        return out

    def sweep(self, now: float | None = None, limit: int = 100) -> list[Purge]:
        """Purge up to `limit` due series (a loop step: more are left for the next one)."""
        now = time.time() if now is None else now
        done = []
        for series_id, generation, reason in self.due(now)[:limit]:
            with self.store.gate.exclusive():
                purge = self._purge(series_id, generation, reason, now)
                if purge is not None:
                    self._remove_files(purge[0], purge[1])
            if purge is not None:
                done.append(purge[2])
                log.info("retention: series %s (%s) purged: %d instance(s), %.1f MB", purge[2].series_uid, reason,
                         purge[2].instances, purge[2].bytes / 1e6)
        return done

    def finish_pending(self) -> int:
        """Delete the files of purges a crash interrupted after their catalog change; call at start,
        before the listener runs. Returns how many purges were finished."""
        rows = self.catalog.query("SELECT id, files FROM purges WHERE files_removed = 0")
        with self.store.gate.exclusive():
            for row in rows:
                self._remove_files(row["id"], json.loads(row["files"]))
        if rows:
            log.warning("retention: finished deleting the files of %d purge(s) interrupted by the last stop",
                        len(rows))
        return len(rows)

    def _purge(self, series_id: int, generation: int, reason: str, now: float
               ) -> tuple[int, list[str], Purge] | None:
        """The catalog side, in one transaction; None if the series changed since `due` looked."""
        with self.catalog.transaction() as con:
            row = con.execute("SELECT series_uid, state, generation FROM series WHERE id=?", (series_id,)).fetchone()
            if row is None or row["generation"] != generation or row["state"] not in ("routed", "ignored"):
                return None  # re-opened by a late instance, or purged already
            active = con.execute(
                "SELECT COUNT(*) FROM jobs WHERE series_id=? "
                f"AND state IN ({', '.join('?' * len(ACTIVE_JOB_STATES))})",
                (series_id, *ACTIVE_JOB_STATES)).fetchone()[0]
            if active:
                return None
            instances = con.execute("SELECT path, size, calling_ae FROM instances WHERE series_id=?",
                                    (series_id,)).fetchall()
            by_ae: dict[str, int] = {}
            for r in instances:
                by_ae[r["calling_ae"]] = by_ae.get(r["calling_ae"], 0) + 1
            jobs = [r[0] for r in con.execute("SELECT id FROM jobs WHERE series_id=? ORDER BY id", (series_id,))]
            files = [r["path"] for r in instances] + [f"results/job-{j}" for j in jobs]
            size = sum(r["size"] for r in instances)
            con.execute("DELETE FROM instances WHERE series_id=?", (series_id,))
            # received_count restarts: a series sent again is counted (and completed) afresh
            con.execute("UPDATE series SET state='purged', received_count=0 WHERE id=?", (series_id,))
            purge_id = con.execute(
                "INSERT INTO purges (series_id, generation, at, reason, instances, bytes, by_calling_ae, files)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (series_id, generation, now, reason, len(instances), size, json.dumps(by_ae),
                 json.dumps(files))).lastrowid
        assert purge_id is not None  # the row the INSERT just added
        return purge_id, files, Purge(series_id, row["series_uid"], reason, len(instances), size)

    def _remove_files(self, purge_id: int, files: list[str]) -> None:
        """Delete the listed files and result folders (missing ones are fine: idempotent), then the
        instance folders left empty; make the deletions durable, then mark the purge done (so a
        power cut cannot bring back files the catalog calls removed)."""
        folders: set[Path] = set()
        changed: set[Path] = set()  # folders whose entries were deleted
        for rel in files:
            path = (self.data_dir / rel).resolve()
            parts = path.relative_to(self.data_dir).parts if path.is_relative_to(self.data_dir) else ()
            top = parts[0] if len(parts) > 1 else ""
            if top not in ("instances", "results"):  # catalog paths are ours; refuse anything else
                log.error("retention: purge %d lists %s, outside instances/ and results/; not deleted", purge_id, rel)
                continue
            if top == "results":
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
                folders.add(path.parent)
            changed.add(path.parent)
        for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
            for empty in (folder, folder.parent):  # instances/<study>/<series>, then <study>
                try:
                    empty.rmdir()
                except OSError:  # not empty (other series of the study, or new files): keep it
                    break
                changed.add(empty.parent)
        if self.store.fsync:
            for folder in changed:
                if folder.is_dir():
                    fsync_dir(folder)
        with self.catalog.transaction() as con:
            con.execute("UPDATE purges SET files_removed=1 WHERE id=?", (purge_id,))
