"""`dicom-node backup`: a consistent, self-contained catalog copy taken while writers commit."""
from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import yaml

from dicom_node.backup import backup_catalog
from dicom_node.catalog import Catalog
from tests.helpers.env import REPO


def _instance(i: int) -> tuple[dict, dict]:
    inst = {"sop_instance_uid": f"1.2.3.{i}", "sop_class_uid": "1.2.840.10008.5.1.4.1.1.4",
            "path": f"instances/x/{i}.dcm", "size": 10, "sha256": str(i),
            "transfer_syntax": "1.2.840.10008.1.2.1", "calling_ae": "MR", "received_at": float(i)}
    series = {"study_uid": "1.2", "series_uid": "1.2.3", "patient_id": "", "modality": "MR", "description": "d",
              "calling_ae": "MR", "expected_count": None}
    return inst, series


def test_backup_while_writing_is_consistent(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "node" / "catalog.sqlite")
    for i in range(200):
        cat.record_instance(*_instance(i))
    stop, written = threading.Event(), [200]

    def writer() -> None:
        w = Catalog(cat.path)
        while not stop.is_set() and written[0] < 5000:
            w.record_instance(*_instance(written[0]))
            written[0] += 1
        w.close()

    t = threading.Thread(target=writer)
    t.start()
    try:
        (tmp_path / "backups").mkdir()
        counts = backup_catalog(cat.path, tmp_path / "backups")
    finally:
        stop.set()
        t.join(timeout=30)
    assert written[0] > 200, "the writer never ran during the backup"
    copy = Path(counts["path"])
    assert copy.parent == tmp_path / "backups" and not list(copy.parent.glob(".*partial"))
    assert not Path(f"{copy}-wal").exists()
    con = sqlite3.connect(copy)
    n, received = con.execute("SELECT COUNT(*), (SELECT received_count FROM series) FROM instances").fetchone()
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert 200 <= n <= written[0] and received == n == counts["instances"]  # one committed state, not torn


def test_cli_backup_and_clear_error(tmp_path: Path) -> None:
    cfg = yaml.safe_load((REPO / "config" / "default.yaml").read_text())
    cfg["storage"]["data_dir"] = str(tmp_path / "node")
    config = tmp_path / "node.yaml"
    config.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "dicom_node.cli", "backup", str(tmp_path / "b.sqlite"), "--config", str(config)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert run.returncode == 1 and "no catalog at" in run.stderr and "Traceback" not in run.stderr
    Catalog(tmp_path / "node" / "catalog.sqlite").record_instance(*_instance(1))
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert run.returncode == 0, run.stderr
    assert "1 instances" in run.stdout and (tmp_path / "b.sqlite").is_file()
