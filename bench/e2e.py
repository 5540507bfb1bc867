"""Seconds from the last C-STORE of a series to both results stored in Orthanc, split by stage.

Runs the real thing: Orthanc on loopback, `dicom-node serve` in a child process, dcmtk storescu
sending a bundled sample series. Stages come from the node's catalog (series.last_received,
completed_at, job timings, dispatch sent_at) and the total from polling Orthanc.

    .venv/bin/python bench/e2e.py [--sample lesion|sagittal] [--idle 5]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from testbed.demo import SAMPLE_DIR, SAMPLES, wait_for_results  # noqa: E402
from testbed.node_process import node_config, start_node  # noqa: E402
from testbed.orthanc import LocalOrthanc  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sample", choices=list(SAMPLES), default="sagittal")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    from pydicom import dcmread

    from testbed.series import write_series

    work = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    nifti, desc, patient, pid = SAMPLES[args.sample]
    files = write_series(SAMPLE_DIR / nifti, work / "series", series_description=desc, patient_name=patient,
                         patient_id=pid, uid_seed="bench-e2e")
    study = dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
    try:
        with LocalOrthanc(work / "orthanc") as pacs:
            config = node_config(work, pacs, args.device)
            node, port = start_node(config, work / "node.log")
            try:
                t0 = time.time()
                subprocess.run(["storescu", "-aec", "SPINE_NODE", "+sd", "127.0.0.1", str(port), str(work / "series")],
                               check=True, capture_output=True, timeout=600)
                wait_for_results(pacs, {study}, timeout=1800)
                t_arrived = time.time()
            finally:
                node.terminate()
                node.wait(timeout=60)
        con = sqlite3.connect(work / "node" / "catalog.sqlite")
        last, completed = con.execute("SELECT last_received, completed_at FROM series").fetchone()
        started, timings = con.execute("SELECT started_at, timings FROM jobs ORDER BY id LIMIT 1").fetchone()
        sent = con.execute("SELECT MAX(sent_at) FROM dispatches").fetchone()[0]
        t = json.loads(timings)
        ready = started + t["load_s"] + t["inference_s"] + t["encode_s"]
        print(f"series: {args.sample} ({len(files)} instances), send took {last - t0:.1f} s")
        print(f"completion wait (last C-STORE -> complete)   {completed - last:7.2f} s")
        print(f"queue + routing (complete -> job start)        {started - completed:7.2f} s")
        print(f"load volume                                    {t['load_s']:7.2f} s")
        print(f"inference (model + metrics)                    {t['inference_s']:7.2f} s")
        print(f"encoding + validation (SEG, SR, dciodvfy)      {t['encode_s']:7.2f} s")
        print(f"dispatch (results ready -> last sent)          {sent - ready:7.2f} s")
        print(f"TOTAL last C-STORE -> both in Orthanc (polled) {t_arrived - last:7.2f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
