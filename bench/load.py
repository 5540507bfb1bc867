"""Load: P concurrent storescu associations (the configured limit) into a running node while a job runs.

Real-size MR images (the real Siemens sagittal series, 256 x 256 16-bit, ~265 KB each, new
UIDs and fresh noise per instance) spread over several studies, one series per association,
sent by stock dcmtk `storescu` processes at once into `dicom-node serve` (fsync on), started
right after a spine series' job began running (tiny test model, so the worker competes for
the CPU). Reports: instances acknowledged (0x0000 in storescu's log) vs in the catalog vs
files on disk (lost = acknowledged but missing: must be 0), associations refused (must be 0:
P is the limit), instances/s, and the node process's peak RSS (VmHWM: listener + worker).

    .venv/bin/python bench/load.py [--associations 16] [--per-association 188] [--studies 6]

The CI test tests/integration/test_load.py runs the same code at 16 x 10.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SOURCE = REPO.parent / "shared" / "data" / "dicom" / "dcm_qa_decubitus_HFS_t1_sag"
SPINE = REPO / "dicom_node" / "sample" / "t2_fake_lesion.nii.gz"
AET = "SPINE_NODE"


@dataclass
class LoadResult:
    associations: int
    sent: int
    acknowledged: int
    refused_associations: int
    failed_responses: int
    in_catalog: int
    on_disk: int
    seconds: float
    peak_rss_mb: float
    rss_before_mb: float
    job_state_at_start: str
    job_state_at_end: str
    errors: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return max(0, self.acknowledged - min(self.in_catalog, self.on_disk))

    def summary(self) -> str:
        return (f"{self.associations} associations, {self.sent} instances sent in {self.seconds:.1f} s "
                f"({self.sent / self.seconds:.1f} img/s): acknowledged {self.acknowledged}, in catalog "
                f"{self.in_catalog}, on disk {self.on_disk}, lost {self.lost}, associations refused "
                f"{self.refused_associations}, failed responses {self.failed_responses}; node RSS "
                f"{self.rss_before_mb:.0f} MB before, peak {self.peak_rss_mb:.0f} MB; job "
                f"{self.job_state_at_start} at start, {self.job_state_at_end} at end")


def make_instances(out: Path, associations: int, per_association: int, studies: int) -> list[list[Path]]:
    """One folder (one series) per association; series spread over `studies` studies."""
    sources = sorted(SOURCE.glob("*.dcm"))
    if not sources:
        raise FileNotFoundError(f"no DICOM files in {SOURCE} (the shared real data is needed)")
    templates = [pydicom.dcmread(s) for s in sources]
    rng = np.random.default_rng(1)
    study_uids = [pydicom.uid.generate_uid() for _ in range(studies)]
    folders = []
    for a in range(associations):
        series_uid = pydicom.uid.generate_uid()
        folder = out / f"assoc{a:02d}"
        folder.mkdir(parents=True)
        paths = []
        for i in range(per_association):
            ds = templates[i % len(templates)].copy()
            ds.file_meta = templates[i % len(templates)].file_meta.copy()
            pixels = templates[i % len(templates)].pixel_array.astype(np.uint16)
            ds.PixelData = (pixels + rng.integers(0, 4, pixels.shape, dtype=np.uint16)).astype(np.uint16).tobytes()
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uids[a % studies], series_uid
            ds.SeriesDescription = f"LOAD {a}"
            ds.ImagesInAcquisition = per_association
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
            ds.InstanceNumber = i + 1
            path = folder / f"img{i:04d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
        folders.append(paths)
    return folders


def _rss_mb(pid: int, field_name: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_load(workdir: Path, associations: int = 16, per_association: int = 10, studies: int = 4,
             timeout_s: float = 900) -> LoadResult:
    """Start the node (limit = `associations`), start a job, then send everything at once."""
    from testbed.node_process import NodeProcess, catalog_query, tiny_node_config, wait_until
    from testbed.orthanc import LocalOrthanc
    from testbed.series import write_series

    workdir.mkdir(parents=True, exist_ok=True)
    folders = make_instances(workdir / "load", associations, per_association, studies)
    spine = write_series(SPINE, workdir / "spine", series_description="T2 SAG SPINE", uid_seed="load-spine")
    absent_pacs = LocalOrthanc(workdir / "no-pacs")  # never started: dispatch retries in the background
    config = tiny_node_config(workdir / "node", absent_pacs, node={"max_associations": associations},
                              dispatch={"max_attempts": 2, "backoff_initial_s": 5.0})
    catalog = workdir / "node" / "node" / "catalog.sqlite"
    logs = workdir / "storescu"
    logs.mkdir()
    with NodeProcess(config, workdir) as node:
        pid = node.proc.pid  # type: ignore[union-attr]
        first = subprocess.run(["storescu", "-aet", "LOAD_MR", "-aec", AET, "127.0.0.1", str(node.port),
                                *map(str, spine)], capture_output=True, text=True, timeout=120)
        if first.returncode != 0:
            raise RuntimeError(f"spine series not sent: {first.stderr}")
        wait_until(lambda: catalog_query(catalog, "SELECT 1 FROM jobs WHERE state='running'"), 120, interval=0.05,
                   what="the spine job running")
        job_start = catalog_query(catalog, "SELECT state FROM jobs")[0][0]
        rss_before = _rss_mb(pid, "VmRSS")
        stop = threading.Event()
        t0 = time.monotonic()
        procs = []
        for a, files in enumerate(folders):
            err = open(logs / f"assoc{a:02d}.log", "w")
            procs.append((subprocess.Popen(["storescu", "-v", "-aet", f"LOAD{a:02d}", "-aec", AET, "127.0.0.1",
                                            str(node.port), *map(str, files)], stdout=subprocess.DEVNULL,
                                           stderr=err), err))
        try:
            deadline = t0 + timeout_s
            for proc, err in procs:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
                err.close()
        finally:
            stop.set()
            for proc, err in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(timeout=10)
                err.close()
        seconds = time.monotonic() - t0
        peak = _rss_mb(pid, "VmHWM")
        job_end = catalog_query(catalog, "SELECT state FROM jobs")[0][0]
        series = {pydicom.dcmread(f[0], stop_before_pixels=True).SeriesInstanceUID for f in folders}
        rows = catalog_query(catalog, "SELECT s.series_uid, i.path FROM instances i "
                                      "JOIN series s ON s.id = i.series_id")
        load_rows = [p for s, p in rows if s in series]
        on_disk = sum(1 for p in load_rows if (catalog.parent / p).is_file())
        node.kill9()  # measured; a graceful stop would wait for the running job (nothing to lose either way)
    text = [p.read_text(errors="replace") for p in sorted(logs.glob("*.log"))]
    acked = sum(t.count("Received Store Response (Success)") for t in text)
    refused = sum(("Association Rejected" in t) or ("Association Request Failed" in t) for t in text)
    failed = sum(t.count("Received Store Response") for t in text) - acked
    errors = [line for t in text for line in t.splitlines() if line.startswith(("E:", "F:"))][:10]
    return LoadResult(associations, associations * per_association, acked, refused, failed, len(load_rows),
                      on_disk, seconds, peak, rss_before, job_start, job_end, errors)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="concurrent-association load on a running node")
    p.add_argument("--associations", type=int, default=16)
    p.add_argument("--per-association", type=int, default=188)  # 16 x 188 = 3008
    p.add_argument("--studies", type=int, default=6)
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="load-", dir=args.workdir) as tmp:
        result = run_load(Path(tmp), args.associations, args.per_association, args.studies)
    print(result.summary())
    for e in result.errors:
        print("  storescu:", e)
    return 0 if result.lost == 0 and result.refused_associations == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
