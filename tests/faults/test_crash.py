"""kill -9 of the running node at the three dangerous moments; nothing acknowledged is lost, nothing
is sent twice.

One series goes through one node process that is killed (SIGKILL, no clean-up) three times:
(a) in the middle of storescu's association: every instance storescu saw acknowledged (0x0000,
    parsed from its verbose log) is on disk, byte-identical, and in the catalog after restart;
    no partial file stays; the modality re-sends and the series completes;
(b) while the job is running (inference): on restart the job is queued again and re-run;
(c) right after the first result reached the PACS: on restart the rest is sent, and Orthanc
    ends with exactly one SEG and one SR for the series, with the job's own SOP Instance UIDs.
"""
from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from pathlib import Path

import pydicom
import pytest

from testbed.node_process import NodeProcess, catalog_query, tiny_node_config, wait_until
from testbed.orthanc import LocalOrthanc
from testbed.series import write_series
from tests.helpers.env import REPO, require_tool

pytestmark = pytest.mark.integration

SAMPLE = REPO / "dicom_node" / "sample" / "t2_fake_lesion.nii.gz"  # 29 sagittal slices, 99 x 99 (cropped)


def send_and_kill_after(storescu: str, port: int, files: list[Path], node: NodeProcess, after: int) -> list[Path]:
    """Run storescu on `files`; kill -9 the node once `after` responses were Success. Returns acknowledged files."""
    cmd = [storescu, "-v", "-aet", "CRASH_MR", "-aec", "SPINE_NODE", "127.0.0.1", str(port), *map(str, files)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    acked: list[Path] = []
    current: Path | None = None
    killed = False
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1.0)
            except queue.Empty:
                continue
            if line is None:
                break
            if "Sending file:" in line:
                current = Path(line.split("Sending file:", 1)[1].strip())
            elif "Received Store Response (Success)" in line:
                assert current is not None
                acked.append(current)
                if len(acked) == after and not killed:
                    node.kill9()  # responses already in the pipe still count: they came before the kill
                    killed = True
        assert killed, f"storescu finished ({len(acked)} acknowledged) before the kill point"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    return acked


def test_kill9_mid_association_during_inference_and_during_dispatch(tmp_path: Path) -> None:
    storescu = require_tool("storescu")
    require_tool("Orthanc")
    require_tool("dciodvfy")
    from tests.helpers.bad_inputs import crop_source

    crop = crop_source(SAMPLE, tmp_path, half_xy=24, half_z=None)  # every slice, smaller planes: faster jobs
    files = write_series(crop, tmp_path / "series", series_description="T2 SAG SPINE", uid_seed="crash")

    with LocalOrthanc(tmp_path / "pacs") as pacs:
        # the series completes by its expected count; a short idle time would complete the partial
        # series during the restart on a slow machine and make a second job (a different scenario)
        config = tiny_node_config(tmp_path / "work", pacs, completion={"idle_seconds": 600.0})
        catalog = tmp_path / "work" / "node" / "catalog.sqlite"
        data_dir = catalog.parent
        with NodeProcess(config, tmp_path) as node:
            # (a) kill in the middle of the association
            acked = send_and_kill_after(storescu, node.port, files, node, after=10)
            assert 10 <= len(acked) < len(files)
            node.start()
            rows = dict(catalog_query(catalog, "SELECT sop_instance_uid, path FROM instances"))
            for f in acked:
                src = pydicom.dcmread(f)
                assert src.SOPInstanceUID in rows, f"acknowledged {f.name} lost"
                back = pydicom.dcmread(data_dir / rows[src.SOPInstanceUID])
                assert back == src and back.PixelData == src.PixelData
            assert not list((data_dir / "instances").rglob("*.tmp")), "partial file left after restart"
            assert len(rows) <= len(list((data_dir / "instances").rglob("*.dcm")))
            # the modality re-sends the association that failed; the series completes (expected count)
            resent = subprocess.run([storescu, "-aet", "CRASH_MR", "-aec", "SPINE_NODE", "127.0.0.1", str(node.port),
                                     *map(str, files)], capture_output=True, text=True, timeout=180)
            assert resent.returncode == 0, resent.stderr
            assert catalog_query(catalog, "SELECT received_count FROM series")[0][0] == len(files)

            # (b) kill while the job runs (volume, inference, SEG/SR encoding)
            wait_until(lambda: catalog_query(catalog, "SELECT id FROM jobs WHERE state='running'"), 120,
                       interval=0.02, what="job running")
            node.kill9()
            state = catalog_query(catalog, "SELECT state FROM jobs")
            assert state == [("running",)], state  # killed mid-job: the catalog says so
            node.start()

            # (c) kill right after the first result was sent
            wait_until(lambda: catalog_query(catalog, "SELECT id FROM dispatches WHERE state='sent'"), 300,
                       interval=0.005, what="first dispatch sent")
            node.kill9()
            caught = catalog_query(catalog, "SELECT kind, state FROM dispatches ORDER BY kind")
            node.start()
            wait_until(lambda: catalog_query(catalog, "SELECT 1 FROM jobs WHERE state='done'"), 120, what="job done")
            log = node.log()

        jobs = catalog_query(catalog, "SELECT id, state, attempts, result_uids FROM jobs")
        assert len(jobs) == 1 and jobs[0][1] == "done", jobs
        assert jobs[0][2] == 2, "the killed run and the resumed run"
        uids = json.loads(jobs[0][3])
        assert "resumed 1 job(s)" in log
        instances = pacs.get("/instances")
        by_modality: dict[str, list[str]] = {}
        for iid in instances:
            tags = pacs.get(f"/instances/{iid}/simplified-tags")
            by_modality.setdefault(tags["Modality"], []).append(tags["SOPInstanceUID"])
        assert by_modality == {"SEG": [uids["seg_sop"]], "SR": [uids["sr_sop"]]}, (by_modality, caught)
        sent_twice = catalog_query(catalog, "SELECT COUNT(*) FROM dispatch_attempts WHERE ok=1")[0][0]
        print(f"kill points: acked {len(acked)}/{len(files)} mid-association; job running; dispatches at kill "
              f"{caught}; successful sends {sent_twice} (Orthanc keeps one per SOP Instance UID)")
