"""The worker in-process: route a complete series, run the real pipeline, queue dispatches.

A tiny random-weight model stands in for the shipped one (its lesion threshold is above 1, so
it never reports lesions); everything else is the real code: store, catalog, volume builder,
engine, metrics, SEG/SR encoding and the dciodvfy gate.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pydicom
import pytest

from dicom_node.catalog import Catalog
from dicom_node.completion import CompletionTracker
from dicom_node.config import Config, DestinationSettings, ModelSettings, StorageSettings
from dicom_node.store import InstanceStore
from dicom_node.worker import Worker
from testbed.series import write_series
from testbed.tiny_model import make_tiny_model
from tests.helpers.catalog import completed, series_id, series_of
from tests.helpers.env import require_shared, require_tool

RULES = [
    {"name": "spine", "when": {"attribute": "SeriesDescription", "matches": "spine"}, "pipeline": "spinal_cord",
     "destinations": ["pacs"]},
    {"name": "rest", "when": {}, "pipeline": None, "destinations": []},
]


@pytest.fixture()
def setup(tmp_path: Path):
    require_tool("dciodvfy")
    model = make_tiny_model(tmp_path / "model", thresholds=(0.5, 1.01), patch=(32, 32, 32))
    cfg = Config(storage=StorageSettings(data_dir=str(tmp_path / "node"), fsync=False),
                 models={"default": ModelSettings(path=str(model))},
                 destinations={"pacs": DestinationSettings(port=1)}, routing=copy.deepcopy(RULES))  # tests edit it
    cfg.worker.device = "cpu"
    cat = Catalog(cfg.catalog_path)
    store = InstanceStore(cfg.data_dir, cat, fsync=False)
    yield cfg, cat, store
    store.close()


def ingest(store: InstanceStore, files: list[Path]) -> str:
    for f in files:
        store.store(pydicom.dcmread(f), "TEST_MR")
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)


def small_series(tmp_path: Path, description: str, **kw) -> list[Path]:
    src = require_shared("lesion-example/t2_fake_lesion.nii.gz")
    return write_series(src, tmp_path / description.replace(" ", "_"), series_description=description,
                        uid_seed=description, **kw)


def test_spine_series_becomes_results_and_dispatches(setup, tmp_path: Path) -> None:
    cfg, cat, store = setup
    uid = ingest(store, small_series(tmp_path, "T2 SAG SPINE"))
    assert completed(CompletionTracker(cat, 30)) == [uid]  # ImagesInAcquisition says 29, all arrived
    worker = Worker(cfg, cat)
    (job_id,) = worker.route_complete_series()
    assert series_of(cat, uid)["state"] == "routed"
    assert worker.run_next() == job_id
    job = cat.query("SELECT * FROM jobs WHERE id=?", (job_id,))[0]
    assert job["state"] == "dispatching", job["reason"]
    m = json.loads(job["measurements"])
    assert m["lesion_count"] == 0 and m["cord_volume_mm3"] > 0
    uids = json.loads(job["result_uids"])
    rows = cat.query("SELECT kind, sop_instance_uid, path, state FROM dispatches WHERE job_id=? ORDER BY kind",
                     (job_id,))
    assert [(r["kind"], r["state"]) for r in rows] == [("seg", "pending"), ("sr", "pending")]
    seg = pydicom.dcmread(cfg.data_dir / rows[0]["path"])
    assert seg.SOPInstanceUID == uids["seg_sop"] == rows[0]["sop_instance_uid"]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uid
    source = store.instances_of(series_id(store.catalog, uid))[0]
    assert seg.StudyInstanceUID == pydicom.dcmread(source).StudyInstanceUID

    # a crash after the UIDs were made: the re-run reuses them (the PACS de-duplicates the re-send)
    with cat.transaction() as con:
        con.execute("UPDATE jobs SET state='running' WHERE id=?", (job_id,))
    assert worker.recover() == 1
    assert worker.run_next() == job_id
    assert json.loads(cat.query("SELECT result_uids FROM jobs WHERE id=?", (job_id,))[0][0]) == uids


def test_late_instance_supersedes_with_predecessor(setup, tmp_path: Path) -> None:
    cfg, cat, store = setup
    files = small_series(tmp_path, "T2 SAG SPINE")
    uid = ingest(store, files[:-1])
    tracker, worker = CompletionTracker(cat, 30), Worker(cfg, cat)
    assert completed(tracker, now=series_of(cat, uid)["last_received"] + 31) == [uid]  # idle
    (first,) = worker.route_complete_series()
    worker.run_next()
    ingest(store, files[-1:])  # the late instance re-opens the series
    assert series_of(cat, uid)["generation"] == 2
    assert completed(tracker) == [uid]
    (second,) = worker.route_complete_series()
    assert cat.query("SELECT supersedes_job FROM jobs WHERE id=?", (second,))[0][0] == first
    worker.run_next()
    job = cat.query("SELECT * FROM jobs WHERE id=?", (second,))[0]
    assert job["state"] == "dispatching", job["reason"]
    sr_row = cat.query("SELECT path FROM dispatches WHERE job_id=? AND kind='sr'", (second,))[0]
    sr = pydicom.dcmread(cfg.data_dir / sr_row["path"])
    first_uids = json.loads(cat.query("SELECT result_uids FROM jobs WHERE id=?", (first,))[0][0])
    refs = [s.ReferencedSOPInstanceUID for item in sr.PredecessorDocumentsSequence
            for series in item.ReferencedSeriesSequence for s in series.ReferencedSOPSequence]
    assert refs == [first_uids["sr_sop"]]


def test_other_series_is_stored_not_processed(setup, tmp_path: Path) -> None:
    cfg, cat, store = setup
    uid = ingest(store, small_series(tmp_path, "T2 SAG BRAIN"))
    completed(CompletionTracker(cat, 30))
    assert Worker(cfg, cat).route_complete_series() == []
    row = series_of(cat, uid)
    assert (row["state"], row["routing_rule"]) == ("ignored", "rest")
    assert "spine" in row["routing_reason"]


def test_a_stored_only_series_says_why_in_one_log_line(setup, tmp_path: Path, caplog) -> None:
    # issue 23 item 5: the reason used to be in the catalog only
    cfg, cat, store = setup
    uid = ingest(store, small_series(tmp_path, "T2 SAG BRAIN"))
    completed(CompletionTracker(cat, 30))
    with caplog.at_level("INFO", logger="dicom_node.router"):
        assert Worker(cfg, cat).route_complete_series() == []
    (line,) = [r.getMessage() for r in caplog.records if uid in r.getMessage()]
    assert "stored only" in line and "rule 'rest': matched" in line
    assert "rule 'spine' not matched: SeriesDescription matches 'spine': no ('T2 SAG BRAIN')" in line


def test_series_that_is_not_a_volume_fails_with_reason(setup, tmp_path: Path) -> None:
    cfg, cat, store = setup
    files = small_series(tmp_path, "T2 SAG SPINE")
    ds = pydicom.dcmread(files[5])
    ds.ImagePositionPatient = pydicom.dcmread(files[4]).ImagePositionPatient  # duplicate slice position
    ds.save_as(files[5], enforce_file_format=True)
    ingest(store, files)
    completed(CompletionTracker(cat, 30))
    worker = Worker(cfg, cat)
    (job_id,) = worker.route_complete_series()
    worker.run_next()
    job = cat.query("SELECT state, reason, attempts FROM jobs WHERE id=?", (job_id,))[0]
    assert job["state"] == "failed" and job["attempts"] == 1
    assert "cannot be made into a volume" in job["reason"] and "position" in job["reason"].lower()


@pytest.mark.parametrize("keyword, value, why", [
    # issue 23 item 1: PixelSpacing [-0.8, 0] used to crash in reorientation and be retried
    ("PixelSpacing", [-0.8, 0.0], ["PixelSpacing", "positive"]),
    # issue 23 item 3: the SEG copied a 66-character Frame of Reference UID and failed validation
    ("FrameOfReferenceUID", "1.2." + "3" * 62, ["FrameOfReferenceUID", "66 characters"]),
])
def test_a_series_no_retry_can_fix_fails_once_before_inference(setup, tmp_path: Path, keyword: str, value: object,
                                                               why: list[str]) -> None:
    cfg, cat, store = setup
    files = small_series(tmp_path, "T2 SAG SPINE")
    for f in files:
        ds = pydicom.dcmread(f)
        setattr(ds, keyword, value)
        ds.save_as(f, enforce_file_format=True)
    ingest(store, files)
    completed(CompletionTracker(cat, 30))
    calls: list[object] = []
    worker = Worker(cfg, cat, analyzer=lambda volume, request: calls.append(request))  # must not be reached
    (job_id,) = worker.route_complete_series()
    worker.run_next()
    job = cat.query("SELECT state, reason, attempts FROM jobs WHERE id=?", (job_id,))[0]
    assert job["state"] == "failed" and job["attempts"] == 1 and not calls
    assert all(word in job["reason"] for word in why), job["reason"]


def test_destination_options_pick_seg_variant_and_secondary_capture(setup, tmp_path: Path) -> None:
    cfg, cat, store = setup
    cfg.destinations["viewer"] = DestinationSettings(port=2, seg_omit_empty_frames=True, seg_fractional=True,
                                                     secondary_capture=True)
    cfg.routing[0]["destinations"] = ["pacs", "viewer"]
    uid = ingest(store, small_series(tmp_path, "T2 SAG SPINE"))
    completed(CompletionTracker(cat, 30))
    worker = Worker(cfg, cat)
    (job_id,) = worker.route_complete_series()
    worker.run_next()
    job = cat.query("SELECT state, reason FROM jobs WHERE id=?", (job_id,))[0]
    assert job["state"] == "dispatching", job["reason"]
    rows = {(r["destination"], r["kind"]): r for r in cat.query("SELECT * FROM dispatches WHERE job_id=?", (job_id,))}
    assert set(rows) == {("pacs", "seg"), ("pacs", "sr"), ("viewer", "seg"), ("viewer", "sr"),
                         ("viewer", "sc1"), ("viewer", "sc2"), ("viewer", "sc3")}
    assert rows["viewer", "seg"]["path"].endswith("seg-fractional-sparse.dcm")
    full = pydicom.dcmread(cfg.data_dir / rows["pacs", "seg"]["path"])
    sparse = pydicom.dcmread(cfg.data_dir / rows["viewer", "seg"]["path"])
    assert full.SegmentationType == "BINARY" and sparse.SegmentationType == "FRACTIONAL"
    # (omitting empty frames itself is proven in test_results_seg; this model leaves none empty)
    assert full.SOPInstanceUID != sparse.SOPInstanceUID
    for dest, seg in (("pacs", full), ("viewer", sparse)):  # each SR references the SEG its destination gets
        sr = pydicom.dcmread(cfg.data_dir / rows[dest, "sr"]["path"])
        evidence = {s.ReferencedSOPInstanceUID for st in sr.CurrentRequestedProcedureEvidenceSequence
                    for se in st.ReferencedSeriesSequence for s in se.ReferencedSOPSequence}
        assert seg.SOPInstanceUID in evidence
    sc = pydicom.dcmread(cfg.data_dir / rows["viewer", "sc1"]["path"])
    assert sc.BurnedInAnnotation == "YES" and sc.StudyInstanceUID == full.StudyInstanceUID
    assert uid == full.ReferencedSeriesSequence[0].SeriesInstanceUID


def test_ohif_viewer_gets_byte_frames_and_an_older_jobs_uids_are_completed(setup, tmp_path: Path) -> None:
    """viewer: ohif -> the "ohif" SEG variant (8-bit FRACTIONAL OCCUPANCY, RLE) with its own SR. A job
    whose UIDs were kept by a release without that variant gets new UIDs for it, the kept ones stay."""
    from dicom_node.results.build import new_result_uids

    cfg, cat, store = setup
    cfg.destinations["ohif"] = DestinationSettings(port=3, viewer="ohif")
    cfg.routing[0]["destinations"] = ["pacs", "ohif"]
    ingest(store, small_series(tmp_path, "T2 SAG SPINE"))
    completed(CompletionTracker(cat, 30))
    worker = Worker(cfg, cat)
    (job_id,) = worker.route_complete_series()
    older = {k: v for k, v in new_result_uids().items() if not k.startswith("ohif")}
    worker.jobs.keep_result_uids(job_id, older)
    worker.run_next()
    job = cat.query("SELECT state, reason FROM jobs WHERE id=?", (job_id,))[0]
    assert job["state"] == "dispatching", job["reason"]
    kept = worker.jobs.result_uids(job_id)
    assert kept is not None and {k: kept[k] for k in older} == older and "ohif.seg_sop" in kept
    rows = {(r["destination"], r["kind"]): r for r in cat.query("SELECT * FROM dispatches WHERE job_id=?", (job_id,))}
    assert rows["ohif", "seg"]["path"].endswith("seg-ohif.dcm") and rows["ohif", "sr"]["path"].endswith("sr-ohif.dcm")
    seg = pydicom.dcmread(cfg.data_dir / rows["ohif", "seg"]["path"])
    assert (seg.SegmentationType, seg.SegmentationFractionalType, int(seg.BitsAllocated)) == ("FRACTIONAL",
                                                                                              "OCCUPANCY", 8)
    assert seg.file_meta.TransferSyntaxUID == pydicom.uid.RLELossless and seg.SOPInstanceUID == kept["ohif.seg_sop"]
    assert pydicom.dcmread(cfg.data_dir / rows["pacs", "seg"]["path"]).SOPInstanceUID == older["seg_sop"]


def test_pipeline_minimum_lesion_volume_reaches_measurements_and_results(setup, tmp_path: Path) -> None:
    cfg, cat, store = setup
    # lesion threshold 0: the whole cord is one lesion component, which the minimum then drops
    model = make_tiny_model(tmp_path / "all-lesion", thresholds=(0.5, 0.0), patch=(32, 32, 32))
    cfg.models["default"] = ModelSettings(path=str(model))
    cfg.pipelines["spinal_cord"].min_lesion_volume_mm3 = 1e9
    ingest(store, small_series(tmp_path, "T2 SAG SPINE"))
    completed(CompletionTracker(cat, 30))
    worker = Worker(cfg, cat)
    (job_id,) = worker.route_complete_series()
    assert worker.run_next() == job_id
    job = cat.query("SELECT * FROM jobs WHERE id=?", (job_id,))[0]
    assert job["state"] == "dispatching", job["reason"]
    m = json.loads(job["measurements"])
    assert m["lesion_count"] == 0 and m["lesions_below_minimum"] >= 1 and m["min_lesion_volume_mm3"] == 1e9
    seg_path = cat.query("SELECT path FROM dispatches WHERE job_id=? AND kind='seg'", (job_id,))[0][0]
    seg = pydicom.dcmread(cfg.data_dir / seg_path)
    assert len(seg.SegmentSequence) == 1  # the cord only: no lesion segment
    algo = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algo.AlgorithmParameters == "min_lesion_volume_mm3=1e+09"
