"""Access control and limits at the listener, with real dcmtk peers and pynetdicom requestors.

Unknown calling AE titles (or known ones from the wrong host) and a wrong called AE title get
A-ASSOCIATE-RJ with the DICOM reason; storage classes outside the list are not negotiated;
the association limit refuses above it and never below; an instance over the size limit and
any instance while the disk reserve is reached get 0xA700 and leave nothing behind.
"""
from __future__ import annotations

import logging
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from pynetdicom import AE

from dicom_node.catalog import Catalog
from dicom_node.config import Config, ConfigError, PeerSettings, SecuritySettings, load_config
from dicom_node.scp import StorageSCP
from dicom_node.store import InstanceStore
from tests.helpers.env import require_shared, require_tool

pytestmark = pytest.mark.integration

AET = "SPINE_NODE"
TIMEOUT = 60
VERIFICATION = "1.2.840.10008.1.1"


@contextmanager
def listener(data_dir: Path, security: SecuritySettings | None = None, **node: Any) -> Iterator[StorageSCP]:
    cfg = Config(security=security or SecuritySettings())
    cfg.node.port, cfg.node.ae_title = 0, AET
    for key, value in node.items():
        setattr(cfg.node, key, value)
    store = InstanceStore(data_dir, Catalog(data_dir / "catalog.sqlite"), fsync=False)
    scp = StorageSCP(cfg, store)
    scp.start()
    try:
        yield scp
    finally:
        scp.stop()
        store.close()
        store.catalog.close()


def dcmtk(tool: str, port: int, *args: str, files: tuple[Path, ...] = ()) -> subprocess.CompletedProcess[str]:
    cmd = [require_tool(tool), "-v", *args, "127.0.0.1", str(port), *map(str, files)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)


def storescu(port: int, *paths: Path, aet: str = "MODALITY", aec: str = AET) -> subprocess.CompletedProcess[str]:
    return dcmtk("storescu", port, "-R", "+sd", "-aet", aet, "-aec", aec, files=paths)


def stored(scp: StorageSCP) -> int:
    return int(scp.store.catalog.query("SELECT COUNT(*) FROM instances")[0][0])


def files_on_disk(scp: StorageSCP) -> list[Path]:
    root = scp.store.data_dir / "instances"
    return list(root.rglob("*")) if root.exists() else []


def associate(port: int, aet: str = "MODALITY", aec: str = AET):
    ae = AE(ae_title=aet)
    ae.add_requested_context(VERIFICATION)
    ae.acse_timeout = ae.network_timeout = 20
    return ae.associate("127.0.0.1", port, ae_title=aec)


def rejection(assoc) -> tuple[int, int, int]:
    assert assoc.is_rejected, "expected A-ASSOCIATE-RJ"
    p = assoc.acceptor.primitive
    return p.result, p.result_source, p.diagnostic


def test_allow_list_rejects_unknown_calling_ae_and_wrong_called_ae(tmp_path: Path, caplog) -> None:
    mr = require_shared("dicom/pydicom/MR_small.dcm")
    sec = SecuritySettings(allowed_peers=[PeerSettings(ae_title="MODALITY", hosts=["127.0.0.1"])])
    caplog.set_level(logging.WARNING, logger="dicom_node.scp")
    with listener(tmp_path, sec) as scp:
        bad = dcmtk("echoscu", scp.port, "-aet", "WRONG", "-aec", AET)
        assert bad.returncode != 0 and "Calling AE Title Not Recognized" in bad.stdout + bad.stderr
        refused = storescu(scp.port, mr, aet="WRONG")
        assert refused.returncode != 0 and stored(scp) == 0 and not files_on_disk(scp)
        assert rejection(associate(scp.port, aet="WRONG")) == (1, 1, 3)  # permanent, service-user, reason 3
        assert rejection(associate(scp.port, aec="NOT_US")) == (1, 1, 7)  # called AE not recognised
        called = dcmtk("echoscu", scp.port, "-aet", "MODALITY", "-aec", "NOT_US")
        assert called.returncode != 0 and "Called AE Title Not Recognized" in called.stdout + called.stderr
        # the allowed peer is served, before and after the refusals
        assert dcmtk("echoscu", scp.port, "-aet", "MODALITY", "-aec", AET).returncode == 0
        ok = storescu(scp.port, mr)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert stored(scp) == 1
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert any("WRONG@127.0.0.1" in m and "not in security.allowed_peers" in m for m in refusals), refusals
    assert any("NOT_US" in m and "127.0.0.1" in m for m in refusals), refusals


