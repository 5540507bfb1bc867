"""PACS outage through the running node and the operator's CLI, with a real Orthanc stopped and restarted.

1. Orthanc is down when the results are due: the node retries with growing waits and delivers
   once Orthanc is back (same ports, same storage folder).
2. Orthanc stays down past dispatch.max_attempts: the job is failed with the reason, which
   `dicom-node status` shows; after Orthanc is back, `dicom-node retry JOB` delivers it.
Orthanc ends with exactly one SEG and one SR per series.
3. Two Orthancs, one down for longer than the old defaults allowed (issue 23): the other gets
   every result meanwhile on its first attempt, nothing gives up, and once back the first gets
   its backlog, oldest job first; each Orthanc ends with one SEG and one SR per series.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


def instances_in_pacs(pacs: LocalOrthanc) -> list[dict[str, Any]]:
    """The simplified tags of every instance Orthanc holds."""
    return [pacs.get(f"/instances/{iid}/simplified-tags") for iid in pacs.get("/instances")]


def results_in_pacs(pacs: LocalOrthanc) -> dict[str, list[str]]:
    """Modality -> SOP Instance UIDs of what Orthanc holds."""
    found: dict[str, list[str]] = {}
    for tags in instances_in_pacs(pacs):
        found.setdefault(tags["Modality"], []).append(tags["SOPInstanceUID"])
    return {k: sorted(v) for k, v in found.items()}


def results_of_jobs(catalog: Path) -> dict[str, list[str]]:
    """Modality -> SOP Instance UIDs of the SEG and SR of every job with results (jobs.result_uids)."""
    uids = [json.loads(r[0]) for r in catalog_query(catalog, "SELECT result_uids FROM jobs WHERE result_uids "
                                                             "IS NOT NULL ORDER BY id")]
    return {"SEG": sorted(u["seg_sop"] for u in uids), "SR": sorted(u["sr_sop"] for u in uids)}


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


def test_a_long_outage_of_one_destination_delays_nobody_and_loses_nothing(tmp_path: Path) -> None:
    """Destination "pacs" (A) is down while three series come and stays down for more failed
    attempts than the old defaults allowed (6); "archive" (B) meanwhile gets every result on its
    first attempt. Short waits, the defaults' code path: 60 attempts with waits capped at 2 s."""
    storescu = require_tool("storescu")
    require_tool("Orthanc")
    require_tool("dciodvfy")
    from tests.helpers.bad_inputs import crop_source

    dispatch = {"max_attempts": 60, "backoff_initial_s": 0.5, "backoff_factor": 2.0, "backoff_max_s": 2.0,
                "timeout_s": 5.0}
    nifti = crop_source(require_shared("lesion-example/t2_fake_lesion.nii.gz"), tmp_path)
    names = ("one", "two", "three")
    for name in names:
        write_series(nifti, tmp_path / name, series_description="T2 SAG SPINE", uid_seed=f"lanes-{name}",
                     patient_id=f"LANES-{name}")

    a = LocalOrthanc(tmp_path / "pacs-a", ae_title="PACS_A")
    b = LocalOrthanc(tmp_path / "pacs-b", ae_title="PACS_B")
    a.start()
    b.start()
    try:
        config = tiny_node_config(tmp_path / "work", a, also_to={"archive": b}, dispatch=dispatch)
        catalog = tmp_path / "work" / "node" / "catalog.sqlite"
        with NodeProcess(config, tmp_path) as node:
            a.stop()  # waits for the process to exit: same folders and ports for its restart
            for name in names:
                send(storescu, node.port, tmp_path / name)

            # B holds all three series' results while A is still down
            n_jobs = "SELECT COUNT(*) FROM jobs WHERE result_uids IS NOT NULL"
            wait_until(lambda: catalog_query(catalog, n_jobs)[0][0] == 3 and results_in_pacs(b) == results_of_jobs(
                catalog), 180, interval=0.5, what="every result in B while A is down")
            to_b = catalog_query(catalog, "SELECT attempts, sent_at - next_attempt_at FROM dispatches "
                                          "WHERE destination='archive'")
            assert len(to_b) == 6 and all(n == 1 and waited < 3.0 for n, waited in to_b), to_b  # not held up by A

            # A stays down past the old limit: job 1's SEG fails 8 times, nothing gives up
            failed_first_seg = ("SELECT COUNT(*) FROM dispatch_attempts a JOIN dispatches d ON d.id = a.dispatch_id "
                                "WHERE a.ok=0 AND d.kind='seg' AND d.destination='pacs' "
                                "AND d.job_id = (SELECT MIN(id) FROM jobs)")
            wait_until(lambda: catalog_query(catalog, failed_first_seg)[0][0] >= 8, 60, interval=0.2,
                       what="8 failed attempts of job 1's SEG to A")
            assert a.proc is None  # still down
            assert catalog_query(catalog, "SELECT COUNT(*) FROM jobs WHERE state='failed'")[0][0] == 0
            assert catalog_query(catalog, "SELECT COUNT(*) FROM dispatches WHERE state='failed'")[0][0] == 0
            assert catalog_query(catalog, "SELECT COUNT(*) FROM dispatches WHERE destination='pacs' "
                                          "AND state='pending'")[0][0] == 6

            a.start()
            wait_until(lambda: catalog_query(catalog, "SELECT COUNT(*) FROM jobs WHERE state='done'")[0][0] == 3,
                       60, interval=0.2, what="every job done once A is back")

        expected = results_of_jobs(catalog)
        assert len(expected["SEG"]) == len(set(expected["SEG"])) == 3
        for pacs in (a, b):
            assert results_in_pacs(pacs) == expected  # one SEG and one SR per series
            patients = sorted(t["PatientID"] for t in instances_in_pacs(pacs))
            assert patients == sorted(f"LANES-{n}" for n in names for _ in range(2))
        sent_ok = catalog_query(catalog, "SELECT d.destination, COUNT(*) FROM dispatch_attempts a JOIN dispatches d "
                                         "ON d.id = a.dispatch_id WHERE a.ok=1 GROUP BY d.destination")
        assert dict(sent_ok) == {"pacs": 6, "archive": 6}  # each result sent once to each
        sent_at = [r[0] for r in catalog_query(catalog, "SELECT sent_at FROM dispatches WHERE destination='pacs' "
                                                        "ORDER BY job_id, id")]
        assert sent_at == sorted(sent_at), "A got its backlog oldest job first"
    finally:
        a.stop()
        b.stop()
