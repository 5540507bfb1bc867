"""The bad-input corpus (tests/helpers/bad_inputs.py) through the real listener and the worker.

Each case is sent over DICOM (pynetdicom as the sender: stock storescu refuses to send broken
files, a faulty modality does not); after each, a real `echoscu` must still be answered. Then
completion, routing and the worker (tiny model) run in-process on everything at once: each
series ends as its case says (processed, failed with a reason, or ignored by routing), the
good control series sent last is processed, and no file is written outside instances/.
"""
from __future__ import annotations

import subprocess
import warnings
from pathlib import Path

import pytest
import yaml
from pynetdicom import AE, build_context

from dicom_node.catalog import Catalog
from dicom_node.completion import CompletionTracker
from dicom_node.config import DEFAULT_CONFIG, load_config
from dicom_node.scp import StorageSCP
from dicom_node.store import InstanceStore
from dicom_node.worker import Worker
from testbed.tiny_model import make_tiny_model
from tests.helpers.bad_inputs import Case, make_corpus
from tests.helpers.env import require_shared, require_tool

pytestmark = [pytest.mark.integration,
              pytest.mark.filterwarnings("ignore::UserWarning")]  # pydicom warns on every hostile value, by design
AET = "SPINE_NODE"


def send(port: int, files: list[Path]) -> list[int | None]:
    """C-STORE each file as it is on disk (bytes after the file meta, not re-encoded); statuses."""

    from pynetdicom import _config

    statuses: list[int | None] = []
    chunked, _config.STORE_SEND_CHUNKED_DATASET = _config.STORE_SEND_CHUNKED_DATASET, True  # raw bytes, no parse
    try:
        for f in files:
            statuses.append(_send_one(port, f, meta_of(f)))
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked
    return statuses


def meta_of(f: Path):
    import pydicom

    return pydicom.filereader.read_file_meta_info(f)


def _send_one(port: int, f: Path, meta) -> int | None:
    if True:
        ae = AE(ae_title="BAD_MODALITY")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        ae.requested_contexts = [build_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)]
        assoc = ae.associate("127.0.0.1", port, ae_title=AET)
        assert assoc.is_established, f"association refused for {f}"
        try:
            status = assoc.send_c_store(f)
            return getattr(status, "Status", None)
        finally:
            assoc.release()


