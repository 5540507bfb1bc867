"""One end-to-end round: the node in this process, a series sent by dcmtk's storescu, results awaited in Orthanc."""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from dicom_node.config import Config
from dicom_node.service import Node
from testbed.demo import wait_for_results
from testbed.orthanc import LocalOrthanc
from tests.helpers.env import require_tool


def store_and_wait(config: Config, pacs: LocalOrthanc, series_dir: Path, study_uid: str,
                   timeout: float = 600) -> dict[str, Any]:
    """Start the node, C-STORE ``series_dir`` to it with storescu, wait until its SEG and SR of
    ``study_uid`` are in ``pacs`` (Orthanc's series info by modality), stop the node."""
    storescu = require_tool("storescu")
    node = Node(config)
    node.start()
    try:
        sent = subprocess.run([storescu, "-aet", "TEST_MR", "-aec", config.node.ae_title, "+sd",
                               "127.0.0.1", str(node.port), str(series_dir)],
                              capture_output=True, text=True, timeout=120)
        assert sent.returncode == 0, sent.stderr
        return wait_for_results(pacs, {study_uid}, timeout=timeout)[study_uid]
    finally:
        node.stop()