def test_known_ae_from_another_host_is_refused(tmp_path: Path, caplog) -> None:
    sec = SecuritySettings(allowed_peers=[PeerSettings(ae_title="MODALITY", hosts=["10.0.0.0/8"]),
                                          PeerSettings(ae_title="ANYWHERE", hosts=[])])
    caplog.set_level(logging.WARNING, logger="dicom_node.scp")
    with listener(tmp_path, sec) as scp:
        assert rejection(associate(scp.port, aet="MODALITY")) == (1, 1, 3)
        ok = associate(scp.port, aet="ANYWHERE")  # a peer with no hosts listed: any address
        assert ok.is_established
        ok.release()
    assert any("not allowed from 127.0.0.1" in r.getMessage() for r in caplog.records)


def test_storage_classes_outside_the_list_are_not_negotiated(tmp_path: Path) -> None:
    mr = require_shared("dicom/pydicom/MR_small.dcm")
    seg = require_shared("dicom/dcmqi/seg.dcm")
    ct = require_shared("dicom/pydicom/CT2/17106")
    with listener(tmp_path, SecuritySettings(sop_classes=["MRImageStorage", "1.2.840.10008.5.1.4.1.1.66.4"])) as scp:
        refused = storescu(scp.port, ct)
        assert refused.returncode != 0 and stored(scp) == 0
        sent = storescu(scp.port, mr, seg)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert stored(scp) == 2
    with listener(tmp_path / "default") as scp:  # the default set carries what a spine study holds
        sent = storescu(scp.port, mr, seg, ct, require_shared("dicom/highdicom/sr_document.dcm"))
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert stored(scp) == 4


