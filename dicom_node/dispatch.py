"""Send results to their destinations: C-STORE SCU (or STOW-RS to a DICOMweb destination,
dicom_node.dicomweb), retries with exponential backoff.

Every attempt is a row in `dispatch_attempts`; the `dispatches` row says what is still due.
Delivery is at-least-once; because a re-send reuses the same SOP Instance UIDs (stored with
the job), the PACS de-duplicates and the effect is exactly once.

One lane per destination: the node runs `run_due(name)` in its own thread for each configured
destination (and `run_unconfigured()` in one more, for rows whose destination has no lane:
removed from the config, or added after start). A send to a destination that is down blocks for
up to `dispatch.timeout_s`; with one thread for all destinations every other destination waited
for that timeout, round after round. Lanes share nothing but the catalog (short transactions)
and the TLS-context cache (locked), so an outage of one destination never delays the others.

A destination that cannot be associated with (for DICOMweb: not connected to, or refusing every
request: 401, 403, 404, 502-504) is down: the result that found it down (the
oldest pending one: it probes) backs off, and every other result pending for that destination
waits until the same moment, without spending attempts, its row saying so (`last_error`
"waiting: ..."; its job is RETRYING, on the status page and in /metrics). At that moment all are
due, the oldest job probes first, and once it gets through the rest of the backlog goes in the
same round, oldest job first: after an outage the PACS gets the studies in the order they came.
When the probe gives up (dispatch.max_attempts), the next oldest takes over. The waiting is in
the catalog, so it survives a restart. A failure the destination answered (a status, a lost
response) or one that never reached it (a missing file) is the result's own: it waits on its own
backoff and holds up nobody.
"""
from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread

from dicom_node.catalog import Catalog, now
from dicom_node.config import Config, DestinationSettings, DispatchSettings
from dicom_node.dicomweb import store_instances
from dicom_node.jobs import Jobs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SendOutcome:
    ok: bool
    status: str  # DIMSE status as 0xNNNN (DICOMweb: HTTP NNN), or why no status came back
    seconds: float
    associated: bool | None = None  # False: no association / request refused as a whole (down); None: not tried


def c_store(path: Path, dest: DestinationSettings, calling_ae: str, timeout_s: float,
            ssl_context: ssl.SSLContext | None = None) -> SendOutcome:
    """One association, one C-STORE of the file at `path` to `dest` (over TLS when given a context)."""
    return c_store_many([path], dest, calling_ae, timeout_s, ssl_context)[0]


def c_store_many(paths: Sequence[Path], dest: DestinationSettings, calling_ae: str, timeout_s: float,
                 ssl_context: ssl.SSLContext | None = None) -> list[SendOutcome]:
    """One association, one C-STORE per file, an outcome per file: a job's SEG and SR share one
    handshake (one round trip less, and one fewer association for the PACS to log)."""
    from pynetdicom import AE

    t0 = time.monotonic()
    datasets = [dcmread(path) for path in paths]
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    for context in dict.fromkeys((ds.SOPClassUID, ds.file_meta.TransferSyntaxUID) for ds in datasets):
        ae.add_requested_context(*context)
    tls_args = (ssl_context, dest.tls.server_hostname or dest.host) if ssl_context is not None else None
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title, tls_args=tls_args)
    if not assoc.is_established:
        why = ("association rejected" if assoc.is_rejected
               else "association aborted" if assoc.is_aborted else "no association")
        if ssl_context is not None:  # pynetdicom logs the TLS error itself; say where to look
            why += " over TLS (handshake refused? check the certificates and destinations.*.tls)"
        down = SendOutcome(False, f"{why} by {dest.ae_title}@{dest.host}:{dest.port}", time.monotonic() - t0,
                           associated=False)
        return [down] * len(datasets)
    outcomes = []
    try:
        for ds in datasets:
            t1 = time.monotonic()
            if not assoc.is_established:  # an earlier store lost the connection
                outcomes.append(SendOutcome(False, "association lost before this C-STORE", 0.0, associated=True))
                continue
            code = getattr(assoc.send_c_store(ds), "Status", None)
            if code is None:
                outcomes.append(SendOutcome(False, "no C-STORE response (connection lost or timed out)",
                                            time.monotonic() - t1, associated=True))
                continue
            # 0x0000 success; 0xB000/0xB007/0xB006 are warnings: stored, coerced or elements discarded
            ok = code == 0x0000 or (code & 0xF000) == 0xB000
            outcomes.append(SendOutcome(ok, f"0x{code:04X}", time.monotonic() - t1, associated=True))
    finally:
        assoc.release()
    return outcomes


