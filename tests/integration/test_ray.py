"""worker.executor: ray: inference on model-holding actors of a real local Ray cluster.

The cluster is started as an operator starts one: `ray start --head` and a second worker node
`ray start --address ...`, two `ray start` process trees, everything on 127.0.0.1
(tests/ray_cluster.py says how). Each node gives one CPU; the node runs with two actors, so
two series are analysed at once, one per actor. The measurements equal the in-process
analysis of the same series. Then two more series keep both actors busy and the worker node is
killed (-9, its whole process tree: raylet, agents, the actor): the job on it fails its
attempt, the catalog queues it again, and it finishes on the remaining actor with the same
numbers.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pydicom
import pytest

from dicom_node.catalog import dumps
from dicom_node.config import (
    Config,
    DestinationSettings,
    DispatchSettings,
    ModelSettings,
    PipelineSettings,
    StorageSettings,
)
from dicom_node.service import Node
from inference.api import AnalysisRequest, AnalysisSettings, ModelSpec, analyze
from inference.volume import volume_from_datasets
from testbed.node_process import wait_until
from testbed.orthanc import free_port
from testbed.series import write_series
from testbed.tiny_model import make_tiny_model
from tests.helpers.env import IN_CI, require_shared, require_tool

RULES = [{"name": "spine", "when": {}, "pipeline": "spinal_cord", "destinations": ["pacs"]}]
FINISHED = ("dispatching", "retrying", "done", "failed")


def close(a, b, rel: float = 1e-4) -> bool:
    """Same structure, numbers equal within `rel` (two processes may sum floats in another order)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(close(a[k], b[k], rel) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(close(x, y, rel) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), rel_tol=rel, abs_tol=1e-6)
    return a == b


@pytest.fixture()
def cluster(tmp_path: Path, monkeypatch):
    from testbed.ray_cluster import LOOPBACK_ENV, LocalRayCluster

    for key, value in LOOPBACK_ENV.items():  # before `import ray`: it reads them at import
        monkeypatch.setenv(key, value)
    try:
        import ray  # noqa: F401
    except ImportError:
        if IN_CI:
            pytest.fail("ray is required in CI (pip install -e '.[test]')")
        pytest.skip("ray not installed")
    with LocalRayCluster(workers=1, cpus=1) as c:
        yield c


def test_two_actors_same_results_as_local_and_a_lost_worker_is_retried(cluster, tmp_path: Path) -> None:
    require_tool("dciodvfy")
    src = require_shared("lesion-example/t2_fake_lesion.nii.gz")
    model = make_tiny_model(tmp_path / "model", thresholds=(0.5, 1.01), patch=(32, 32, 32))
    series = [write_series(src, tmp_path / f"s{i}", series_description=f"T2 SAG SPINE {i}", uid_seed=f"ray-{i}")
              for i in range(2)]
    # the lost-worker part needs jobs that are surely still running when the machine dies: a
    # full-length sagittal volume takes the tiny model tens of seconds, the crop only a second or two
    big = require_shared("spine-t2-sag/errsm_11/t2.nii.gz")
    series += [write_series(big, tmp_path / f"s{i}", series_description=f"T2 SAG SPINE {i}", uid_seed=f"ray-{i}")
               for i in range(2, 4)]
    settings = AnalysisSettings(PipelineSettings().min_lesion_volume_mm3)  # the node's pipeline setting
    reference = analyze(volume_from_datasets([pydicom.dcmread(f) for f in series[0]]),
                        AnalysisRequest(ModelSpec.parse(str(model)), "cpu", settings))

    cfg = Config(storage=StorageSettings(data_dir=str(tmp_path / "node"), fsync=False),
                 models={"default": ModelSettings(path=str(model))}, routing=RULES,
                 destinations={"pacs": DestinationSettings(port=free_port())},
                 dispatch=DispatchSettings(max_attempts=1, timeout_s=5.0))
    cfg.node.port = 0
    cfg.completion.poll_interval_s = 0.2
    cfg.worker.device, cfg.worker.torch_threads, cfg.worker.poll_interval_s = "cpu", 1, 0.2
    cfg.worker.max_attempts = 3
    cfg.worker.executor = "ray"
    cfg.worker.ray.address, cfg.worker.ray.actors = cluster.address, 2
    node = Node(cfg)
    node.start()
    cat = node.catalog
    try:
        assert {t.name for t in node._threads} >= {"worker", "worker-2"}
        for files in series[:2]:
            for f in files:
                node.store.store(pydicom.dcmread(f), "TEST_MR")
        jobs = wait_until(lambda: [dict(r) for r in cat.query(
            "SELECT id, state, started_at, timings, measurements, reason FROM jobs ORDER BY id")
            if r["state"] in FINISHED and r["measurements"]] if len(cat.query(
                "SELECT 1 FROM jobs WHERE state IN ('dispatching','retrying','done','failed')")) >= 2 else None,
            240, 0.3, "two jobs analysed on Ray")
        assert len(jobs) == 2, jobs
        expected = json.loads(dumps(reference.measurements))
        for job in jobs:
            assert close(json.loads(job["measurements"]), expected), (job["measurements"], expected)
        # both ran at once: each started before the other's inference had ended
        spans = [(j["started_at"],
                  j["started_at"] + sum(json.loads(j["timings"])[k] for k in ("load_s", "inference_s")))
                 for j in jobs]
        assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1], spans

        # a worker machine dies while both actors are busy: the job on it fails its attempt, the
        # catalog queues it again, and it finishes on the surviving actor
        for files in series[2:]:
            for f in files:
                node.store.store(pydicom.dcmread(f), "TEST_MR")
        wait_until(lambda: len(cat.query("SELECT id FROM jobs WHERE state='running'")) == 2, 60, 0.1,
                   "two more jobs running")
        time.sleep(1.5)  # volumes loaded and sent to the actors
        cluster.kill_worker(0)
        rows = wait_until(lambda: (r := [dict(x) for x in cat.query("SELECT * FROM jobs WHERE id > 2 ORDER BY id")])
                          and all(x["state"] in FINISHED and x["measurements"] for x in r) and len(r) == 2 and r,
                          240, 0.3, "both jobs finished after the worker machine was lost")
    finally:
        node.stop()
    assert sorted(r["attempts"] for r in rows) == [1, 2], rows
    # same volume, same model: the retried job's numbers equal those of the job that was not hit
    assert close(json.loads(rows[0]["measurements"]), json.loads(rows[1]["measurements"]))
