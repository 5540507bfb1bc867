"""A local multi-node Ray cluster on loopback for tests and the bench.

Why not two `ray start` commands: Ray turns 127.0.0.1 into the machine's reachable address,
and a node joining by `ray start --address` refuses the single-machine mode that keeps
loopback, so that way the cluster would listen on the network. Ray's own `cluster_utils.Cluster`
starts the same processes (a GCS, and one raylet per node, each its own process with its own
workers) with every port on 127.0.0.1. The node under test connects to it by address, as it
would to a real cluster; `kill_worker` ends one node's processes (-9) like a lost machine.
LOOPBACK_ENV must be set before `import ray` (it is read at import).
"""
from __future__ import annotations

import os
from typing import Any

LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


class LocalRayCluster:
    """A head node and `workers` more nodes, each offering `cpus` CPUs, on 127.0.0.1."""

    def __init__(self, workers: int = 1, cpus: int = 1) -> None:
        self.workers = workers
        self.cpus = cpus
        self._cluster: Any = None
        self.worker_nodes: list[Any] = []

    @property
    def address(self) -> str:
        return str(self._cluster.address)

    def start(self) -> None:
        for key, value in LOOPBACK_ENV.items():
            os.environ.setdefault(key, value)
        from ray.cluster_utils import Cluster

        self._cluster = Cluster(initialize_head=True,
                                head_node_args={"num_cpus": self.cpus, "num_gpus": 0, "include_dashboard": False})
        self.worker_nodes = [self._cluster.add_node(num_cpus=self.cpus, num_gpus=0) for _ in range(self.workers)]
        self._cluster.wait_for_nodes(timeout=120)
        if not self.address.startswith("127.0.0.1:"):
            raise RuntimeError(f"Ray cluster is not on loopback ({self.address}): set {LOOPBACK_ENV} before import ray")

    def kill_worker(self, index: int = 0) -> None:
        """A machine lost: the node's raylet and its workers (actors) are killed, no draining."""
        node = self.worker_nodes.pop(index)
        self._cluster.remove_node(node, allow_graceful=False)

    def stop(self) -> None:
        if self._cluster is not None:
            self._cluster.shutdown()
            self._cluster = None

    def __enter__(self) -> "LocalRayCluster":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
