"""Liveness and readiness: is the node running, and could it take a study right now?

Why readiness is more than "the process answers": a node whose catalog is read-only, whose
model is missing or whose disk is below the reserve still accepts TCP connections but would
refuse or lose work. A load balancer or an operator's monitor should see 503 then, with the
failing check named in the JSON body.
"""
from __future__ import annotations

import shutil
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from dicom_node.catalog import Catalog
from dicom_node.config import Config
from dicom_node.security import DiskThreshold
from inference.api import ModelState, check_model, sct_model_state


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def check_catalog(catalog: Catalog) -> Check:
    """A write transaction can start (takes the write lock, writes nothing)."""
    try:
        con = sqlite3.connect(catalog.path, timeout=2.0, isolation_level=None)
        try:
            con.execute("BEGIN IMMEDIATE")
            con.execute("ROLLBACK")
        finally:
            con.close()
    except sqlite3.Error as exc:
        return Check("catalog", False, f"{catalog.path} not writable: {exc}")
    return Check("catalog", True, str(catalog.path))


def check_disk(data_dir: Path, reserve: DiskThreshold) -> Check:
    """Above the reserve that the listener keeps (security.min_free_disk): below it C-STOREs are refused."""
    short = reserve.shortfall(data_dir)
    free = shutil.disk_usage(data_dir).free
    return Check("disk", short is None, short or f"{free / 2**30:.2f} GiB free")


def model_state(spec: str) -> ModelState:
    """(loadable, loaded, detail) of a model spec, without loading it (inference's check_model)."""
    return check_model(spec)


class HealthChecker:
    """Runs the checks; model checks are cached for `model_ttl_s` (they read files)."""

    def __init__(self, config: Config, catalog: Catalog,
                 alive: Callable[[], dict[str, bool]] | None = None, model_ttl_s: float = 30.0) -> None:
        self.config = config
        self.catalog = catalog
        self.reserve = DiskThreshold.parse(config.security.min_free_disk)
        self.alive = alive or (lambda: {})
        self.model_ttl_s = model_ttl_s
        self._models: tuple[float, list[Check]] | None = None
        self._lock = threading.Lock()

    def model_checks(self) -> list[Check]:
        with self._lock:
            if self._models is None or time.monotonic() - self._models[0] > self.model_ttl_s:
                checks = []
                off = self.config.pipelines_off()
                for key in sorted({p.model for name, p in self.config.pipelines.items() if name not in off}):
                    try:
                        ok, loaded, detail = model_state(self.config.model_path(key))
                    except Exception as exc:  # a broken inference install is a readiness failure, not a crash
                        ok, loaded, detail = False, False, f"{type(exc).__name__}: {exc}"
                    checks.append(Check(f"model:{key}", ok, detail + (" (loaded)" if loaded else "")))
                for key, spec in sorted(self.config.pipeline_lesion_models().items()):
                    ok, loaded, detail = sct_model_state(spec)
                    checks.append(Check(f"model:{key}", ok, detail + (" (loaded)" if loaded else "")))
                for name, why in sorted(off.items()):  # off by configuration, not a failure
                    checks.append(Check(f"pipeline:{name}", True, f"off: {why}"))
                self._models = (time.monotonic(), checks)
            return self._models[1]

    def report(self) -> tuple[bool, bool, dict[str, Any]]:
        """(live, ready, body): live = every loop thread and the listener run; ready = live and checks pass."""
        threads = self.alive()
        live = all(threads.values())
        checks = [check_catalog(self.catalog), check_disk(self.config.data_dir, self.reserve),
                  *self.model_checks()]
        ready = live and all(c.ok for c in checks)
        body = {"status": "ready" if ready else ("alive" if live else "down"), "live": live, "ready": ready,
                "threads": threads, "checks": [asdict(c) for c in checks]}
        return live, ready, body
