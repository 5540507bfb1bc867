"""Prometheus text exposition of what the node did, read from the catalog at scrape time.

Why from the catalog: it is the one source of truth and survives restarts, so counters never
reset to zero when the node restarts (Prometheus sees monotonic totals) and the numbers agree
with `dicom-node status`. Only refusals are counted in memory: a refused association or
instance leaves no catalog row by design (nothing was stored).

Latency histograms go from the last instance of a series to its results stored in the PACS,
split by stage: completion wait (last instance -> series complete), queue (job created ->
started), load, inference, encoding (SEG + SR + validation), dispatch (results ready -> last
result acknowledged by the PACS), and end_to_end (last instance -> last result acknowledged).
"""
from __future__ import annotations

import json
import shutil
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

from dicom_node.catalog import Catalog
from dicom_node.jobs import JobState

# seconds; covers a fast GPU (1 s) to a slow CPU with retries (1 h)
BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
STAGES = ("completion_wait", "queue", "load", "inference", "encode", "dispatch", "end_to_end")


class RefusalCounter:
    """In-memory counts of refused associations and C-STOREs by calling AE (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = defaultdict(int)

    def add(self, calling_ae: str, what: str) -> None:
        with self._lock:
            self._counts[(calling_ae, what)] += 1

    def snapshot(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._counts)


def _escape(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, Any]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


class Exposition:
    """Builds one scrape: HELP/TYPE once per family, then its samples."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, value: float, **labels: Any) -> None:
        self.lines.append(f"{name}{_labels(labels)} {float(value):.17g}")

    def histogram(self, name: str, values: Iterable[float], **labels: Any) -> None:
        vals = sorted(v for v in values if v is not None and v >= 0)
        i = 0
        for bound in BUCKETS:
            while i < len(vals) and vals[i] <= bound:
                i += 1
            self.sample(f"{name}_bucket", i, **labels, le=f"{bound:g}")
        self.sample(f"{name}_bucket", len(vals), **labels, le="+Inf")
        self.sample(f"{name}_sum", sum(vals), **labels)
        self.sample(f"{name}_count", len(vals), **labels)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def stage_durations(catalog: Catalog) -> dict[str, list[float]]:
    """Seconds per stage for every job that produced results (see the module docstring)."""
    rows = catalog.query(
        "SELECT j.id, j.created_at, j.started_at, j.timings, j.state, s.last_received, s.completed_at,"
        " (SELECT MAX(sent_at) FROM dispatches d WHERE d.job_id=j.id) AS sent_at,"
        " (SELECT COUNT(*) FROM dispatches d WHERE d.job_id=j.id AND d.state != 'sent') AS unsent"
        " FROM jobs j JOIN series s ON s.id=j.series_id WHERE j.timings IS NOT NULL")
    out: dict[str, list[float]] = {stage: [] for stage in STAGES}
    for r in rows:
        t = json.loads(r["timings"])
        for stage, key in (("completion_wait", "completion_wait_s"), ("load", "load_s"),
                           ("inference", "inference_s"), ("encode", "encode_s")):
            if key in t:
                out[stage].append(float(t[key]))
        if r["started_at"] is not None:
            out["queue"].append(max(0.0, r["started_at"] - r["created_at"]))
        if r["sent_at"] is not None and r["unsent"] == 0:
            stages = sum(t.get(k, 0.0) for k in ("load_s", "inference_s", "encode_s"))
            ready = (r["started_at"] or r["created_at"]) + stages
            out["dispatch"].append(max(0.0, r["sent_at"] - ready))
            out["end_to_end"].append(max(0.0, r["sent_at"] - r["last_received"]))
    return out


