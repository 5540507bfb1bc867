"""TLS for DIMSE: the listener with dcmtk over TLS (mutual), and dispatch to an Orthanc that speaks TLS.

Certificates are made here with the openssl CLI. A client without a certificate, with one from
another CA, or without TLS at all is refused; the listener keeps serving the good client.
"""
from __future__ import annotations

import json
import subprocess
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from dicom_node.catalog import Catalog
from dicom_node.config import (
    Config,
    DestinationSettings,
    DestinationTlsSettings,
    DispatchSettings,
    ListenerTlsSettings,
    SecuritySettings,
    StorageSettings,
)
from dicom_node.dispatch import Dispatcher
from dicom_node.scp import StorageSCP
from dicom_node.store import InstanceStore
from testbed.orthanc import LocalOrthanc
from tests.helpers.env import require_shared, require_tool
from tests.helpers.tls_certs import Pki, make_pki
from tests.integration.test_dispatch import job_state, queue_one
from tests.integration.test_security import listener

pytestmark = pytest.mark.integration

AET = "SPINE_NODE"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_listener(data_dir: Path, pki: Pki, require_client_cert: bool = True) -> AbstractContextManager[StorageSCP]:
    """test_security's listener with TLS on (server certificate, optional client-certificate check)."""
    tls = ListenerTlsSettings(enabled=True, cert=str(pki.server_cert), key=str(pki.server_key), ca=str(pki.ca),
                              require_client_cert=require_client_cert)
    return listener(data_dir, SecuritySettings(tls=tls), acse_timeout_s=10, network_timeout_s=10)


