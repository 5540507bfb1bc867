"""16 concurrent storescu associations (the configured limit) into `dicom-node serve` while a job runs.

CI size 16 x 10 real-size MR instances over 4 studies; `bench/load.py` runs the same code at
3,000 instances. Zero lost (acknowledged = in the catalog = on disk), no association refused
at the limit, and the node's peak RSS is reported.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from tests.helpers.env import REPO, require_shared, require_tool

pytestmark = pytest.mark.integration


def test_sixteen_concurrent_associations_lose_nothing(tmp_path: Path) -> None:
    require_tool("storescu")
    require_tool("dciodvfy")
    require_shared("dicom/dcm_qa_decubitus_HFS_t1_sag")
    spec = importlib.util.spec_from_file_location("bench_load", REPO / "bench" / "load.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # dataclasses look their module up by name
    spec.loader.exec_module(bench)
    result = bench.run_load(tmp_path, associations=16, per_association=10, studies=4, timeout_s=240)
    print(result.summary())
    assert result.refused_associations == 0, result.errors
    assert result.failed_responses == 0, result.errors
    assert result.acknowledged == result.sent == 160
    assert result.in_catalog == result.on_disk == 160
    assert result.lost == 0
    assert result.job_state_at_start == "running"