def test_association_limit_refuses_above_never_below(tmp_path: Path) -> None:
    limit = 4
    with listener(tmp_path, max_associations=limit) as scp:
        held = [associate(scp.port) for _ in range(limit)]
        try:
            assert all(a.is_established for a in held)
            assert rejection(associate(scp.port)) == (2, 3, 2)  # transient, provider, local limit exceeded
            # below the limit a peer that releases and reconnects at once is always accepted
            held.pop().release()
            for _ in range(25):
                again = associate(scp.port)
                assert again.is_established, "refused below the limit"
                again.release()
            # many peers at once, exactly at the limit, from threads
            held.pop().release()
            results: list[bool] = []
            lock = threading.Lock()

            def one() -> None:
                a = associate(scp.port)
                with lock:
                    results.append(a.is_established)
                if a.is_established:
                    a.release()

            for _ in range(5):
                threads = [threading.Thread(target=one) for _ in range(2)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(timeout=30)
            assert results == [True] * 10
            assert scp.limiter.peak == limit
        finally:
            for a in held:
                a.release()


def test_instance_over_size_limit_is_refused_not_stored(tmp_path: Path) -> None:
    small = require_shared("dicom/pydicom/MR_small.dcm")  # 9.8 kB
    big = require_shared("dicom/pydicom-data/emri_small.dcm")  # 84 kB
    with listener(tmp_path, SecuritySettings(max_instance_bytes=50_000)) as scp:
        refused = storescu(scp.port, big)
        assert "Refused: OutOfResources" in refused.stdout + refused.stderr
        assert stored(scp) == 0 and not [p for p in files_on_disk(scp) if p.is_file()]
        ok = storescu(scp.port, small)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert stored(scp) == 1


def test_dataset_growing_past_twice_the_limit_is_cut_while_arriving(tmp_path: Path, caplog) -> None:
    big = require_shared("dicom/pydicom-data/MR2_UNCI.dcm")  # 2.1 MB
    small = require_shared("dicom/pydicom/MR_small.dcm")
    caplog.set_level(logging.ERROR, logger="dicom_node.scp")
    with listener(tmp_path, SecuritySettings(max_instance_bytes=100_000), max_pdu=16384) as scp:
        cut = storescu(scp.port, big)
        assert cut.returncode != 0 and "Success" not in cut.stdout + cut.stderr
        assert stored(scp) == 0
        deadline = time.monotonic() + 10  # the server thread notices the closed connection a moment later
        while (scp.limiter.active or scp._incoming) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert scp.limiter.active == 0 and not scp._incoming  # the slot and the counter are freed
        ok = storescu(scp.port, small, small)  # two instances in one association: the counter resets
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert stored(scp) == 1
    assert any("cut: a dataset passed 200000 bytes" in r.getMessage() for r in caplog.records)


def test_disk_reserve_answers_out_of_resources(tmp_path: Path) -> None:
    mr = require_shared("dicom/pydicom/MR_small.dcm")
    with listener(tmp_path, SecuritySettings(min_free_disk="99.99%")) as scp:  # more than is free
        refused = storescu(scp.port, mr)
        assert "Refused: OutOfResources" in refused.stdout + refused.stderr
        assert stored(scp) == 0 and not [p for p in files_on_disk(scp) if p.is_file()]
        assert dcmtk("echoscu", scp.port, "-aec", AET).returncode == 0  # still serving
    with listener(tmp_path, SecuritySettings(min_free_disk="1MiB")) as scp:
        assert storescu(scp.port, mr).returncode == 0 and stored(scp) == 1


@pytest.mark.parametrize("security, key", [
    ({"allowed_peers": [{"ae_title": "MR1", "hosts": ["scanner.local"]}]}, "security.allowed_peers[0].hosts[0]"),
    ({"allowed_peers": [{"ae_title": "", "hosts": []}]}, "security.allowed_peers[0].ae_title"),
    ({"sop_classes": ["MRImageStorge"]}, "security.sop_classes[0]"),
    ({"min_free_disk": "lots"}, "security.min_free_disk"),
    ({"min_free_disk": "120%"}, "security.min_free_disk"),
    ({"max_instance_bytes": -1}, "security.max_instance_bytes"),
    ({"tls": {"enabled": True}}, "security.tls"),
    ({"tls": {"enabled": True, "cert": "nope.pem", "key": "nope.key"}}, "security.tls.cert"),
    ({"allowed_peers": [{"ae_title": "MR1", "host": ["10.0.0.1"]}]}, "security.allowed_peers[0].host"),
])
def test_bad_security_settings_name_the_key(tmp_path: Path, security: dict, key: str) -> None:
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump({"security": security}))
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        load_config(path)


def test_sizes_and_percentages_parse(tmp_path: Path) -> None:
    from dicom_node.security import DiskThreshold

    assert DiskThreshold.parse("2GiB").bytes == 2 << 30
    assert DiskThreshold.parse("500MB").bytes == 500_000_000
    assert DiskThreshold.parse(1234).bytes == 1234
    assert DiskThreshold.parse("5%").percent == 5.0
    assert DiskThreshold.parse("0").shortfall(tmp_path / "not" / "yet") is None


def test_peer_check_failure_fails_closed(tmp_path: Path) -> None:
    with listener(tmp_path) as scp:
        def broken(*_: object) -> None:
            raise RuntimeError("injected fault")

        scp.policy.check = broken  # type: ignore[method-assign]
        assert rejection(associate(scp.port)) == (1, 1, 3)
        assert scp.limiter.active == 0


def test_declared_pixel_matrix_over_the_limit_is_refused(tmp_path: Path) -> None:
    import pydicom
    from pynetdicom import build_context

    ds = pydicom.dcmread(require_shared("dicom/pydicom/MR_small.dcm"))
    ds.Rows = ds.Columns = 65535  # 8.6 GB declared, 8 kB of pixel data
    with listener(tmp_path) as scp:
        ae = AE(ae_title="MODALITY")
        ae.requested_contexts = [build_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)]
        assoc = ae.associate("127.0.0.1", scp.port, ae_title=AET)
        assert assoc.is_established
        try:
            status = assoc.send_c_store(ds)
        finally:
            assoc.release()
        assert status.Status == 0xC000 and "declares" in status.ErrorComment
        assert stored(scp) == 0
