"""Liveness and readiness: is the node running, and could it take a study right now?

Why readiness is more than "the process answers": a node whose catalog is read-only, whose
model is missing or whose disk is below the reserve still accepts TCP connections but would
refuse or lose work. A load balancer or an operator's monitor should see 503 then, with the
failing check named in the JSON body.
"""
from __future__ import annotations

import shutil
import sqlite3
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from dicom_node.catalog import Catalog
from dicom_node.config import Config
from dicom_node.security import DiskThreshold
from inference.models.meta import read_meta
from inference.models.nnunet_folder import (DEFAULT_CHECKPOINT, SettingError, is_nnunet_spec,
                                            resolve_settings)
from inference.models.spec import ModelError, split_spec


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


def nnunet_state(spec: str) -> tuple[bool, bool, str]:
    """(loadable, loaded, detail) of an nnU-Net folder spec (FOLDER?key=value&...): its settings
    resolved against the folder's files as the worker's load would (JSON and file names only)."""
    path, options = "", {}
    try:
        path, options = split_spec(spec)
        choice = resolve_settings(path, options.get("configuration"), options.get("folds"),
                                  options.get("checkpoint") or DEFAULT_CHECKPOINT,
                                  options.get("cord_labels"), options.get("lesion_labels"))
    except SettingError as exc:
        return False, False, f"nnU-Net model {path}: setting {exc.key}: {exc}"
    except ModelError as exc:  # bad JSON, unsupported plans, a malformed option in the spec
        return False, False, f"nnU-Net model {path or spec}: {exc}"
    nnunet = sys.modules.get("inference.models.nnunet")  # only if the worker imported it: no torch here
    is_loaded = getattr(nnunet, "is_loaded", None)
    loaded = bool(is_loaded and is_loaded(choice, options.get("use_mirroring", True), options.get("fast_cpu", False)))
    plan = choice.plan
    return True, loaded, (f"nnU-Net {plan.dataset_name} {plan.plans_name}/{plan.configuration} "
                          f"folds {','.join(choice.folds)} ({choice.checkpoint})")


def model_state(spec: str) -> tuple[bool, bool, str]:
    """(loadable, loaded, detail) of a model spec, without loading it.

    Loadable: its model.json and weights are there; for an nnU-Net folder, its settings fit it
    (see nnunet_state). Loaded: this process's inference registry holds it (loaded at start or by a job).
    """
    if is_nnunet_spec(spec):
        return nnunet_state(spec)

    try:
        meta = read_meta(spec)
    except ModelError as exc:
        return False, False, str(exc)
    if not (meta.folder / meta.weights).is_file():
        return False, False, f"model {meta.name}: weights {meta.folder / meta.weights} missing"
    registry = sys.modules.get("inference.models.registry")
    cache = getattr(registry, "_CACHE", {}) or {}
    loaded = any(key[0] == str(meta.folder) for key in cache)
    return True, loaded, f"{meta.name} {meta.version}"


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
                for key in sorted({p.model for p in self.config.pipelines.values()}):
                    try:
                        ok, loaded, detail = model_state(self.config.model_path(key))
                    except Exception as exc:  # a broken inference install is a readiness failure, not a crash
                        ok, loaded, detail = False, False, f"{type(exc).__name__}: {exc}"
                    checks.append(Check(f"model:{key}", ok, detail + (" (loaded)" if loaded else "")))
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