def test_bad_input_corpus(tmp_path: Path) -> None:
    echoscu = require_tool("echoscu")
    require_tool("dciodvfy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = make_corpus(tmp_path / "corpus", require_shared("lesion-example/t2_fake_lesion.nii.gz"))
    assert len(cases) >= 20
    control = Case("control", [], 0, "done")

    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())  # the shipped routing rules, tiny model, no fsync
    raw["storage"] = {"data_dir": str(tmp_path / "node"), "fsync": False}
    raw["node"]["port"] = 0
    raw["models"]["default"]["path"] = str(make_tiny_model(tmp_path / "model", thresholds=(0.5, 1.01),
                                                           patch=(32, 32, 32)))
    raw["worker"].update(device="cpu", torch_threads=1, max_attempts=2)  # a permanent failure must use only 1
    (tmp_path / "node.yaml").write_text(yaml.safe_dump(raw))
    cfg = load_config(tmp_path / "node.yaml")
    cat = Catalog(cfg.catalog_path)
    store = InstanceStore(cfg.data_dir, cat, fsync=False)
    scp = StorageSCP(cfg, store)
    scp.start()
    statuses: dict[str, list[int | None]] = {}
    try:
        for case in cases:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                statuses[case.name] = send(scp.port, case.files)
            echo = subprocess.run([echoscu, "-aec", AET, "127.0.0.1", str(scp.port)], capture_output=True,
                                  text=True, timeout=30)
            assert echo.returncode == 0, f"listener stopped answering after {case.name}: {echo.stderr}"
        from testbed.series import write_series

        good = write_series(tmp_path / "corpus" / "crop.nii.gz", tmp_path / "control", uid_seed="control",
                            series_description="T2 SAG SPINE")
        statuses["control"] = send(scp.port, good)
        head = __import__("pydicom").dcmread(good[0], stop_before_pixels=True)
        control.series_keys = [(str(head.StudyInstanceUID), str(head.SeriesInstanceUID))]
    finally:
        scp.stop()

    report = []
    for case in [*cases, control]:
        got = statuses[case.name]
        refused = sum(1 for s in got if s != 0x0000)
        report.append(f"{case.name}: statuses {sorted({hex(s) if s is not None else 'none' for s in got})}")
        assert refused == case.refused, (case.name, [hex(s) if s is not None else None for s in got])
        assert all(s in (0x0000, 0xC000, 0xA700) for s in got), (case.name, got)

    # everything stored is filed under instances/ with safe names; nothing elsewhere
    data = cfg.data_dir
    for row in cat.query("SELECT path FROM instances"):
        p = (data / row["path"]).resolve()
        assert p.is_relative_to(data / "instances") and p.is_file(), row["path"]
    assert not [p for p in tmp_path.rglob("passwd")], "a hostile UID became a path"

    # completion, routing and the worker, in-process, on all series at once
    tracker, worker = CompletionTracker(cat, cfg.completion.idle_seconds), Worker(cfg, cat)
    tracker.check(now=1e12)  # every series idle: complete
    worker.route_complete_series()
    running: list[int] = []
    inferred: set[int] = set()  # the jobs that reached the network
    run_job, analyzer = worker.run_job, worker.analyzer
    worker.run_job = lambda job_id: (running.append(job_id), run_job(job_id))[1]  # type: ignore[method-assign]
    worker.analyzer = lambda volume, request: (inferred.add(running[-1]), analyzer(volume, request))[1]
    for _ in range(3 * len(cases)):  # bounded: each job runs at most max_attempts times
        if worker.run_next() is None:
            break
    outcomes: dict[str, str] = {}
    wrong: list[tuple] = []
    for case in [*cases, control]:
        assert case.outcome == "none" or case.series_keys, case.name
        for study_uid, series_uid in case.series_keys:
            found = cat.query("SELECT * FROM series WHERE study_uid=? AND series_uid=?", (study_uid, series_uid))
            assert len(found) == 1, (case.name, "series not in catalog")
            s = found[0]
            jobs = cat.query("SELECT id, state, reason, attempts FROM jobs WHERE series_id=?", (s["id"],))
            if case.outcome != "done" and any(j["id"] in inferred for j in jobs):
                wrong.append((case.name, "inference ran on input the node judged unusable"))
            if case.outcome == "ignored":
                outcomes[case.name] = f"{s['state']}: {(s['routing_reason'] or '').splitlines()[:1]}"
                if s["state"] != "ignored" or jobs or case.reason not in (s["routing_reason"] or ""):
                    wrong.append((case.name, s["state"], s["routing_reason"], [tuple(j) for j in jobs]))
                continue
            if len(jobs) != 1:
                wrong.append((case.name, s["state"], s["routing_reason"], [tuple(j) for j in jobs]))
                continue
            state, reason = jobs[0]["state"], jobs[0]["reason"] or ""
            outcomes[case.name] = f"{state}: {reason[:200]}"
            if case.outcome == "failed" and jobs[0]["attempts"] != 1:
                wrong.append((case.name, f"a permanent failure was tried {jobs[0]['attempts']} times"))
            expected = "dispatching" if case.outcome == "done" else "failed"
            if state != expected or (case.outcome == "failed" and not (
                    reason and case.reason.lower() in reason.lower() and "Traceback" not in reason)):
                wrong.append((case.name, state, reason))
    # identity (issue 23 item 4): the reused Series UID made two whole series; the instance sent
    # again under another patient did not replace the one the series holds
    by_name = {c.name: c for c in cases}
    for study_uid, series_uid in by_name["reused_series_uid"].series_keys:
        (row,) = cat.query("SELECT id, received_count FROM series WHERE study_uid=? AND series_uid=?",
                           (study_uid, series_uid))
        half = len(by_name["reused_series_uid"].files) // 2
        assert row["received_count"] == len(cat.instance_paths(row["id"])) == half, (study_uid, row["received_count"])
    intruder = by_name["sop_uid_other_patient"].files[-1]
    import pydicom

    sop = pydicom.dcmread(intruder, stop_before_pixels=True).SOPInstanceUID
    (kept,) = cat.query("SELECT path FROM instances WHERE sop_instance_uid=?", (sop,))
    held = pydicom.dcmread(cfg.data_dir / kept["path"])
    assert held.PatientID == "CORPUS-C" and any(held.PixelData), "the other patient's instance overwrote the first"
    store.close()
    cat.close()
    print("\n".join(report))
    print("\n".join(f"{k}: {v}" for k, v in outcomes.items()))
    assert not wrong, wrong
