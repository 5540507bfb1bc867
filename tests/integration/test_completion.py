"""Series completion: by the announced instance count, by idle time, and re-open by late instances."""
from __future__ import annotations

import time
from pathlib import Path

import pydicom
import pytest

from dicom_node.catalog import Catalog
from dicom_node.completion import CompletionTracker
from dicom_node.store import InstanceStore
from tests.helpers.catalog import completed, series_id, series_of
from tests.helpers.env import require_shared
from tests.integration.test_scp import running_node, storescu

SERIES = "dicom/dcm_qa_decubitus_HFS_t1_sag"


def copies(dest: Path, images_in_acquisition: int | None) -> list[Path]:
    """The real Siemens series, with ImagesInAcquisition set as a scanner that announces it would."""
    dest.mkdir(parents=True)
    out = []
    for src in sorted(require_shared(SERIES).glob("*.dcm")):
        ds = pydicom.dcmread(src)
        if images_in_acquisition is not None:
            ds.ImagesInAcquisition = images_in_acquisition
        ds.save_as(dest / src.name, enforce_file_format=True)
        out.append(dest / src.name)
    return out


def series_uid() -> str:
    first = sorted(require_shared(SERIES).glob("*.dcm"))[0]
    return pydicom.dcmread(first, stop_before_pixels=True).SeriesInstanceUID


@pytest.mark.integration
def test_complete_when_expected_count_arrives(tmp_path: Path) -> None:
    files = copies(tmp_path / "src", images_in_acquisition=35)
    with running_node(tmp_path / "node") as (scp, store):
        tracker = CompletionTracker(store.catalog, idle_seconds=3600)
        assert storescu(scp.port, *files[:34]).returncode == 0
        assert completed(tracker) == []
        row = series_of(store.catalog, series_uid())
        assert (row["expected_count"], row["received_count"], row["state"]) == (35, 34, "receiving")
        assert storescu(scp.port, files[34]).returncode == 0
        assert completed(tracker) == [series_uid()]
        assert completed(tracker) == []  # only newly completed series are returned
        row = series_of(store.catalog, series_uid())
        assert (row["state"], row["completion_reason"]) == ("complete", "expected-count")
        assert row["completed_at"] is not None


def test_complete_when_idle(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path, Catalog(tmp_path / "catalog.sqlite"), fsync=False)
    for src in sorted(require_shared(SERIES).glob("*.dcm"))[:5]:
        store.store(pydicom.dcmread(src), "MRI_3T")
    tracker = CompletionTracker(store.catalog, idle_seconds=30)
    last = series_of(store.catalog, series_uid())["last_received"]
    assert completed(tracker, now=last + 29) == []
    assert completed(tracker, now=last + 30.5) == [series_uid()]
    row = series_of(store.catalog, series_uid())
    assert (row["state"], row["completion_reason"], row["expected_count"]) == ("complete", "idle", None)


def test_expected_count_never_reached_falls_back_to_idle(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path, Catalog(tmp_path / "catalog.sqlite"), fsync=False)
    ds = pydicom.dcmread(require_shared("dicom/pydicom/MR_small.dcm"))
    ds.ImagesInAcquisition = 20
    store.store(ds, "X")
    tracker = CompletionTracker(store.catalog, idle_seconds=5)
    assert completed(tracker, now=time.time()) == []
    assert completed(tracker, now=time.time() + 6) == [ds.SeriesInstanceUID]
    assert series_of(store.catalog, ds.SeriesInstanceUID)["completion_reason"] == "idle"


@pytest.mark.integration
def test_late_instance_reopens_with_next_generation(tmp_path: Path) -> None:
    files = copies(tmp_path / "src", images_in_acquisition=None)
    late = pydicom.dcmread(files[-1])
    late.SOPInstanceUID = pydicom.uid.generate_uid()
    late.InstanceNumber = 36
    late.save_as(tmp_path / "late.dcm", enforce_file_format=True)
    uid = series_uid()
    with running_node(tmp_path / "node") as (scp, store):
        tracker = CompletionTracker(store.catalog, idle_seconds=0.5)
        assert storescu(scp.port, *files).returncode == 0
        assert completed(tracker, now=time.time() + 1) == [uid]
        assert store.catalog.set_series_routing(series_id(store.catalog, uid), 1, "routed", "spine-t2", "test")
        assert storescu(scp.port, files[0]).returncode == 0  # identical re-send: stays routed
        row = series_of(store.catalog, uid)
        assert (row["state"], row["generation"], row["received_count"]) == ("routed", 1, 35)
        assert storescu(scp.port, tmp_path / "late.dcm").returncode == 0
        row = series_of(store.catalog, uid)
        assert (row["state"], row["generation"], row["received_count"]) == ("receiving", 2, 36)
        assert row["completed_at"] is None and row["completion_reason"] is None
        # a routing decision for the superseded generation is dropped
        assert not store.catalog.set_series_routing(series_id(store.catalog, uid), 1, "routed", "spine-t2", "stale")
        assert completed(tracker, now=time.time() + 1) == [uid]
        row = series_of(store.catalog, uid)
        assert (row["state"], row["generation"], row["completion_reason"]) == ("complete", 2, "idle")


def test_tracker_validates_idle_seconds(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="idle_seconds"):
        CompletionTracker(Catalog(tmp_path / "c.sqlite"), idle_seconds=0)
