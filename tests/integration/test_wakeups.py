"""Each stage wakes the next (issue 21): a series whose header announces its count is complete at
its last instance, its job starts at once, and its results leave at once, with every poll
interval set far longer than the whole case takes."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from pynetdicom import AE, evt
from pynetdicom.sop_class import Comprehensive3DSRStorage, SegmentationStorage  # type: ignore[attr-defined]

from dicom_node.config import DEFAULT_CONFIG, load_config
from dicom_node.service import Node
from testbed.node_process import wait_until
from testbed.series import write_series
from testbed.tiny_model import make_tiny_model
from tests.helpers.bad_inputs import crop_source
from tests.helpers.env import require_shared, require_tool
from tests.integration.test_scp import storescu

pytestmark = pytest.mark.integration
POLL_S = 120.0  # no stage may wait for a poll: the case must finish well before one


def test_a_series_with_its_count_goes_through_without_waiting_for_any_poll(tmp_path: Path) -> None:
    require_tool("storescu")
    require_tool("dciodvfy")
    received: list[str] = []
    pacs = AE(ae_title="PACS")
    for sop_class in (SegmentationStorage, Comprehensive3DSRStorage):
        pacs.add_supported_context(sop_class)

    def on_store(event: evt.Event) -> int:
        received.append(str(event.request.AffectedSOPClassUID))
        return 0x0000

    server = pacs.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw["storage"] = {"data_dir": str(tmp_path / "node"), "fsync": False}
    raw["node"]["port"] = 0
    raw["models"]["default"]["path"] = str(make_tiny_model(tmp_path / "model", thresholds=(0.5, 1.01),
                                                           patch=(32, 32, 32)))
    raw["worker"].update(device="cpu", torch_threads=1, poll_interval_s=POLL_S)
    raw["completion"].update(idle_seconds=POLL_S, poll_interval_s=POLL_S)
    raw["destinations"]["pacs"].update(ae_title="PACS", host="127.0.0.1", port=server.server_address[1])
    (tmp_path / "node.yaml").write_text(yaml.safe_dump(raw))
    node = Node(load_config(tmp_path / "node.yaml"))
    nifti = crop_source(require_shared("lesion-example/t2_fake_lesion.nii.gz"), tmp_path)
    write_series(nifti, tmp_path / "series", uid_seed="wakeups")  # ImagesInAcquisition = its slices
    node.start()
    try:
        time.sleep(1.0)  # past the loops' first step: from here on only a wake-up or a poll starts one
        t0 = time.monotonic()
        sent = storescu(node.port, tmp_path / "series", aec="SPINE_NODE")
        assert sent.returncode == 0, sent.stderr
        wait_until(lambda: len(received) == 2, 60, what="SEG and SR at the destination")
        took = time.monotonic() - t0
    finally:
        node.stop()
        server.shutdown()
    assert sorted(received) == sorted([SegmentationStorage, Comprehensive3DSRStorage])
    assert took < POLL_S / 2, f"{took:.1f} s: a stage waited for its poll"
