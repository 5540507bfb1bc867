"""Series per minute through the node's worker: local executor vs Ray with 1 and 2 actors.

The same fixed set of series (the bundled lesion example written as N DICOM series) goes
into a fresh node each round; the clock runs from the first job created to the last job with
results (SEG + SR written and validated). Dispatch is left out (destination unreachable,
one attempt). The Ray cluster is two loopback nodes with one CPU each (testbed/ray_cluster.py);
each actor runs torch with one thread. Model: --model FOLDER, else the tiny random-weight test
model (then the numbers measure the pipeline around inference more than inference).

    .venv/bin/python bench/ray_throughput.py --series 6
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from testbed.ray_cluster import LOOPBACK_ENV  # noqa: E402

for _k, _v in LOOPBACK_ENV.items():  # before anything imports ray
    os.environ.setdefault(_k, _v)

import pydicom  # noqa: E402

from dicom_node.config import Config, DestinationSettings, DispatchSettings, ModelSettings, StorageSettings  # noqa: E402
from dicom_node.service import Node  # noqa: E402
from testbed.orthanc import free_port  # noqa: E402

RULES = [{"name": "spine", "when": {}, "pipeline": "spinal_cord", "destinations": ["pacs"]}]
READY = ("dispatching", "retrying", "done", "failed")


def run_round(series: list[list[Path]], model: Path, work: Path, executor: str, actors: int,
              address: str) -> dict[str, float]:
    cfg = Config(storage=StorageSettings(data_dir=str(work), fsync=False),
                 models={"default": ModelSettings(path=str(model))}, routing=RULES,
                 destinations={"pacs": DestinationSettings(port=free_port())},
                 dispatch=DispatchSettings(max_attempts=1, timeout_s=2.0))
    cfg.node.port = 0
    cfg.completion.poll_interval_s = 0.1
    cfg.worker.device, cfg.worker.torch_threads, cfg.worker.poll_interval_s = "cpu", 1, 0.1
    cfg.worker.executor = executor
    cfg.worker.ray.address, cfg.worker.ray.actors = address, actors
    node = Node(cfg)
    node.start()
    try:
        for files in series:
            for f in files:
                node.store.store(pydicom.dcmread(f), "BENCH")
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            rows = node.catalog.query("SELECT state, created_at, started_at, timings FROM jobs")
            if len(rows) == len(series) and all(r["state"] in READY and r["timings"] for r in rows):
                break
            time.sleep(0.2)
        else:
            raise TimeoutError(f"{executor}/{actors}: jobs not finished")
        failed = node.catalog.query("SELECT reason FROM jobs WHERE measurements IS NULL")
        if failed:
            raise RuntimeError(f"{executor}/{actors}: job failed: {failed[0][0]}")
        start = min(r["created_at"] for r in rows)
        end = max(results_ready(r) for r in rows)
        infer = sum(json.loads(r["timings"])["inference_s"] for r in rows) / len(rows)
        return {"seconds": end - start, "series_per_min": 60.0 * len(series) / (end - start),
                "mean_inference_s": infer}
    finally:
        node.stop()


def results_ready(row) -> float:
    """When the job's SEG + SR were written and validated: start of its run + its stages."""
    t = json.loads(row["timings"])
    return float(row["started_at"]) + t["load_s"] + t["inference_s"] + t["encode_s"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", type=int, default=6)
    ap.add_argument("--model", help="model folder (default: the tiny random-weight test model)")
    args = ap.parse_args()

    from testbed.demo import SAMPLE_DIR
    from testbed.ray_cluster import LocalRayCluster
    from testbed.series import write_series
    from testbed.tiny_model import make_tiny_model

    tmp = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    model = Path(args.model) if args.model else make_tiny_model(tmp / "model", thresholds=(0.5, 1.01),
                                                                 patch=(32, 32, 32))
    series = [write_series(SAMPLE_DIR / "t2_fake_lesion.nii.gz", tmp / f"s{i}", series_description=f"T2 SPINE {i}",
                           uid_seed=f"bench-{i}") for i in range(args.series)]
    print(f"{args.series} series of {len(series[0])} instances; model {model}; {os.cpu_count()} CPUs on this machine")
    results = {"local": run_round(series, model, tmp / "local", "local", 1, "")}
    with LocalRayCluster(workers=1, cpus=1) as cluster:
        for actors in (1, 2):
            results[f"ray-{actors}"] = run_round(series, model, tmp / f"ray{actors}", "ray", actors, cluster.address)
    for name, r in results.items():
        print(f"{name:<8} {r['seconds']:7.1f} s  {r['series_per_min']:6.2f} series/min  "
              f"mean inference {r['mean_inference_s']:.2f} s")
    print(f"ray 2 actors / 1 actor: {results['ray-2']['series_per_min'] / results['ray-1']['series_per_min']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
