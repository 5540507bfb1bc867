"""From a complete series to results waiting for dispatch.

Steps, each recorded in the catalog so a restart resumes where it stopped:
  complete series --route--> job (queued) --run--> volume -> analysis -> SEG + SR files
  (validated) --> dispatches (pending), job 'dispatching'.
The model is loaded once per process by the inference registry and stays loaded between jobs.
"""
from __future__ import annotations

import json
import logging
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from pydicom import dcmread
from pydicom.uid import generate_uid

from dicom_node.catalog import Catalog, dumps, now
from dicom_node.config import Config
from dicom_node.logsetup import log_context
from dicom_node.routing import parse_rules, route

log = logging.getLogger(__name__)

# An analyzer turns (volume, model spec, device, minimum lesion volume in mm³) into an inference
# Analysis; in-process by default.
Analyzer = Callable[[Any, str, str, float], Any]


def analyze_in_process(volume: Any, model: str, device: str, min_lesion_volume_mm3: float = 0.0) -> Any:
    from inference.pipeline import analyze

    return analyze(volume, model=model, device=device, min_lesion_volume_mm3=min_lesion_volume_mm3)


def in_process_analyzer(torch_threads: int) -> Analyzer:
    """The in-process analyzer, with torch's CPU thread count set once (worker.torch_threads)."""
    from inference.pipeline import set_cpu_threads

    set_cpu_threads(torch_threads)
    return analyze_in_process


THUMB_NAME = "thumb.png"  # overlay picture for the status page, beside seg.dcm
THUMB_SIZE = (480, 320)


def write_thumbnail(volume: Any, analysis: Any, path: Path) -> None:
    """A small cord/lesion overlay PNG for the status page. Never fails the job: it is not a result."""
    try:
        from PIL import Image

        from dicom_node.results.secondary_capture import render_seg_png

        tmp = path.with_name(f".partial-{path.name}")  # .png: PIL picks the format by extension
        render_seg_png(volume, (analysis.cord_mask, analysis.lesion_mask), tmp)
        with Image.open(tmp) as img:
            img.thumbnail(THUMB_SIZE)
            img.save(tmp, format="PNG")
        tmp.replace(path)
    except Exception as exc:
        log.warning("overlay thumbnail %s not written: %s", path, exc)


DEFAULT_VARIANT = "binary"
VARIANTS = ("binary", "binary-sparse", "fractional", "fractional-sparse")
SC_IMAGES = 3  # key slices burned into Secondary Captures, for PACS that cannot show SEG


def seg_variant(dest: Any) -> str:
    """Which SEG a destination gets: binary or fractional, all frames or only non-empty ones."""
    kind = "fractional" if dest.seg_fractional else "binary"
    return f"{kind}-sparse" if dest.seg_omit_empty_frames else kind


PAIR_KEYS = ("seg_series", "seg_sop", "sr_series", "sr_sop")


def _uid_prefix(variant: str) -> str:
    """The default pair keeps flat keys (seg_sop, ...); other variants prefix them ("fractional.seg_sop")."""
    return "" if variant == DEFAULT_VARIANT else f"{variant}."


def variant_uids(uids: dict[str, Any], variant: str) -> dict[str, str]:
    return {k: uids[_uid_prefix(variant) + k] for k in PAIR_KEYS}


class JobError(Exception):
    """A job cannot succeed on this input (bad series, no cord...): fail it, do not retry."""