def dcmtk(tool: str, port: int, *opts: str, files: tuple[Path, ...] = ()) -> subprocess.CompletedProcess[str]:
    cmd = [require_tool(tool), "-v", "-aet", "MODALITY", "-aec", AET, *opts, "127.0.0.1", str(port), *map(str, files)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def tls_opts(pki: Pki, cert: Path | None = None, key: Path | None = None) -> tuple[str, ...]:
    return ("+tls", str(key or pki.client_key), str(cert or pki.client_cert), "+cf", str(pki.ca))


def count(scp: StorageSCP) -> int:
    return int(scp.store.catalog.query("SELECT COUNT(*) FROM instances")[0][0])


def test_listener_over_mutual_tls_with_dcmtk(tmp_path: Path, pki: Pki) -> None:
    series = require_shared("dicom/dcm_qa_decubitus_HFS_t1_sag")
    with tls_listener(tmp_path, pki) as scp:
        echo = dcmtk("echoscu", scp.port, *tls_opts(pki))
        assert echo.returncode == 0, echo.stdout + echo.stderr
        sent = dcmtk("storescu", scp.port, "-R", "+sd", *tls_opts(pki), files=(series,))
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert count(scp) == 35
        # no TLS, a certificate from another CA, no certificate: all refused
        assert dcmtk("echoscu", scp.port).returncode != 0
        rogue = dcmtk("echoscu", scp.port, *tls_opts(pki, pki.rogue_cert, pki.rogue_key))
        assert rogue.returncode != 0
        anonymous = dcmtk("echoscu", scp.port, "+tla", "+cf", str(pki.ca))
        assert anonymous.returncode != 0
        # a client that does not trust our certificate gives up; nothing was stored meanwhile
        distrust = dcmtk("echoscu", scp.port, "+tls", str(pki.client_key), str(pki.client_cert), "+cf",
                         str(pki.rogue_ca))
        assert distrust.returncode != 0
        assert count(scp) == 35
        again = dcmtk("echoscu", scp.port, *tls_opts(pki))  # still serving the good client
        assert again.returncode == 0, again.stdout + again.stderr


def test_listener_tls_without_client_certificates(tmp_path: Path, pki: Pki) -> None:
    with tls_listener(tmp_path, pki, require_client_cert=False) as scp:
        anonymous = dcmtk("echoscu", scp.port, "+tla", "+cf", str(pki.ca))
        assert anonymous.returncode == 0, anonymous.stdout + anonymous.stderr


class TlsOrthanc(LocalOrthanc):
    """Orthanc with DICOM TLS on its DICOM port (mutual: it wants our client certificate)."""

    def __init__(self, workdir: Path, pki: Pki) -> None:
        super().__init__(workdir)
        self.pki = pki

    def write_config(self) -> Path:
        path = super().write_config()
        cfg = json.loads(path.read_text())
        cfg.update(DicomTlsEnabled=True, DicomTlsCertificate=str(self.pki.server_cert),
                   DicomTlsPrivateKey=str(self.pki.server_key), DicomTlsTrustedCertificates=str(self.pki.ca),
                   DicomTlsRemoteCertificateRequired=True)
        path.write_text(json.dumps(cfg, indent=2))
        return path


def dispatch_config(tmp_path: Path, port: int, tls: DestinationTlsSettings) -> Config:
    dest = DestinationSettings(ae_title="ORTHANC", host="127.0.0.1", port=port, tls=tls)
    return Config(storage=StorageSettings(data_dir=str(tmp_path / "node")), destinations={"pacs": dest},
                  dispatch=DispatchSettings(max_attempts=1, backoff_initial_s=0.05, timeout_s=10.0))


def test_dispatch_over_tls_to_orthanc(tmp_path: Path, pki: Pki) -> None:
    require_tool("Orthanc")
    src = require_shared("dicom/pydicom/MR_small.dcm")
    with TlsOrthanc(tmp_path / "pacs", pki) as pacs:
        # wrong trust anchor: the node refuses the PACS's certificate and says so
        wrong = dispatch_config(tmp_path / "wrong", pacs.dicom_port,
                                DestinationTlsSettings(enabled=True, ca=str(pki.rogue_ca), cert=str(pki.client_cert),
                                                       key=str(pki.client_key)))
        cat = Catalog(wrong.catalog_path)
        queue_one(wrong, cat, src)
        refused = Dispatcher(wrong, cat).attempt(1)
        assert not refused.ok and "TLS" in refused.status
        assert job_state(cat)[0] == "failed" and pacs.get("/instances") == []

        # plain TCP to a TLS port: no association
        plain = dispatch_config(tmp_path / "plain", pacs.dicom_port, DestinationTlsSettings())
        cat = Catalog(plain.catalog_path)
        queue_one(plain, cat, src)
        assert not Dispatcher(plain, cat).attempt(1).ok

        good = dispatch_config(tmp_path / "good", pacs.dicom_port,
                               DestinationTlsSettings(enabled=True, ca=str(pki.ca), cert=str(pki.client_cert),
                                                      key=str(pki.client_key)))
        cat = Catalog(good.catalog_path)
        queue_one(good, cat, src)
        outcome = Dispatcher(good, cat).attempt(1)
        assert outcome.ok, outcome.status
        assert job_state(cat) == ("done", None)
        assert len(pacs.get("/instances")) == 1


def test_tls_settings_from_yaml_resolve_relative_to_the_config(tmp_path: Path, pki: Pki) -> None:
    """As an operator writes it: cert paths relative to the config file; a bad path names its key."""
    import shutil

    import yaml

    from dicom_node.config import ConfigError, load_config

    etc = tmp_path / "etc"
    (etc / "certs").mkdir(parents=True)
    for src in (pki.server_cert, pki.server_key, pki.ca):
        shutil.copy(src, etc / "certs" / src.name)
    tls = {"enabled": True, "cert": "certs/server.crt", "key": "certs/server.key", "ca": "certs/test-ca.crt",
           "require_client_cert": True}
    raw = {"node": {"port": 0}, "storage": {"data_dir": "../data", "fsync": False}, "security": {"tls": tls}}
    (etc / "node.yaml").write_text(yaml.safe_dump(raw))
    cfg = load_config(etc / "node.yaml")
    store = InstanceStore(cfg.data_dir, Catalog(cfg.catalog_path), fsync=False)
    scp = StorageSCP(cfg, store)
    scp.start()
    try:
        echo = dcmtk("echoscu", scp.port, *tls_opts(pki))
        assert echo.returncode == 0, echo.stdout + echo.stderr
    finally:
        scp.stop()
        store.close()
        store.catalog.close()
    (etc / "node.yaml").write_text(yaml.safe_dump({**raw, "security": {"tls": {**tls, "ca": "certs/missing.crt"}}}))
    with pytest.raises(ConfigError, match=r"security\.tls\.ca: file .*missing\.crt does not exist"):
        load_config(etc / "node.yaml")
    (etc / "node.yaml").write_text(yaml.safe_dump({**raw, "security": {"tls": {**tls, "key": "certs/test-ca.crt"}}}))
    with pytest.raises(ConfigError, match=r"security\.tls\.cert/security\.tls\.key: cannot load"):
        load_config(etc / "node.yaml")
