"""PACS outage through the running node and the operator's CLI, with a real Orthanc stopped and restarted.

1. Orthanc is down when the results are due: the node retries with growing waits and delivers
   once Orthanc is back (same ports, same storage folder).
2. Orthanc stays down past dispatch.max_attempts: the job is failed with the reason, which
   `dicom-node status` shows; after Orthanc is back, `dicom-node retry JOB` delivers it.
Orthanc ends with exactly one SEG and one SR per series.
"""
from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest

from testbed.node_process import NodeProcess, catalog_query, cli, tiny_node_config, wait_until
from testbed.orthanc import LocalOrthanc
from testbed.series import write_series
from tests.helpers.env import require_shared, require_tool

pytestmark = pytest.mark.integration

DISPATCH = {"max_attempts": 6, "backoff_initial_s": 0.5, "backoff_factor": 2.0, "backoff_max_s": 2.0, "timeout_s": 5.0}


def send(storescu: str, port: int, folder: Path) -> str:
    import subprocess

    out = subprocess.run([storescu, "+sd", "-aet", "OUTAGE_MR", "-aec", "SPINE_NODE", "127.0.0.1", str(port),
                          str(folder)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return str(pydicom.dcmread(sorted(folder.glob("*.dcm"))[0], stop_before_pixels=True).SeriesInstanceUID)


def results_in_pacs(pacs: LocalOrthanc) -> dict[str, list[str]]:
    """Modality -> SOP Instance UIDs of what Orthanc holds."""
    found: dict[str, list[str]] = {}
    for iid in pacs.get("/instances"):
        tags = pacs.get(f"/instances/{iid}/simplified-tags")
        found.setdefault(tags["Modality"], []).append(tags["SOPInstanceUID"])
    return {k: sorted(v) for k, v in found.items()}


def test_outage_retries_delivers_then_gives_up_and_cli_retry_delivers(tmp_path: Path) -> None:
    storescu = require_tool("storescu")
    require_tool("Orthanc")
    require_tool("dciodvfy")
    from tests.helpers.bad_inputs import crop_source

    nifti = crop_source(require_shared("lesion-example/t2_fake_lesion.nii.gz"), tmp_path)  # small: fast jobs
    folders = []
    for name in ("one", "two"):
        write_series(nifti, tmp_path / name, series_description="T2 SAG SPINE", uid_seed=f"outage-{name}",
                     patient_id=f"OUTAGE-{name}")
        folders.append(tmp_path / name)

    pacs = LocalOrthanc(tmp_path / "pacs")
    pacs.start()
    try:
        config = tiny_node_config(tmp_path / "work", pacs, dispatch=DISPATCH)
        catalog = tmp_path / "work" / "node" / "catalog.sqlite"
        with NodeProcess(config, tmp_path) as node:
            # 1. down while results are due, back after three failed attempts
            pacs.stop()  # waits for the process to exit: same folders can be reused
            first = send(storescu, node.port, folders[0])
            failed_seg = ("SELECT COUNT(*) FROM dispatch_attempts a JOIN dispatches d ON d.id = a.dispatch_id "
                          "WHERE a.ok=0 AND d.kind='seg'")
            wait_until(lambda: catalog_query(catalog, failed_seg)[0][0] >= 3, 120, what="three failed attempts")
            pacs.start()
            wait_until(lambda: catalog_query(catalog, "SELECT 1 FROM jobs WHERE state='done'"), 60,
                       what="job delivered after the outage")
            attempts = catalog_query(catalog, "SELECT d.kind, a.at, a.ok FROM dispatch_attempts a JOIN dispatches d "
                                              "ON d.id = a.dispatch_id ORDER BY a.id")
            seg_times = [at for kind, at, _ in attempts if kind == "seg"]
            gaps = [b - a for a, b in zip(seg_times, seg_times[1:])]
            assert len(gaps) >= 3 and gaps[0] >= 0.45 and gaps[1] >= 0.95 and gaps[2] >= 1.95, gaps  # backoff
            assert [ok for kind, _, ok in attempts if kind == "seg"][-1] == 1

            # 2. down for longer than max_attempts allows: failed, with the reason, shown by status
            pacs.stop()
            second = send(storescu, node.port, folders[1])
            failed = wait_until(lambda: catalog_query(catalog, "SELECT id, reason FROM jobs WHERE state='failed'"),
                                180, what="job failed after max attempts")
            job_id, reason = failed[0]
            assert reason.startswith("dispatch failed:") and "pacs seg" in reason and "pacs sr" in reason, reason
            n = catalog_query(catalog, "SELECT COUNT(*) FROM dispatch_attempts a JOIN dispatches d ON d.id = "
                                       "a.dispatch_id WHERE d.job_id=?", (job_id,))[0][0]
            assert n == 2 * DISPATCH["max_attempts"]
            status = cli(config, "status")
            assert status.returncode == 0, status.stderr
            assert f"#{job_id}" in status.stdout and "failed" in status.stdout
            assert "reason: dispatch failed: pacs seg" in status.stdout, status.stdout
            as_json = json.loads(cli(config, "status", "--json").stdout)
            assert as_json["job_counts"] == {"done": 1, "failed": 1}

            pacs.start()
            retried = cli(config, "retry", str(job_id))
            assert retried.returncode == 0 and "queued for sending again" in retried.stdout, retried.stderr
            wait_until(lambda: catalog_query(catalog, "SELECT state FROM jobs WHERE id=?", (job_id,)) == [("done",)],
                       60, what="retried job delivered")

        uids = [json.loads(r[0]) for r in catalog_query(catalog, "SELECT result_uids FROM jobs ORDER BY id")]
        assert results_in_pacs(pacs) == {"SEG": sorted(u["seg_sop"] for u in uids),
                                         "SR": sorted(u["sr_sop"] for u in uids)}
        series = {r[0] for r in catalog_query(
            catalog, "SELECT s.series_uid FROM jobs j JOIN series s ON s.id = j.series_id")}
        assert series == {first, second}
    finally:
        pacs.stop()