class Worker:
    def __init__(self, config: Config, catalog: Catalog, analyzer: Analyzer | None = None) -> None:
        self.config = config
        self.catalog = catalog
        self.analyzer = analyzer or in_process_analyzer(config.worker.torch_threads)
        self.rules = parse_rules(config.routing)

    # ---- recovery -------------------------------------------------------------------------
    def recover(self) -> int:
        """On start: a job left 'running' by a crash goes back to the queue. Returns how many."""
        t = now()
        with self.catalog.transaction() as con:
            cur = con.execute("UPDATE jobs SET state='queued', updated_at=?, reason='resumed after restart' "
                              "WHERE state='running'", (t,))
            return cur.rowcount

    # ---- routing --------------------------------------------------------------------------
    def route_complete_series(self) -> list[int]:
        """Route every series in state 'complete'; returns ids of jobs created."""
        created: list[int] = []
        for row in self.catalog.query("SELECT series_uid FROM series WHERE state='complete'"):
            job = self.route_series(row["series_uid"])
            if job is not None:
                created.append(job)
        return created

    def route_series(self, series_uid: str) -> int | None:
        first = self.catalog.query(
            "SELECT path, calling_ae FROM instances WHERE series_uid=? ORDER BY received_at LIMIT 1", (series_uid,))
        if not first:
            return None
        ds = dcmread(self.config.data_dir / first[0]["path"], stop_before_pixels=True)
        decision = route(self.rules, ds, first[0]["calling_ae"])
        reason = "\n".join(decision.explanation)
        t = now()
        with self.catalog.transaction() as con:
            series = con.execute("SELECT state, generation FROM series WHERE series_uid=?", (series_uid,)).fetchone()
            if series is None or series[0] != "complete":
                return None  # re-opened by a late instance meanwhile
            generation = series[1]
            rule = decision.rule
            if rule is None or rule.pipeline is None:
                con.execute("UPDATE series SET state='ignored', routing_rule=?, routing_reason=? WHERE series_uid=?",
                            (rule.name if rule else None, reason, series_uid))
                log.info("series %s: no pipeline (%s)", series_uid, rule.name if rule else "no rule matched")
                return None
            con.execute("UPDATE series SET state='routed', routing_rule=?, routing_reason=? WHERE series_uid=?",
                        (rule.name, reason, series_uid))
            # earlier generations that have not produced results yet are pointless now
            con.execute("UPDATE jobs SET state='superseded', updated_at=? WHERE series_uid=? AND generation < ? "
                        "AND state IN ('queued', 'running')", (t, series_uid, generation))
            supersedes = None
            done = con.execute("SELECT id FROM jobs WHERE series_uid=? AND state IN ('done', 'dispatching', "
                               "'retrying', 'failed') AND result_uids IS NOT NULL ORDER BY id DESC LIMIT 1",
                               (series_uid,)).fetchone()
            if done is not None:
                supersedes = done[0]
            cur = con.execute(
                "INSERT INTO jobs (series_uid, generation, pipeline, rule, destinations, state, created_at, "
                "updated_at, supersedes_job) VALUES (?,?,?,?,?,?,?,?,?)",
                (series_uid, generation, rule.pipeline, rule.name, json.dumps(rule.destinations), "queued", t, t,
                 supersedes),
            )
            job_id = int(cur.lastrowid)
        log.info("series %s: rule %s -> pipeline %s, job %d%s", series_uid, rule.name, rule.pipeline, job_id,
                 f" (supersedes job {supersedes})" if supersedes else "")
        return job_id

    # ---- running jobs ---------------------------------------------------------------------
    def claim_next(self) -> int | None:
        """Atomically move the oldest queued job to 'running'."""
        t = now()
        with self.catalog.transaction() as con:
            row = con.execute("SELECT id FROM jobs WHERE state='queued' ORDER BY id LIMIT 1").fetchone()
            if row is None:
                return None
            con.execute("UPDATE jobs SET state='running', attempts=attempts+1, started_at=?, updated_at=? "
                        "WHERE id=?", (t, t, row[0]))
            return int(row[0])

    def run_next(self) -> int | None:
        job_id = self.claim_next()
        if job_id is not None:
            self.run_job(job_id)
        return job_id

    def run_job(self, job_id: int) -> None:
        job = self.catalog.query("SELECT * FROM jobs WHERE id=?", (job_id,))[0]
        with log_context(job_id=job_id, series_uid=job["series_uid"]):
            self._run_logged(job)

    def _run_logged(self, job: Any) -> None:
        job_id = job["id"]
        try:
            self._run(job)
        except JobError as exc:
            self._fail(job_id, str(exc), retry=False)
        except Exception as exc:  # anything else may be transient (memory, disk): retry up to max_attempts
            log.error("job %d crashed: %s\n%s", job_id, exc, traceback.format_exc())
            self._fail(job_id, f"{type(exc).__name__}: {exc}", retry=True)

    def _fail(self, job_id: int, reason: str, retry: bool) -> None:
        t = now()
        with self.catalog.transaction() as con:
            attempts = con.execute("SELECT attempts FROM jobs WHERE id=?", (job_id,)).fetchone()[0]
            if retry and attempts < self.config.worker.max_attempts:
                con.execute("UPDATE jobs SET state='queued', reason=?, updated_at=? WHERE id=?",
                            (f"attempt {attempts} failed: {reason}", t, job_id))
                log.warning("job %d: attempt %d failed, queued again: %s", job_id, attempts, reason)
                return
            con.execute("UPDATE jobs SET state='failed', reason=?, finished_at=?, updated_at=? WHERE id=?",
                        (reason, t, t, job_id))
        log.error("job %d failed: %s", job_id, reason)

    def _run(self, job: Any) -> None:
        from inference.volume import VolumeError, volume_from_datasets

        from dicom_node.results.readback import ResultValidationError
        from dicom_node.results.secondary_capture import build_secondary_captures
        from dicom_node.results.seg import build_seg
        from dicom_node.results.sr import build_sr
        from dicom_node.results.validate import check_result, write_result

        job_id, series_uid = job["id"], job["series_uid"]
        timings: dict[str, float] = {}
        series = self.catalog.query("SELECT generation, last_received, completed_at FROM series WHERE series_uid=?",
                                    (series_uid,))[0]
        if series["generation"] > job["generation"]:
            self._set(job_id, state="superseded")
            return
        t0 = time.monotonic()
        paths = [self.config.data_dir / r["path"] for r in self.catalog.query(
            "SELECT path FROM instances WHERE series_uid=?", (series_uid,))]
        datasets = [dcmread(p) for p in paths]
        try:
            volume = volume_from_datasets(datasets)
        except VolumeError as exc:
            raise JobError(f"series cannot be made into a volume: {exc}") from None
        timings["load_s"] = time.monotonic() - t0

        pipeline = self.config.pipelines[job["pipeline"]]
        model_spec = self.config.model_path(pipeline.model)
        t1 = time.monotonic()
        analysis = self.analyzer(volume, model_spec, self.config.worker.device, pipeline.min_lesion_volume_mm3)
        timings["inference_s"] = time.monotonic() - t1
        timings.update({f"inference.{k}": v for k, v in getattr(analysis, "timings", {}).items()})

        t2 = time.monotonic()
        by_uid = {ds.SOPInstanceUID: ds for ds in datasets}
        source = [by_uid[f.sop_instance_uid] for f in dict.fromkeys(volume.frames)]
        dest_keys = json.loads(job["destinations"])
        out_dir = self.config.data_dir / "results" / f"job-{job_id}"
        out_dir.mkdir(parents=True, exist_ok=True)
        uids = self._result_uids(job)
        previous_uids = self._previous_uids(job)

        def gated(ds: Any, path: Path) -> Path:
            write_result(ds, path)
            try:
                check_result(path)  # dciodvfy without errors, then highdicom read-back
            except ResultValidationError as exc:
                raise JobError(str(exc)) from None
            return path

        # one SEG + SR pair per SEG variant the destinations ask for; the SR references its own SEG
        pairs: dict[str, list[tuple[str, Path, str]]] = {}
        for key in dest_keys:
            variant = seg_variant(self.config.destinations[key])
            if variant in pairs:
                continue
            ids = variant_uids(uids, variant)
            suffix = "" if variant == DEFAULT_VARIANT else f"-{variant}"
            seg = build_seg(source, volume.frames, analysis, series_uid=ids["seg_series"],
                            sop_instance_uid=ids["seg_sop"], omit_empty_frames="sparse" in variant,
                            fractional="fractional" in variant)
            previous = None  # the superseded SR of the same variant, for the predecessor reference
            if previous_uids is not None:
                old = variant_uids(previous_uids, variant)
                previous = {"series_uid": old["sr_series"], "sop_instance_uid": old["sr_sop"]}
            sr = build_sr(source, analysis, seg, series_uid=ids["sr_series"], sop_instance_uid=ids["sr_sop"],
                          previous_sr=previous)
            pairs[variant] = [("seg", gated(seg, out_dir / f"seg{suffix}.dcm"), ids["seg_sop"]),
                              ("sr", gated(sr, out_dir / f"sr{suffix}.dcm"), ids["sr_sop"])]
        captures: list[tuple[str, Path, str]] = []
        if any(self.config.destinations[k].secondary_capture for k in dest_keys):
            sc = build_secondary_captures(source, volume.frames, analysis, series_uid=uids["sc_series"],
                                          sop_instance_uids=uids["sc_sops"])
            captures = [(f"sc{n}", gated(ds, out_dir / f"sc-{n}.dcm"), str(ds.SOPInstanceUID))
                        for n, ds in enumerate(sc, 1)]
        timings["encode_s"] = time.monotonic() - t2
        write_thumbnail(volume, analysis, out_dir / THUMB_NAME)
        timings["completion_wait_s"] = max(0.0, (series["completed_at"] or 0) - (series["last_received"] or 0))

        t = now()
        with self.catalog.transaction() as con:
            state = con.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()[0]
            if state != "running":
                return  # superseded meanwhile
            for dest_key in dest_keys:
                dest = self.config.destinations[dest_key]
                wanted = {"seg": dest.send_seg, "sr": dest.send_sr}
                items = [i for i in pairs[seg_variant(dest)] if wanted[i[0]]]
                items += captures if dest.secondary_capture else []
                for kind, path, uid in items:
                    con.execute(
                        "INSERT OR REPLACE INTO dispatches (job_id, destination, kind, sop_instance_uid, path, state, "
                        "attempts, next_attempt_at) VALUES (?,?,?,?,?,'pending',0,?)",
                        (job_id, dest_key, kind, uid, str(path.relative_to(self.config.data_dir)), t))
            has_dispatch = con.execute("SELECT COUNT(*) FROM dispatches WHERE job_id=?", (job_id,)).fetchone()[0]
            con.execute("UPDATE jobs SET state=?, reason=NULL, measurements=?, timings=?, updated_at=?, "
                        "finished_at=? WHERE id=?",
                        ("dispatching" if has_dispatch else "done", dumps(analysis.measurements), dumps(timings), t,
                         None if has_dispatch else t, job_id))
        log.info("job %d: results ready (%d lesion(s)), %.1f s inference", job_id,
                 len(analysis.measurements.get("lesions", [])), timings["inference_s"])

    def _result_uids(self, job: Any) -> dict[str, Any]:
        """UIDs of every result this job can produce, made once and kept: a re-run or re-send reuses them.

        Flat keys seg_series/seg_sop/sr_series/sr_sop are the default (binary, all frames) pair;
        other SEG variants use keys prefixed "VARIANT." ; Secondary Captures sc_series/sc_sops.
        """
        if job["result_uids"]:
            return json.loads(job["result_uids"])
        uids: dict[str, Any] = {_uid_prefix(v) + k: generate_uid() for v in VARIANTS for k in PAIR_KEYS}
        uids["sc_series"] = generate_uid()
        uids["sc_sops"] = [generate_uid() for _ in range(SC_IMAGES)]
        self._set(job["id"], result_uids=json.dumps(uids))
        return uids

    def _previous_uids(self, job: Any) -> dict[str, Any] | None:
        """Result UIDs of the job this one supersedes (same series, earlier generation), if any."""
        if not job["supersedes_job"]:
            return None
        row = self.catalog.query("SELECT result_uids FROM jobs WHERE id=?", (job["supersedes_job"],))
        if not row or not row[0]["result_uids"]:
            return None
        return json.loads(row[0]["result_uids"])

    def _set(self, job_id: int, **values: Any) -> None:
        cols = ", ".join(f"{k}=?" for k in values)
        with self.catalog.transaction() as con:
            con.execute(f"UPDATE jobs SET {cols}, updated_at=? WHERE id=?", (*values.values(), now(), job_id))
