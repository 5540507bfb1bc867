"""Seconds from the last C-STORE of a series to both results stored in Orthanc, split by stage.

Runs the real thing: Orthanc on loopback, `dicom-node serve` in a child process, dcmtk storescu
sending a bundled sample series. Stages come from the node's catalog (series.last_received,
completed_at, job timings, dispatch sent_at) and the total from polling Orthanc.

    .venv/bin/python bench/e2e.py [--sample lesion|sagittal] [--idle 5] [--repeat N] [--nnunet]

--repeat N runs the whole thing N times (a fresh Orthanc and node each time, so every run pays
the node's start and first case), prints each run's stages and then the median of each stage
and of the total. --nnunet adds a reference line: the same volume through nnunetv2's own
nnUNetPredictor (bench/nnunet.py's SCIseg-sized random-weight PlainConvUNet folder at 1 mm, no
test-time mirroring, in a process of its own with the node's torch thread count), and the
ratios nnU-Net / our inference stage and nnU-Net / our total (medians).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from testbed.demo import SAMPLE_DIR, SAMPLES, wait_for_results  # noqa: E402
from testbed.node_process import node_config, start_node  # noqa: E402
from testbed.orthanc import LocalOrthanc  # noqa: E402

STAGES = (  # key, label
    ("completion", "completion wait (last C-STORE -> complete)"),
    ("queue", "queue + routing (complete -> job start)"),
    ("load", "load volume"),
    ("inference", "inference (model + metrics)"),
    ("encode", "encoding + validation (SEG, SR, dciodvfy)"),
    ("dispatch", "dispatch (results ready -> last sent)"),
    ("total", "TOTAL last C-STORE -> both in Orthanc (polled)"),
    ("peak_rss_gb", "node peak resident memory (VmHWM, GB)"),
)


def peak_rss_gb(pid: int) -> float:
    """The process's peak resident set (Linux VmHWM), in GB; NaN where /proc does not say."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return float("nan")


def run_once(sample: str, device: str, run: int) -> dict[str, float]:
    """One end-to-end run in a scratch folder of its own; the seconds of each stage."""
    from pydicom import dcmread

    from testbed.series import write_series

    work = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    nifti, desc, patient, pid = SAMPLES[sample]
    try:
        files = write_series(SAMPLE_DIR / nifti, work / "series", series_description=desc, patient_name=patient,
                             patient_id=pid, uid_seed=f"bench-e2e-{run}")
        study = dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
        with LocalOrthanc(work / "orthanc") as pacs:
            config = node_config(work, pacs, device)
            node, port = start_node(config, work / "node.log")
            try:
                t0 = time.time()
                subprocess.run(["storescu", "-aec", "SPINE_NODE", "+sd", "127.0.0.1", str(port), str(work / "series")],
                               check=True, capture_output=True, timeout=600)
                wait_for_results(pacs, {study}, timeout=1800)
                t_arrived = time.time()
                peak = peak_rss_gb(node.pid)  # the node's whole life: start, model, this one case
            finally:
                node.terminate()
                node.wait(timeout=60)
        con = sqlite3.connect(work / "node" / "catalog.sqlite")
        last, completed = con.execute("SELECT last_received, completed_at FROM series").fetchone()
        started, timings = con.execute("SELECT started_at, timings FROM jobs ORDER BY id LIMIT 1").fetchone()
        sent = con.execute("SELECT MAX(sent_at) FROM dispatches").fetchone()[0]
        con.close()
        t = json.loads(timings)
        ready = started + t["load_s"] + t["inference_s"] + t["encode_s"]
        print(f"run {run}: series {sample} ({len(files)} instances), send took {last - t0:.1f} s")
        return {"completion": completed - last, "queue": started - completed, "load": t["load_s"],
                "inference": t["inference_s"], "encode": t["encode_s"], "dispatch": sent - ready,
                "total": t_arrived - last, "peak_rss_gb": peak}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def print_stages(stages: dict[str, float], heading: str) -> None:
    print(heading)
    for key, label in STAGES:
        print(f"{label:<47}{stages[key]:7.2f}" + ("" if key == "peak_rss_gb" else " s"))


def node_threads() -> int:
    """The torch threads the node's worker uses: worker.torch_threads, 0 = torch's default."""
    import yaml

    from dicom_node.config import DEFAULT_CONFIG

    n = int(yaml.safe_load(DEFAULT_CONFIG.read_text())["worker"].get("torch_threads", 0) or 0)
    if n:
        return n
    import torch

    return torch.get_num_threads()


def nnunet_reference(sample: str) -> tuple[float, float, int]:
    """(first case incl. load, steady case) seconds of nnUNetPredictor on the sample volume, and threads."""
    from bench.nnunet import make_bench_folder, run_side  # bench/nnunet.py: its folder and worker process

    threads = node_threads()
    with tempfile.TemporaryDirectory(prefix="bench-e2e-nnunet-") as tmp:
        folder = make_bench_folder(Path(tmp), "sciseg", 1.0, 1, False)
        args = argparse.Namespace(image=SAMPLE_DIR / SAMPLES[sample][0], threads=threads, folds=1, cases=1,
                                  tile_batch=0, crop=None, mirror=False, compile=False, env=[])
        res = run_side("nnunet", folder, Path(tmp) / "nnunet.npz", args)
    return res["first_s"], res["steady_s"], threads


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sample", choices=list(SAMPLES), default="sagittal")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeat", type=int, default=1, help="end-to-end runs (each prints its stages; then medians)")
    ap.add_argument("--nnunet", action="store_true",
                    help="reference: the same volume through nnU-Net's predictor (SCIseg-sized, random weights)")
    args = ap.parse_args()
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    runs = []
    for run in range(1, args.repeat + 1):
        stages = run_once(args.sample, args.device, run)
        print_stages(stages, f"--- run {run} of {args.repeat}")
        runs.append(stages)
    median = {key: statistics.median(r[key] for r in runs) for key, _ in STAGES}
    if args.repeat > 1:
        print_stages(median, f"--- median of {args.repeat} runs")
    if args.nnunet:
        first, steady, threads = nnunet_reference(args.sample)
        print(f"nnU-Net predictor, same volume (SCIseg-sized random-weight net, 1 mm, no mirroring, "
              f"{threads} threads): {first:.2f} s with model load, {steady:.2f} s the case alone")
        print(f"ratio nnU-Net case / our inference stage {steady / median['inference']:.1f}x, "
              f"nnU-Net with load / our TOTAL {first / median['total']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