def stow_many(paths: Sequence[Path], dest: DestinationSettings, timeout_s: float, ssl_context: ssl.SSLContext | None,
              resolve: Callable[[str], Path], key: str) -> list[SendOutcome]:
    """One STOW-RS request with every file, an outcome per file (the DICOMweb twin of c_store_many)."""
    t0 = time.monotonic()
    instances = [(str(dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID),
                  path.read_bytes()) for path in paths]
    outcomes = store_instances(instances, dest.dicomweb, resolve, timeout_s, ssl_context, key)
    seconds = time.monotonic() - t0
    return [SendOutcome(o.ok, o.status, seconds, associated=o.reached) for o in outcomes]


def backoff_seconds(settings: DispatchSettings, attempts: int) -> float:
    """Wait before attempt `attempts + 1`: initial * factor^(attempts-1), capped."""
    return min(settings.backoff_max_s, settings.backoff_initial_s * settings.backoff_factor ** max(0, attempts - 1))


class Dispatcher:
    """Works through due `dispatches` rows; updates job state when all of a job's rows are sent."""

    def __init__(self, config: Config, catalog: Catalog) -> None:
        self.config = config
        self.catalog = catalog
        self._tls: dict[str, ssl.SSLContext] = {}
        self._lock = threading.Lock()  # the lanes' threads share the TLS cache
        # destinations with a lane of their own (the node sets it when it starts them); the
        # unconfigured lane takes every other row. None: every configured destination
        self.laned: frozenset[str] | None = None

    def ssl_context(self, name: str, dest: DestinationSettings) -> ssl.SSLContext | None:
        """The destination's client TLS context (built once), or None for plain TCP."""
        if not dest.tls.enabled:
            return None
        with self._lock:
            if name not in self._tls:
                from dicom_node.security import destination_ssl_context

                self._tls[name] = destination_ssl_context(dest.tls, self.config.path, key=f"destinations.{name}.tls")
            return self._tls[name]

    def pending(self, destination: str | None = None, unconfigured: bool = False
                ) -> list[tuple[int, int, str, float]]:
        """(id, job id, destination, next_attempt_at) of the pending dispatches, oldest job first. Only
        those to `destination` when given; only those to destinations without a lane of their own
        (`laned`) when `unconfigured`."""
        sql = "SELECT id, job_id, destination, next_attempt_at FROM dispatches WHERE state='pending'"
        args: list[object] = []
        if destination is not None:
            sql += " AND destination = ?"
            args.append(destination)
        if unconfigured:
            names = sorted(self.laned if self.laned is not None else self.config.destinations)
            sql += f" AND destination NOT IN ({', '.join('?' * len(names))})"
            args.extend(names)
        rows = self.catalog.query(sql + " ORDER BY job_id, id", tuple(args))
        return [(r["id"], r["job_id"], r["destination"], r["next_attempt_at"]) for r in rows]

    def run_due(self, destination: str | None = None) -> int:
        """Attempt every due dispatch once (only those to `destination` when given: one lane);
        returns how many were attempted.

        Oldest job first. Once a destination fails in a round, its other due items wait for the next
        round (they stay due, no attempt is counted): a destination that is down costs at most one
        timeout per round instead of one per queued result."""
        return self._round(self.pending(destination=destination))

    def run_unconfigured(self) -> int:
        """The lane for rows whose destination has no lane of its own: removed from the config (each
        attempt fails with that reason and backs off like any other failure, until the job gives
        up) or added to it after the lanes started (sent from here)."""
        return self._round(self.pending(unconfigured=True))

    def _round(self, pending: list[tuple[int, int, str, float]]) -> int:
        """Attempt the due rows, a job's rows to one destination in one association."""
        t = now()
        failed: set[str] = set()  # failed in this round: the rest of its rows wait for the next
        attempted = 0
        groups: dict[tuple[int, str], list[int]] = {}  # (job, destination) -> rows, in the order given
        for dispatch_id, job_id, destination, due_at in pending:
            if due_at <= t:
                groups.setdefault((job_id, destination), []).append(dispatch_id)
        for (_, destination), ids in groups.items():
            if destination in failed:
                continue
            attempted += len(ids)
            if not all(outcome.ok for outcome in self.attempt_together(ids)):
                failed.add(destination)
        return attempted

    def attempt(self, dispatch_id: int) -> SendOutcome:
        return self.attempt_together([dispatch_id])[0]

    def attempt_together(self, dispatch_ids: list[int]) -> list[SendOutcome]:
        """Send these rows (one job, one destination) in one association; each outcome recorded."""
        rows = [self.catalog.query("SELECT * FROM dispatches WHERE id=?", (i,))[0] for i in dispatch_ids]
        name = rows[0]["destination"]
        dest = self.config.destinations.get(name)
        paths = [self.config.data_dir / row["path"] for row in rows]
        missing = [row["path"] for row, path in zip(rows, paths) if not path.is_file()]
        if dest is None:
            outcomes = [SendOutcome(False, f"destination {name!r} is no longer configured", 0.0)] * len(rows)
        elif missing:  # never half a job: the PACS gets its SEG and SR together or not at all
            outcomes = [SendOutcome(False, f"result file {', '.join(missing)} is missing", 0.0)] * len(rows)
        else:
            try:
                timeout, tls = self.config.dispatch.timeout_s, self.ssl_context(name, dest)
                if dest.dicomweb.url:
                    outcomes = stow_many(paths, dest, timeout, tls, self.config.path, f"destinations.{name}")
                else:
                    args = (dest, self.config.node.ae_title, timeout, tls)
                    outcomes = (c_store_many(paths, *args) if len(paths) > 1 else [c_store(paths[0], *args)])
            except Exception as exc:  # network errors must not kill the lane's thread
                outcomes = [SendOutcome(False, f"{type(exc).__name__}: {exc}", 0.0)] * len(rows)
        for row, outcome in zip(rows, outcomes):
            self._record(row, outcome)
        return outcomes

    def _record(self, row, outcome: SendOutcome) -> None:
        settings = self.config.dispatch
        attempts = row["attempts"] + 1
        t = now()
        with self.catalog.transaction() as con:
            con.execute(
                "INSERT INTO dispatch_attempts (dispatch_id, at, ok, status, seconds) VALUES (?,?,?,?,?)",
                (row["id"], t, int(outcome.ok), outcome.status, outcome.seconds),
            )
            if outcome.ok:
                con.execute("UPDATE dispatches SET state='sent', attempts=?, sent_at=?, last_error=NULL WHERE id=?",
                            (attempts, t, row["id"]))
            elif attempts >= settings.max_attempts:
                con.execute("UPDATE dispatches SET state='failed', attempts=?, last_error=? WHERE id=?",
                            (attempts, outcome.status, row["id"]))
            else:
                again = t + backoff_seconds(settings, attempts)
                con.execute("UPDATE dispatches SET attempts=?, last_error=?, next_attempt_at=? WHERE id=?",
                            (attempts, outcome.status, again, row["id"]))
                if outcome.associated is False:  # down: the rest of its backlog waits for this probe
                    waiting = [r[0] for r in con.execute(
                        "SELECT DISTINCT job_id FROM dispatches WHERE destination=? AND state='pending' AND id != ?",
                        (row["destination"], row["id"]))]
                    con.execute("UPDATE dispatches SET next_attempt_at=MAX(next_attempt_at, ?), last_error=? "
                                "WHERE destination=? AND state='pending' AND id != ?",
                                (again, f"waiting: {row['destination']} is down ({outcome.status})",
                                 row["destination"], row["id"]))
                    for job_id in waiting:
                        if job_id != row["job_id"]:
                            Jobs.settle(con, job_id, t)
            Jobs.settle(con, row["job_id"], t)
        level = logging.INFO if outcome.ok else logging.WARNING
        log.log(level, "dispatch %s of job %s to %s (attempt %d): %s", row["kind"], row["job_id"],
                row["destination"], attempts, "sent" if outcome.ok else outcome.status)
