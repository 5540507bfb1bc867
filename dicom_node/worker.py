"""From a queued job to results waiting for dispatch: claim -> load -> analyze -> build -> enqueue.

Each step is recorded in the catalog (dicom_node.jobs), so a restart resumes where it stopped.
Routing (complete series -> job) is dicom_node.router's; building and validating the SEG/SR is
dicom_node.results.build's. The model is loaded once per process by inference and stays loaded.
"""
from __future__ import annotations

import logging
import time
import traceback
from typing import Callable, Sequence

from pydicom import Dataset, dcmread

from dicom_node.catalog import Catalog
from dicom_node.config import Config
from dicom_node.jobs import Job, Jobs
from dicom_node.logsetup import log_context
from dicom_node.results import THUMB_NAME
from dicom_node.results.build import (
    ResultRejected,
    build_results,
    complete_result_uids,
    new_result_uids,
    write_thumbnail,
)
from dicom_node.router import Router
from dicom_node.store import uid_problem
from inference.api import Analysis, AnalysisRequest, Volume, VolumeError, analyze, set_cpu_threads, volume_from_datasets

log = logging.getLogger(__name__)

# An analyzer runs one request on a volume: in this process by default, or on Ray actors
# (dicom_node.ray_executor) with the same signature.
Analyzer = Callable[[Volume, AnalysisRequest], Analysis]


def in_process_analyzer(torch_threads: int) -> Analyzer:
    """inference's analyze in this process, with torch's CPU thread count set once (worker.torch_threads)."""
    set_cpu_threads(torch_threads)
    return analyze


class JobError(Exception):
    """A job cannot succeed on this input (bad series, no cord...): fail it, do not retry."""


def check_frame_of_reference(datasets: Sequence[Dataset]) -> None:
    """JobError, before any inference, when the source's Frame of Reference UID is not a UID.

    Why fail: a SEG must carry its source's frame of reference to overlay it in a viewer, so it
    cannot take a new one of ours, and copied as is it fails the dciodvfy gate."""
    value = str(datasets[0].get("FrameOfReferenceUID", "") or "").strip() if datasets else ""
    problem = uid_problem(value) if value else ""
    if problem:
        shown = value[:40] + ("..." if len(value) > 40 else "")
        raise JobError(f"FrameOfReferenceUID {shown!r} {problem}: the SEG must share it to overlay the images, "
                       "and results carrying it would fail validation; fix it at the modality or anonymiser")


class Worker:
    def __init__(self, config: Config, catalog: Catalog, analyzer: Analyzer | None = None) -> None:
        self.config = config
        self.catalog = catalog
        self.jobs = Jobs(catalog)
        self.analyzer = analyzer or in_process_analyzer(config.worker.torch_threads)
        self.router = Router(catalog, config.routing_rules(), config.data_dir)

    def recover(self) -> int:
        """On start: a job left running by a crash goes back to the queue. Returns how many."""
        return self.jobs.recover()

    def route_complete_series(self) -> list[int]:
        """Route every complete series; returns ids of jobs created (dicom_node.router)."""
        return self.router.route_complete_series()

    def run_next(self) -> int | None:
        job_id = self.jobs.claim_next()
        if job_id is not None:
            self.run_job(job_id)
        return job_id

    def run_job(self, job_id: int) -> None:
        job = self.jobs.get(job_id)
        with log_context(job_id=job_id, series_uid=job.series_uid):
            try:
                self._run(job)
            except (JobError, ResultRejected) as exc:
                self._fail(job_id, str(exc), retry=False)
            except Exception as exc:  # anything else may be transient (memory, disk): retry up to max_attempts
                log.error("job %d crashed: %s\n%s", job_id, exc, traceback.format_exc())
                self._fail(job_id, f"{type(exc).__name__}: {exc}", retry=True)

    def _fail(self, job_id: int, reason: str, retry: bool) -> None:
        if self.jobs.fail(job_id, reason, retry, self.config.worker.max_attempts):
            log.warning("job %d: attempt failed, queued again: %s", job_id, reason)
        else:
            log.error("job %d failed: %s", job_id, reason)

    def _run(self, job: Job) -> None:
        series = self.catalog.series_row(job.series_id)
        if series is None or series["generation"] > job.generation:
            self.jobs.supersede(job.id)
            return
        timings: dict[str, float] = {}
        t0 = time.monotonic()
        datasets = [dcmread(self.config.data_dir / p) for p in self.catalog.instance_paths(job.series_id)]
        check_frame_of_reference(datasets)
        try:
            volume = volume_from_datasets(datasets)
        except VolumeError as exc:
            raise JobError(f"series cannot be made into a volume: {exc}") from None
        timings["load_s"] = time.monotonic() - t0

        t1 = time.monotonic()
        analysis = self.analyzer(volume, self.config.analysis_request(job.pipeline))
        timings["inference_s"] = time.monotonic() - t1
        timings.update({f"inference.{k}": v for k, v in analysis.timings.items()})

        t2 = time.monotonic()
        by_uid = {ds.SOPInstanceUID: ds for ds in datasets}
        source = [by_uid[f.sop_instance_uid] for f in dict.fromkeys(volume.frames)]
        uids = new_result_uids() if job.result_uids is None else complete_result_uids(job.result_uids)
        if uids != job.result_uids:  # new, or kept by an older release that lacked a SEG variant
            self.jobs.keep_result_uids(job.id, uids)
        deliveries = build_results(
            source, volume, analysis, {key: self.config.destinations[key] for key in job.destinations},
            out_dir=self.config.data_dir / "results" / f"job-{job.id}", data_dir=self.config.data_dir,
            uids=uids, previous_uids=self.jobs.result_uids(job.supersedes_job))
        timings["encode_s"] = time.monotonic() - t2
        timings["completion_wait_s"] = max(0.0, (series["completed_at"] or 0) - (series["last_received"] or 0))

        if self.jobs.finish(job.id, deliveries, analysis.measurements, timings):
            log.info("job %d: results ready (%d lesion(s)), %.1f s inference", job.id,
                     analysis.metrics.lesion_count, timings["inference_s"])
            # the status page's picture, once the results are queued: dispatch need not wait for it
            write_thumbnail(volume, analysis, self.config.data_dir / "results" / f"job-{job.id}" / THUMB_NAME)
