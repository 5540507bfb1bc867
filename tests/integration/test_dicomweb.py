"""DICOMweb destinations against a real Orthanc with its DICOMweb plugin (STOW-RS): delivery and
re-send, an outage (the backlog waits, then goes), HTTP basic auth, HTTPS with mutual TLS.

The dispatcher is driven directly (as in test_dispatch); the end-to-end node test is
test_dicomweb_node_receives_seg_and_sr_after_an_outage_and_a_superseding_rerun."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pydicom
import pytest

from dicom_node.catalog import Catalog, now
from dicom_node.config import Config, DestinationSettings, DispatchSettings, StorageSettings
from dicom_node.dicomweb import DicomwebSettings
from dicom_node.dispatch import Dispatcher
from dicom_node.jobs import retry_job
from dicom_node.security import DestinationTlsSettings
from testbed.orthanc import LocalOrthanc, free_port
from tests.helpers.env import require_shared, require_tool
from tests.integration.test_dispatch import add_job

pytestmark = pytest.mark.integration

RESULTS = {"seg": "dicom/dcmqi/seg.dcm", "sr": "dicom/highdicom/sr_document.dcm"}


def dicomweb_config(tmp_path: Path, url: str, max_attempts: int = 20, **dicomweb: str) -> Config:
    tls = DestinationTlsSettings(enabled=url.startswith("https:"))
    dest = DestinationSettings(dicomweb=DicomwebSettings(url=url, **dicomweb), tls=tls)
    return Config(storage=StorageSettings(data_dir=str(tmp_path / "node")), destinations={"pacs": dest},
                  dispatch=DispatchSettings(max_attempts=max_attempts, backoff_initial_s=0.05, backoff_factor=2.0,
                                            backoff_max_s=0.2, timeout_s=5.0))


def queue_results(cfg: Config, cat: Catalog, job_id: int) -> dict[str, str]:
    """Job `job_id` dispatching a real SEG and SR to "pacs" (each job its own copies, with its own
    SOP Instance UIDs past the first, as each job's results have); kind -> SOP Instance UID."""
    uids = {}
    t = now()
    with cat.transaction() as con:
        add_job(con, job_id, "dispatching", ["pacs"])
        for kind, rel in RESULTS.items():
            ds = pydicom.dcmread(require_shared(rel))
            if job_id > 1:
                ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
            path = Path(f"results/job-{job_id}/{kind}.dcm")
            (cfg.data_dir / path).parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(cfg.data_dir / path, enforce_file_format=True)
            uids[kind] = str(ds.SOPInstanceUID)
            con.execute("INSERT INTO dispatches (job_id, destination, kind, sop_instance_uid, path, state, "
                        "next_attempt_at) VALUES (?, 'pacs', ?, ?, ?, 'pending', ?)",
                        (job_id, kind, uids[kind], str(path), t))
    return uids


def job_states(cat: Catalog) -> dict[int, str]:
    return {r["id"]: r["state"] for r in cat.query("SELECT id, state FROM jobs")}


def run_until_done(d: Dispatcher, cat: Catalog, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while set(job_states(cat).values()) != {"done"} and time.monotonic() < deadline:
        if not d.run_due("pacs"):
            time.sleep(0.05)
    assert set(job_states(cat).values()) == {"done"}, cat.query("SELECT * FROM dispatches")


def stored_files(pacs: LocalOrthanc) -> dict[str, bytes]:
    """SOP Instance UID -> the file Orthanc holds."""
    out = {}
    for iid in pacs.get("/instances"):
        data = pacs.get_bytes(f"/instances/{iid}/file")
        out[str(pydicom.dcmread(pydicom.filebase.DicomBytesIO(data)).SOPInstanceUID)] = data
    return out


def test_stow_delivers_seg_and_sr_and_a_resend_changes_nothing(tmp_path: Path) -> None:
    require_tool("Orthanc")
    with LocalOrthanc(tmp_path / "pacs", dicomweb=True) as pacs:
        cfg = dicomweb_config(tmp_path, pacs.dicomweb_url)
        cat = Catalog(cfg.catalog_path)
        uids = queue_results(cfg, cat, 1)
        assert Dispatcher(cfg, cat).run_due("pacs") == 2
        assert job_states(cat) == {1: "done"}
        assert [tuple(r) for r in cat.query("SELECT ok, status FROM dispatch_attempts")] == [(1, "HTTP 200")] * 2
        files = stored_files(pacs)
        assert set(files) == set(uids.values())
        for kind, uid in uids.items():  # what Orthanc holds is what was sent, byte for byte
            assert files[uid] == (cfg.data_dir / f"results/job-1/{kind}.dcm").read_bytes()
        seg = pydicom.dcmread(pydicom.filebase.DicomBytesIO(files[uids["seg"]]))
        assert seg.Modality == "SEG" and len(seg.SegmentSequence) >= 1

        # the operator's re-send (same SOP Instance UIDs): accepted again, Orthanc still holds one of each
        assert retry_job(cat, 1) == "results queued for sending again"
        assert Dispatcher(cfg, cat).run_due("pacs") == 2
        assert job_states(cat) == {1: "done"}
        assert set(stored_files(pacs)) == set(uids.values())


def test_outage_backlog_waits_with_the_reason_then_goes_oldest_first(tmp_path: Path) -> None:
    require_tool("Orthanc")
    port = free_port()  # nothing listens: the archive is down
    pacs = LocalOrthanc(tmp_path / "pacs", http_port=port, dicomweb=True)
    cfg = dicomweb_config(tmp_path, pacs.dicomweb_url)
    cat = Catalog(cfg.catalog_path)
    sent = [queue_results(cfg, cat, 1), queue_results(cfg, cat, 2)]
    d = Dispatcher(cfg, cat)
    assert d.run_due("pacs") == 2  # job 1 probes; job 2 waits behind it without an attempt
    assert job_states(cat) == {1: "retrying", 2: "retrying"}
    rows = {(r["job_id"], r["kind"]): r for r in cat.query("SELECT * FROM dispatches")}
    attempts = cat.query("SELECT d.job_id, a.status FROM dispatch_attempts a JOIN dispatches d ON d.id = a.dispatch_id")
    assert [r["job_id"] for r in attempts] == [1, 1]  # job 1's SEG and SR, in one request
    assert attempts[0]["status"] == f"no connection to 127.0.0.1:{port} ([Errno 111] Connection refused)"
    assert rows[1, "sr"]["attempts"] == 1 and rows[2, "seg"]["attempts"] == rows[2, "sr"]["attempts"] == 0
    assert rows[2, "seg"]["last_error"].startswith(f"waiting: pacs is down (no connection to 127.0.0.1:{port}")
    with pacs:  # back
        run_until_done(d, cat)
        assert set(stored_files(pacs)) == {uid for job in sent for uid in job.values()}
    sent_at = [r["sent_at"] for r in cat.query("SELECT sent_at FROM dispatches ORDER BY job_id, id")]
    assert sent_at == sorted(sent_at)


def test_basic_auth_wrong_password_says_what_to_fix_right_one_delivers(tmp_path: Path) -> None:
    require_tool("Orthanc")
    secret = tmp_path / "password"
    secret.write_text("not-the-password\n")
    with LocalOrthanc(tmp_path / "pacs", dicomweb=True, users={"node": "right-password"}) as pacs:
        cfg = dicomweb_config(tmp_path, pacs.dicomweb_url, username="node", password_file=str(secret))
        cat = Catalog(cfg.catalog_path)
        uids = queue_results(cfg, cat, 1)
        d = Dispatcher(cfg, cat)
        d.run_due("pacs")
        error = cat.query("SELECT last_error FROM dispatches WHERE kind='sr'")[0][0]
        assert error.startswith(f"HTTP 401 Unauthorized from POST {pacs.dicomweb_url}/studies: credentials "
                                "refused; check destinations.pacs.dicomweb.token_file or username/password_file"), error
        assert job_states(cat) == {1: "retrying"} and pacs.get("/instances") == []
        secret.write_text("right-password\n")  # read at each send: no restart
        run_until_done(d, cat)
        assert set(stored_files(pacs)) == set(uids.values())


def test_https_with_client_certificates(tmp_path: Path) -> None:
    """HTTPS with mutual TLS through a TLS terminator in front of Orthanc (testbed.tls_front: Debian's
    Orthanc cannot serve HTTPS itself): a CA that did not sign the server is refused at the handshake
    with the key to fix; the right CA and client certificate deliver."""
    require_tool("Orthanc")
    from testbed.tls_front import TlsFront
    from tests.helpers.tls_certs import make_pki

    pki = make_pki(tmp_path / "pki")
    with LocalOrthanc(tmp_path / "pacs", dicomweb=True) as pacs, \
            TlsFront(pacs.http_port, pki.server_cert, pki.server_key, client_ca=pki.ca) as front:
        url = f"https://127.0.0.1:{front.port}/dicom-web"
        cfg = dicomweb_config(tmp_path, url)
        tls = cfg.destinations["pacs"].tls
        tls.ca, tls.cert, tls.key = str(pki.rogue_ca), str(pki.client_cert), str(pki.client_key)  # wrong CA
        cat = Catalog(cfg.catalog_path)
        uids = queue_results(cfg, cat, 1)
        Dispatcher(cfg, cat).run_due("pacs")
        error = cat.query("SELECT last_error FROM dispatches WHERE kind='sr'")[0][0]
        assert f"TLS handshake with 127.0.0.1:{front.port} failed" in error and "certificate verify failed" in error \
            and "check the certificates and destinations.pacs.tls" in error, error

        tls.ca, tls.cert, tls.key = str(pki.ca), "", ""  # the right CA but no client certificate: refused
        time.sleep(0.3)  # past the backoff
        assert Dispatcher(cfg, cat).run_due("pacs") == 2
        error = cat.query("SELECT last_error FROM dispatches WHERE kind='sr'")[0][0]
        assert error.startswith(f"TLS connection to 127.0.0.1:{front.port} refused by the destination") and \
            error.endswith("does it want a client certificate? check destinations.pacs.tls.cert and key"), error
        assert pacs.get("/instances") == [] and "peer did not return a certificate" in front.handshake_errors[-1]

        tls.ca, tls.cert, tls.key = str(pki.ca), str(pki.client_cert), str(pki.client_key)
        run_until_done(Dispatcher(cfg, cat), cat)  # a new dispatcher: a new TLS context
        assert set(stored_files(pacs)) == set(uids.values())


def test_dicomweb_node_receives_seg_and_sr_after_an_outage_and_a_superseding_rerun(tmp_path: Path) -> None:
    """End to end: a series sent to the node with storescu, its destination a DICOMweb one, down at
    first; the node retries, and once Orthanc is back the SEG and SR (and, by the destination's
    profile, the Secondary Captures) arrive through STOW-RS. Then a late instance re-opens the
    series: the re-run's results arrive too, its SR naming the first SR as its predecessor."""
    storescu = require_tool("storescu")
    require_tool("Orthanc")
    require_tool("dciodvfy")
    from testbed.node_process import NodeProcess, catalog_query, tiny_node_config, wait_until
    from testbed.series import write_series
    from tests.faults.test_outage import DISPATCH, results_in_pacs, send
    from tests.helpers.bad_inputs import crop_source

    nifti = crop_source(require_shared("lesion-example/t2_fake_lesion.nii.gz"), tmp_path)
    files = sorted(write_series(nifti, tmp_path / "series", series_description="T2 SAG SPINE",
                                uid_seed="dicomweb-e2e", patient_id="DICOMWEB-E2E"))
    (tmp_path / "late").mkdir()
    files[-1].rename(tmp_path / "late" / files[-1].name)  # held back: arrives after the first results
    pacs = LocalOrthanc(tmp_path / "pacs", dicomweb=True)
    try:
        destination = {"dicomweb": {"url": pacs.dicomweb_url}, "secondary_capture": True}
        config = tiny_node_config(tmp_path / "work", pacs, dispatch=DISPATCH, destinations={"pacs": destination})
        catalog = tmp_path / "work" / "node" / "catalog.sqlite"
        with NodeProcess(config, tmp_path) as node:
            series_uid = send(storescu, node.port, tmp_path / "series")  # Orthanc is not running yet
            failed = ("SELECT a.status FROM dispatch_attempts a JOIN dispatches d ON d.id = a.dispatch_id "
                      "WHERE a.ok=0 AND d.kind='seg'")
            statuses = wait_until(lambda: catalog_query(catalog, failed), 120, interval=0.2, what="a failed attempt")
            assert statuses[0][0].startswith(f"no connection to 127.0.0.1:{pacs.http_port}"), statuses
            assert catalog_query(catalog, "SELECT state FROM jobs") == [("retrying",)]
            pacs.start()
            done = "SELECT COUNT(*) FROM jobs WHERE state='done'"
            wait_until(lambda: catalog_query(catalog, done)[0][0] == 1, 60, what="job delivered once Orthanc is back")
            first = json.loads(catalog_query(catalog, "SELECT result_uids FROM jobs")[0][0])
            found = results_in_pacs(pacs)
            assert found.pop("SEG") == [first["seg_sop"]] and found.pop("SR") == [first["sr_sop"]]
            assert sorted(uid for v in found.values() for uid in v) == sorted(first["sc_sops"])  # the profile's SCs

            send(storescu, node.port, tmp_path / "late")  # re-opens the series: a second job supersedes
            wait_until(lambda: catalog_query(catalog, done)[0][0] == 2, 120, what="the re-run delivered")
        second = json.loads(catalog_query(catalog, "SELECT result_uids FROM jobs ORDER BY id")[1][0])
        found = results_in_pacs(pacs)
        assert found["SEG"] == sorted([first["seg_sop"], second["seg_sop"]])
        assert found["SR"] == sorted([first["sr_sop"], second["sr_sop"]])
        assert catalog_query(catalog, "SELECT DISTINCT status FROM dispatch_attempts WHERE ok=1") == [("HTTP 200",)]
        stored = stored_files(pacs)
        sr = pydicom.dcmread(pydicom.filebase.DicomBytesIO(stored[second["sr_sop"]]))
        refs = [s.ReferencedSOPInstanceUID for item in sr.PredecessorDocumentsSequence
                for series in item.ReferencedSeriesSequence for s in series.ReferencedSOPSequence]
        assert refs == [first["sr_sop"]]
        seg = pydicom.dcmread(pydicom.filebase.DicomBytesIO(stored[second["seg_sop"]]))
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series_uid  # the series sent to the node
    finally:
        pacs.stop()
