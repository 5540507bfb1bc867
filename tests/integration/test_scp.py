"""StorageSCP with real dcmtk peers (echoscu, storescu) on loopback."""
from __future__ import annotations

import socket
import subprocess
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import pydicom
import pytest
from pynetdicom import AE, build_context

from dicom_node.catalog import Catalog
from dicom_node.config import Config
from dicom_node.pynetdicom_adapter import connection_socket
from dicom_node.scp import StorageSCP
from dicom_node.store import InstanceStore, StoredInstance
from tests.helpers.catalog import series_id, series_of
from tests.helpers.env import require_shared, require_tool

pytestmark = pytest.mark.integration

AET = "SPINE_NODE"
TIMEOUT = 60


@contextmanager
def running_node(
    data_dir: Path, on_stored: Callable[[StoredInstance], None] | None = None, **node: object
) -> Iterator[tuple[StorageSCP, InstanceStore]]:
    """A listener on a free loopback port, stopped afterwards whatever happens."""
    cfg = Config()
    cfg.node.port = 0
    cfg.node.ae_title = AET
    for key, value in node.items():
        setattr(cfg.node, key, value)
    store = InstanceStore(data_dir, Catalog(data_dir / "catalog.sqlite"))
    scp = StorageSCP(cfg, store, on_stored=on_stored)
    scp.start()
    try:
        yield scp, store
    finally:
        scp.stop()
        store.close()
        store.catalog.close()


def storescu(
    port: int, *paths: Path, aec: str = AET, aet: str = "MODALITY", options: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """Stock dcmtk storescu, proposing exactly the SOP classes of the files (-R), folders scanned."""
    cmd = [require_tool("storescu"), "-v", "-R", "+sd", *options, "-aet", aet, "-aec", aec, "127.0.0.1", str(port)]
    return subprocess.run(cmd + [str(p) for p in paths], capture_output=True, text=True, timeout=TIMEOUT)


def dataset_bytes_equal(a: Path, b: Path) -> bool:
    """Same dataset element for element, raw values compared (file meta aside)."""
    da, db = pydicom.dcmread(a), pydicom.dcmread(b)
    return da == db and da.get("PixelData") == db.get("PixelData")


def test_echo_and_wrong_called_ae(tmp_path: Path) -> None:
    echoscu = require_tool("echoscu")
    with running_node(tmp_path) as (scp, _):
        ok = subprocess.run([echoscu, "-aec", AET, "127.0.0.1", str(scp.port)], capture_output=True, text=True,
                            timeout=TIMEOUT)
        assert ok.returncode == 0, ok.stderr
        bad = subprocess.run([echoscu, "-aec", "NOT_US", "127.0.0.1", str(scp.port)], capture_output=True,
                             text=True, timeout=TIMEOUT)
        assert bad.returncode != 0
        assert "Called AE Title Not Recognized" in bad.stdout + bad.stderr
        sent = storescu(scp.port, require_shared("dicom/pydicom/MR_small.dcm"), aec="NOT_US")
        assert sent.returncode != 0 and not (tmp_path / "instances").exists()


def test_real_files_arrive_byte_identical_with_counts(tmp_path: Path) -> None:
    series_dir = require_shared("dicom/dcm_qa_decubitus_HFS_t1_sag")
    singles = [require_shared(f"dicom/pydicom-data/{n}")
               for n in ("MR-SIEMENS-DICOM-WithOverlays.dcm", "emri_small.dcm")]
    singles += [require_shared("dicom/dcmqi/seg.dcm"), require_shared("dicom/highdicom/sr_document.dcm")]
    nodelay: list[int] = []

    def on_stored(stored: StoredInstance) -> None:  # runs in the association's thread
        sock = connection_socket(threading.current_thread())  # the Association is the thread
        nodelay.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    with running_node(tmp_path, on_stored=on_stored) as (scp, store):
        sent = storescu(scp.port, series_dir, *singles, aet="MRI_3T")
        assert sent.returncode == 0, sent.stdout + sent.stderr
        sources = sorted(series_dir.glob("*.dcm")) + singles
        rows = {r["sop_instance_uid"]: r for r in store.catalog.query("SELECT * FROM instances")}
        assert len(rows) == len(sources) == 39
        for src in sources:
            ds = pydicom.dcmread(src, stop_before_pixels=True)
            row = rows[ds.SOPInstanceUID]
            assert row["calling_ae"] == "MRI_3T"
            assert pydicom.dcmread(tmp_path / row["path"]).file_meta.SourceApplicationEntityTitle == "MRI_3T"
            assert dataset_bytes_equal(src, tmp_path / row["path"]), src
        uid = pydicom.dcmread(sources[0], stop_before_pixels=True).SeriesInstanceUID
        series = series_of(store.catalog, uid)
        assert (series["received_count"], series["state"], series["description"]) == (35, "receiving", "t1_fl2d_sag")
        assert len(store.instances_of(series_id(store.catalog, uid))) == 35
    assert nodelay and all(nodelay), "TCP_NODELAY must be set on every accepted connection"


def test_resend_is_idempotent(tmp_path: Path) -> None:
    series_dir = require_shared("dicom/dcm_qa_decubitus_HFS_t1_sag")
    with running_node(tmp_path) as (scp, store):
        for _ in range(2):
            sent = storescu(scp.port, series_dir)
            assert sent.returncode == 0, sent.stdout + sent.stderr
        assert store.catalog.query("SELECT COUNT(*) FROM instances")[0][0] == 35
        assert store.catalog.query("SELECT received_count FROM series")[0][0] == 35
        assert len(list((tmp_path / "instances").rglob("*.dcm"))) == 35
        assert not list((tmp_path / "instances").rglob("*.tmp"))


def test_store_failure_is_refused_and_listener_keeps_serving(tmp_path: Path) -> None:
    mr = require_shared("dicom/pydicom/MR_small.dcm")
    with running_node(tmp_path) as (scp, store):
        (tmp_path / "instances").write_text("a file where the folder should be: every write fails")
        failed = storescu(scp.port, mr)
        assert "Refused: OutOfResources" in failed.stdout + failed.stderr
        assert store.catalog.query("SELECT COUNT(*) FROM instances")[0][0] == 0
        (tmp_path / "instances").unlink()
        ok = storescu(scp.port, mr)
        assert ok.returncode == 0 and "Received Store Response (Success)" in ok.stdout + ok.stderr
        assert store.catalog.query("SELECT COUNT(*) FROM instances")[0][0] == 1


def test_dataset_without_identifiers_gets_cannot_understand(tmp_path: Path) -> None:
    ds = pydicom.dcmread(require_shared("dicom/pydicom/MR_small.dcm"))
    del ds.SeriesInstanceUID
    with running_node(tmp_path) as (scp, store):
        ae = AE(ae_title="PYNETDICOM")
        ae.requested_contexts = [build_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)]
        assoc = ae.associate("127.0.0.1", scp.port, ae_title=AET)
        assert assoc.is_established
        status = assoc.send_c_store(ds)
        assoc.release()
        assert status.Status == 0xC000 and "SeriesInstanceUID" in status.ErrorComment
        assert store.catalog.query("SELECT COUNT(*) FROM instances")[0][0] == 0


