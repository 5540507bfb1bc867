"""`dicom-node serve`, `status` and `retry`: the running node and the operator's view of it.

The node is a few loops over one catalog: the listener (pynetdicom threads), completion +
routing, the inference worker, dispatch (one lane per destination, so that an outage of one
never delays the others: dicom_node.dispatch) and retention. Each loop is a thread that
survives errors in one item; on start, unfinished work in the catalog is resumed.
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Callable

from dicom_node.catalog import Catalog
from dicom_node.config import Config, ConfigError, load_config
from dicom_node.metrics import RefusalCounter
from dicom_node.web import WebServer

if TYPE_CHECKING:
    from dicom_node.ray_executor import RayAnalyzer
    from dicom_node.store import StoredInstance

log = logging.getLogger("dicom_node")


class Node:
    """The whole node in one process. `start()` returns once the listener accepts associations."""

    def __init__(self, config: Config) -> None:
        from dicom_node.completion import CompletionTracker
        from dicom_node.dispatch import Dispatcher
        from dicom_node.retention import Retention
        from dicom_node.scp import StorageSCP
        from dicom_node.store import InstanceStore
        from dicom_node.worker import Worker

        self.config = config
        self.catalog = Catalog(config.catalog_path)
        self.store = InstanceStore(config.data_dir, self.catalog, fsync=config.storage.fsync)
        self.scp = StorageSCP(config, self.store, on_stored=self._on_stored)
        self.tracker = CompletionTracker(self.catalog, config.completion.idle_seconds)
        self.analyzer: RayAnalyzer | None = None
        if config.worker.executor == "ray":  # inference on model-holding Ray actors; the rest stays here
            from dicom_node.ray_executor import RayAnalyzer

            self.analyzer = RayAnalyzer(config)
            self.worker = Worker(config, self.catalog, analyzer=self.analyzer)
        else:
            self.worker = Worker(config, self.catalog)
        self.dispatcher = Dispatcher(config, self.catalog)
        self.retention = Retention(config.retention, self.catalog, self.store)
        self.refusals = RefusalCounter()
        self.web: WebServer | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        # each loop sleeps its poll interval on its own event; the stage before it sets it when
        # there is work (a series reached its expected count, a job was queued, results are ready),
        # so a case does not wait out one poll interval per stage
        self._wake: dict[str, threading.Event] = {}

    @property
    def port(self) -> int:
        return self.scp.port

    def start(self) -> None:
        removed = self.store.remove_partial_files()
        if removed:
            log.warning("removed %d partial file(s) left by a crash mid-write (never acknowledged)", removed)
        self.retention.finish_pending()  # before the listener: no C-STORE may race these deletions
        resumed = self.worker.recover()
        if resumed:
            log.info("resumed %d job(s) interrupted by the last stop", resumed)
        if self.analyzer is not None:
            self.analyzer.start()
        self.scp.start()
        if self.analyzer is None:  # Ray actors load theirs at start; here too, not when the first job asks
            threading.Thread(target=self._load_models, name="model-load", daemon=True).start()
        threading.Thread(target=self._preload_encoders, name="encoder-preload", daemon=True).start()
        self._count_refusals()
        workers = self.analyzer.size if self.analyzer is not None else 1  # one loop per actor
        loops: list[tuple[str, Callable[[], object], float]] = [
            ("completion", self._completion_step, self.config.completion.poll_interval_s),
            *[("worker" if i == 0 else f"worker-{i + 1}", self._work_step, self.config.worker.poll_interval_s)
              for i in range(workers)],
            *self._dispatch_lanes(),
            ("retention", self.retention.sweep, self.config.retention.interval_s),
        ]
        self._wake = {name: threading.Event() for name, _, _ in loops}
        for name, step, interval in loops:
            t = threading.Thread(target=self._loop, args=(name, step, interval), name=name, daemon=True)
            t.start()
            self._threads.append(t)
        if self.config.web.enabled:
            self.web = WebServer(self.config, self.catalog, self.refusals, alive=self.alive)
            self.web.start()
        log.info("node %s listening on %s:%d", self.config.node.ae_title, self.config.node.host, self.port)

    def _dispatch_lanes(self) -> list[tuple[str, Callable[[], object], float]]:
        """One loop per destination, `dispatch-NAME`, plus one for rows whose destination has no
        lane (removed from the config, or added after start): a destination that is down holds
        up only its own lane."""
        self.dispatcher.laned = frozenset(self.config.destinations)
        lanes: list[tuple[str, Callable[[], object], float]] = [
            (f"dispatch-{name}", functools.partial(self.dispatcher.run_due, name), 0.5)
            for name in self.config.destinations]
        other = "dispatch-unconfigured"
        while other.removeprefix("dispatch-") in self.config.destinations:  # a destination of that name
            other += "_"  # thread names are /health's keys: keep them apart
        lanes.append((other, self.dispatcher.run_unconfigured, 0.5))
        return lanes

    def _load_models(self) -> None:
        """Load every pipeline's model in the background after the listener is up, so the first
        case after a (re)start does not wait for it and a broken model is in the log at once.
        Loading is cached and locked per model: a job that comes first simply waits for it."""
        from inference.api import preload, preload_lesion_model

        for name, why in self.config.pipelines_off().items():
            log.warning("pipeline %s is off, its routing rules are skipped: %s", name, why)
        for key, lesion_spec in self.config.pipeline_lesion_models().items():
            t0 = time.monotonic()
            try:
                identity = preload_lesion_model(lesion_spec)
            except Exception as exc:  # its jobs fail with the same reason; /health shows it
                log.error("lesion model %s (%s) not loaded at start: %s", key, lesion_spec.name, exc)
                continue
            log.info("lesion model %s %s loaded in %.1f s", identity.name, identity.version, time.monotonic() - t0)
        for spec in self.config.pipeline_model_paths():
            t0 = time.monotonic()
            try:
                model, device = preload(spec, self.config.worker.device)
            except Exception as exc:  # jobs of its pipelines fail with the same reason; /health shows it
                log.error("model %s not loaded at start: %s", spec, exc)
                continue
            log.info("model %s %s loaded on %s in %.1f s", model.name, model.version, device, time.monotonic() - t0)

    @staticmethod
    def _preload_encoders() -> None:
        """What highdicom reads on the first object it makes, read at start (results.build.preload_encoders):
        the first case after a (re)start then does not pay it in its encoding. A failure is only
        logged: the first job meets it again and reports it."""
        from dicom_node.results.build import preload_encoders

        t0 = time.monotonic()
        try:
            preload_encoders()
        except Exception as exc:
            log.warning("result encoders not preloaded: %s", exc)
            return
        log.info("result encoders preloaded in %.1f s", time.monotonic() - t0)

    def alive(self) -> dict[str, bool]:
        """Liveness of the listener and of each loop thread (for /health)."""
        state = {"listener": self.scp.server is not None and not self._stop.is_set()}
        state.update({t.name: t.is_alive() for t in self._threads})
        return state

    def _count_refusals(self) -> None:
        """Count refused associations and non-success C-STORE responses by calling AE (for /metrics).

        Bound on the listener's server (all current and future associations), so the listener
        itself needs no knowledge of metrics.
        """
        from pynetdicom import evt

        def calling(event: evt.Event) -> str:
            try:
                rq = event.assoc.requestor.primitive
                if rq is not None:
                    return str(rq.calling_ae_title).strip()
            except AttributeError:
                pass
            return str(event.assoc.requestor.ae_title).strip()

        def rejected(event: evt.Event) -> None:
            self.refusals.add(calling(event), "association")

        def sent(event: evt.Event) -> None:
            msg = event.message
            if type(msg).__name__ == "C_STORE_RSP":
                status = getattr(msg.command_set, "Status", 0)
                if status != 0 and (status & 0xF000) != 0xB000:
                    self.refusals.add(calling(event), "store")

        server = self.scp.server
        if server is not None:
            server.bind(evt.EVT_REJECTED, rejected)
            server.bind(evt.EVT_DIMSE_SENT, sent)

    def _kick(self, prefix: str) -> None:
        """Wake the loops whose name starts with `prefix` now instead of at their next poll."""
        for name, event in self._wake.items():
            if name.startswith(prefix):
                event.set()

    def _on_stored(self, stored: StoredInstance) -> None:
        if stored.reached_expected:  # complete by count: no need to wait for the next poll
            self._kick("completion")

    def _completion_step(self) -> None:
        from dicom_node.logsetup import log_context

        for _, series_uid in self.tracker.check():
            with log_context(series_uid=series_uid):
                log.info("series %s complete", series_uid)
        if self.worker.route_complete_series():
            self._kick("worker")

    def _work_step(self) -> int | None:
        job_id = self.worker.run_next()
        if job_id is not None:  # results may be queued: the lanes need not wait for their poll
            self._kick("dispatch-")
        return job_id

    def _loop(self, name: str, step: Callable[[], object], interval: float) -> None:
        wake = self._wake[name]
        while not self._stop.is_set():
            wake.clear()  # before the step: a kick during it makes the wait below return at once
            try:
                busy = step()
            except Exception:
                log.exception("%s loop: step failed; continuing", name)
                busy = None
            if not busy:  # a step that did work runs again at once
                wake.wait(interval)

    def stop(self) -> None:
        self._stop.set()
        for event in self._wake.values():
            event.set()
        if self.web is not None:
            self.web.stop()
        self.scp.stop()
        for t in self._threads:
            t.join(timeout=30)
        if self.analyzer is not None:
            self.analyzer.stop()
        self.store.close()
        self.catalog.close()


def setup_logging(level: str, fmt: str = "text", allow_phi: bool = False) -> None:
    """Text or JSON lines on stderr, PHI redacted unless allowed (dicom_node.logsetup)."""
    from dicom_node.logsetup import setup_logging as _setup

    _setup(level, fmt, allow_phi)


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config (default: $DICOM_NODE_CONFIG or config/default.yaml)")


def _load(args: argparse.Namespace) -> Config | None:
    try:
        return load_config(args.config)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return None


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    _config_arg(p)


def run_serve(args: argparse.Namespace) -> int:
    config = _load(args)
    if config is None:
        return 2
    setup_logging(config.logging.level, config.logging.format, config.logging.allow_phi)
    node = Node(config)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    node.start()
    if node.web is not None:
        print(f"WEB http://{config.web.host}:{node.web.port}/", file=sys.stderr, flush=True)
    print(f"READY {config.node.ae_title} {config.node.host}:{node.port}", flush=True)
    while not stop.wait(1.0):
        pass
    log.info("stopping")
    node.stop()
    return 0


def add_status_arguments(p: argparse.ArgumentParser) -> None:
    _config_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--limit", type=int, default=20, help="most recent series and jobs to list")


def run_status(args: argparse.Namespace) -> int:
    config = _load(args)
    if config is None:
        return 2
    if not config.catalog_path.exists():
        print(f"no catalog yet at {config.catalog_path} (the node has not run with this config)")
        return 0
    cat = Catalog(config.catalog_path)
    series = [dict(r) for r in cat.query(
        "SELECT series_uid, description, calling_ae, state, generation, received_count, expected_count, "
        "routing_rule FROM series ORDER BY last_received DESC LIMIT ?", (args.limit,))]
    jobs = [dict(r) for r in cat.query(
        "SELECT j.id, s.series_uid, j.state, j.attempts, j.reason, j.created_at, j.finished_at, j.measurements "
        "FROM jobs j JOIN series s ON s.id = j.series_id ORDER BY j.id DESC LIMIT ?", (args.limit,))]
    counts = {r[0]: r[1] for r in cat.query("SELECT state, COUNT(*) FROM jobs GROUP BY state")}
    if args.json:
        print(json.dumps({"series": series, "jobs": jobs, "job_counts": counts}, indent=2, default=str))
        return 0
    print(f"catalog {config.catalog_path}")
    print("jobs by state: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"))
    print("\nSERIES (newest first)")
    for s in series:
        exp = s["expected_count"] if s["expected_count"] is not None else "?"
        print(f"  {s['state']:<9} {s['received_count']:>4}/{exp:<4} gen {s['generation']} "
              f"{(s['description'] or '')[:28]:<28} rule={s['routing_rule'] or '-'} from {s['calling_ae']} "
              f"{s['series_uid']}")
    print("\nJOBS (newest first)")
    for j in jobs:
        summary = ""
        if j["measurements"]:
            m = json.loads(j["measurements"])
            summary = (f"lesions={len(m.get('lesions', []))} vol={m.get('total_volume_mm3', 0):.1f}mm3 "
                       f"CSA={m.get('cord_csa_mm2_mean') or float('nan'):.1f}mm2")
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j["created_at"]))
        print(f"  #{j['id']:<4} {j['state']:<11} tries {j['attempts']} {when} {summary}"
              + (f"\n        reason: {j['reason']}" if j["reason"] else ""))
    return 0


def add_retry_arguments(p: argparse.ArgumentParser) -> None:
    _config_arg(p)
    p.add_argument("job", type=int, help="job id (see dicom-node status)")


def run_retry(args: argparse.Namespace) -> int:
    from dicom_node.jobs import retry_job

    config = _load(args)
    if config is None:
        return 2
    try:
        print(f"job {args.job}: {retry_job(Catalog(config.catalog_path), args.job)}")
    except ValueError as exc:
        print(f"retry: {exc}", file=sys.stderr)
        return 1
    return 0