def render_metrics(catalog: Catalog, data_dir: Path, refusals: RefusalCounter | None = None,
                   extra: dict[str, float] | None = None) -> str:
    """The whole /metrics page."""
    ex = Exposition()

    ex.family("dicom_node_instances_received_total", "counter", "Instances stored and acknowledged, by calling AE")
    received: dict[str, int] = defaultdict(int)
    for r in catalog.query("SELECT calling_ae, COUNT(*) FROM instances GROUP BY calling_ae"):
        received[r[0]] += r[1]
    for r in catalog.query("SELECT by_calling_ae FROM purges"):  # rows retention deleted still count
        for ae, n in json.loads(r[0]).items():
            received[ae] += n
    for ae in sorted(received):
        ex.sample("dicom_node_instances_received_total", received[ae], calling_ae=ae)

    ex.family("dicom_node_refused_total", "counter",
              "Associations (what=association) and C-STOREs (what=store) refused since start, by calling AE")
    for (ae, what), n in sorted((refusals.snapshot() if refusals else {}).items()):
        ex.sample("dicom_node_refused_total", n, calling_ae=ae, what=what)

    ex.family("dicom_node_series_completed_total", "counter", "Series that reached completion, by reason")
    for r in catalog.query("SELECT completion_reason, COUNT(*) FROM series WHERE completed_at IS NOT NULL "
                           "GROUP BY completion_reason ORDER BY 1"):
        ex.sample("dicom_node_series_completed_total", r[1], reason=r[0] or "unknown")

    ex.family("dicom_node_series", "gauge", "Series by state")
    for r in catalog.query("SELECT state, COUNT(*) FROM series GROUP BY state ORDER BY state"):
        ex.sample("dicom_node_series", r[1], state=r[0])

    ex.family("dicom_node_jobs", "gauge", "Jobs by state")
    counts = {r[0]: r[1] for r in catalog.query("SELECT state, COUNT(*) FROM jobs GROUP BY state")}
    for state in sorted({*(s.value for s in JobState), *counts}):
        ex.sample("dicom_node_jobs", counts.get(state, 0), state=state)

    ex.family("dicom_node_stage_seconds", "histogram",
              "Seconds per stage from the last instance of a series to its results stored in the PACS")
    for stage, values in stage_durations(catalog).items():
        ex.histogram("dicom_node_stage_seconds", values, stage=stage)

    ex.family("dicom_node_dispatch_attempts_total", "counter", "C-STORE/STOW-RS attempts to destinations, by outcome")
    for r in catalog.query("SELECT d.destination, a.ok, COUNT(*) FROM dispatch_attempts a JOIN dispatches d "
                           "ON d.id=a.dispatch_id GROUP BY d.destination, a.ok ORDER BY 1, 2"):
        ex.sample("dicom_node_dispatch_attempts_total", r[2], destination=r[0], outcome="ok" if r[1] else "error")
    ex.family("dicom_node_dispatch_waiting", "gauge",
              "Results waiting for a destination that failed them or is down, by destination")
    ex.family("dicom_node_dispatch_next_attempt_timestamp_seconds", "gauge",
              "When the next attempt to a waiting destination is due (Unix time), by destination")
    for r in catalog.query("SELECT destination, COUNT(*), MIN(next_attempt_at) FROM dispatches WHERE state='pending' "
                           "AND last_error IS NOT NULL GROUP BY destination ORDER BY destination"):
        ex.sample("dicom_node_dispatch_waiting", r[1], destination=r[0])
        ex.sample("dicom_node_dispatch_next_attempt_timestamp_seconds", r[2], destination=r[0])
    ex.family("dicom_node_dispatch_failed", "gauge", "Results that gave up after dispatch.max_attempts")
    failed = catalog.query("SELECT COUNT(*) FROM dispatches WHERE state='failed'")[0][0]
    ex.sample("dicom_node_dispatch_failed", failed)

    ex.family("dicom_node_retention_purged_series_total", "counter",
              "Series whose files retention deleted, by reason (finished | failed)")
    ex.family("dicom_node_retention_purged_bytes_total", "counter", "Instance bytes retention deleted, by reason")
    for r in catalog.query("SELECT reason, COUNT(*), SUM(bytes) FROM purges GROUP BY reason ORDER BY reason"):
        ex.sample("dicom_node_retention_purged_series_total", r[1], reason=r[0])
        ex.sample("dicom_node_retention_purged_bytes_total", r[2], reason=r[0])

    usage = shutil.disk_usage(data_dir)
    ex.family("dicom_node_disk_free_bytes", "gauge", "Free bytes on the data_dir file system")
    ex.sample("dicom_node_disk_free_bytes", usage.free)
    ex.family("dicom_node_disk_total_bytes", "gauge", "Size of the data_dir file system")
    ex.sample("dicom_node_disk_total_bytes", usage.total)

    for name, value in sorted((extra or {}).items()):
        ex.family(name, "gauge", name.replace("_", " "))
        ex.sample(name, value)
    return ex.text()