def test_compressed_transfer_syntax_stored_as_received(tmp_path: Path) -> None:
    src = require_shared("dicom/pydicom/MR_small.dcm")
    ds = pydicom.dcmread(src)
    ds.compress(pydicom.uid.RLELossless)
    rle = tmp_path / "rle.dcm"
    ds.save_as(rle, enforce_file_format=True)
    with running_node(tmp_path / "node") as (scp, store):
        sent = storescu(scp.port, rle, options=("-xr",))  # propose RLE: no conversion by the sender
        assert sent.returncode == 0, sent.stdout + sent.stderr
        (row,) = store.catalog.query("SELECT path, transfer_syntax FROM instances")
        assert row["transfer_syntax"] == pydicom.uid.RLELossless
        back = pydicom.dcmread(tmp_path / "node" / row["path"])
        assert back.PixelData == ds.PixelData
        assert (back.pixel_array == pydicom.dcmread(src).pixel_array).all()


def test_max_associations_refuses_extra(tmp_path: Path) -> None:
    with running_node(tmp_path, max_associations=1) as (scp, _):
        ae = AE(ae_title="HOLDER")
        ae.add_requested_context("1.2.840.10008.1.1")
        first = ae.associate("127.0.0.1", scp.port, ae_title=AET)
        assert first.is_established
        try:
            second = ae.associate("127.0.0.1", scp.port, ae_title=AET)
            assert second.is_rejected
            assert second.acceptor.primitive.diagnostic == 0x02  # local limit exceeded
        finally:
            first.release()


def test_port_in_use_says_what_to_change(tmp_path: Path) -> None:
    with running_node(tmp_path / "a") as (scp, _):
        cfg = Config()
        cfg.node.port = scp.port
        other = StorageSCP(cfg, InstanceStore(tmp_path / "b", Catalog(tmp_path / "b" / "catalog.sqlite")))
        with pytest.raises(RuntimeError, match="Change node.port"):
            other.start()
