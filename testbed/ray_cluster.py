"""A local multi-node Ray cluster on loopback, started with `ray start`, for tests and the bench.

Two `ray start --block` processes, as an operator starts a cluster (README, "Scale-out with
Ray"): a head and `workers` more nodes, each its own GCS/raylet/agent processes, its own
`--temp-dir`, `--num-cpus`, and a custom resource `worker-N: 1` that tells the nodes apart.
Every socket of every node listens on 127.0.0.1; `start` checks that each node registered with
the node IP 127.0.0.1.

Why the two nodes are started differently (Ray 2.60 on Linux):
- The head runs in Ray's local-only mode (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0). In cluster mode
  Ray replaces `--node-ip-address 127.0.0.1` by the machine's reachable address and its GCS and
  raylet listen on all interfaces.
- A worker node must run in cluster mode: in local-only mode `ray start --address` stops with
  "Multi-node Ray clusters are not supported on Windows and OSX. Restart the Ray cluster with
  the environment variable `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1` to proceed anyway." In cluster
  mode Ray rewrites the exact strings `127.0.0.1`, `localhost` and `::1` given as `--address`
  to the machine's address, where the head does not listen ("Failed to connect to GCS at
  address 192.0.2.2:PORT within 5 seconds"). The worker is therefore given the head as
  `LOCALHOST:PORT`: the same loopback name (host names are case-insensitive, it resolves to
  127.0.0.1), which Ray's text comparison does not rewrite; with no `--node-ip-address`, Ray
  takes the node's IP from the route to the head, 127.0.0.1.

The node under test connects by `address` (127.0.0.1:PORT) as it would to a real cluster (its
process needs LOOPBACK_ENV before `import ray`, which reads it at import); Ray attaches a driver
to the head's raylet when several share an IP, so killing a worker node leaves the driver alone.
`kill_worker` kills every process of one worker node with SIGKILL (ray start, raylet, agents
and the raylet's worker processes, i.e. the actors), like a machine that is lost.
`stop` ends every process the cluster started (SIGTERM, then SIGKILL after a few seconds);
it never runs `ray stop`, which would end every Ray process on the machine, other users'
included.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
START_TIMEOUT_S = 180.0  # a node start takes ~5-15 s; much longer on 2 busy cores
STOP_GRACE_S = 5.0  # then SIGKILL: after a node was lost the head's GCS may ignore SIGTERM for 20 s and more
STOP_TIMEOUT_S = 20.0
OBJECT_STORE_BYTES = 300 * 1024 * 1024  # a full-length spine volume is ~20 MB


def _ray_executable() -> str:
    path = Path(sys.executable).parent / "ray"
    found = str(path) if path.is_file() else shutil.which("ray")
    if found is None:
        raise RuntimeError("the `ray` command is not installed (pip install -e '.[test]')")
    return found


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RayNodeProcess:
    """One `ray start --block` process; its children (and theirs) are the node's processes."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], workdir: Path) -> None:
        self.name = name
        self.temp_dir = workdir / name
        self.log_path = workdir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([_ray_executable(), "start", "--block", "--temp-dir", str(self.temp_dir), *args],
                                     env=env, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_started(self, deadline: float) -> None:
        """Until `ray start` says the runtime started; raise with its log if it exits or hangs."""
        while time.monotonic() < deadline:
            if "Ray runtime started." in self.log_path.read_text(errors="replace"):
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray node {self.name} exited ({self.proc.returncode}):\n{self.log_tail()}")
            time.sleep(0.2)
        raise TimeoutError(f"ray node {self.name} did not start in time:\n{self.log_tail()}")

    def process_tree(self) -> list[int]:
        """Every process of this node: `ray start` leads its own session (start_new_session), and
        the raylet, agents and Ray workers (actors) stay in it, even the workers that put
        themselves in a process group of their own or lose their parent when the raylet dies."""
        members = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp session
            except OSError:
                continue  # exited meanwhile
            if int(fields[3]) == self.proc.pid and fields[0] != "Z":
                members.append(int(stat.parent.name))
        return members

    def kill(self, graceful: bool) -> None:
        pids = self.process_tree()
        if graceful:
            _signal(pids, signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE_S
            while time.monotonic() < deadline and (pids := [p for p in pids if _running(p)]):
                self.proc.poll()  # reap `ray start` itself
                time.sleep(0.2)
        _signal(pids, signal.SIGKILL)
        try:
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class LocalRayCluster:
    """A head node and `workers` more nodes, each offering `cpus` CPUs, on 127.0.0.1."""

    def __init__(self, workers: int = 1, cpus: int = 1) -> None:
        self.workers = workers
        self.cpus = cpus
        self.port = 0
        self.head: RayNodeProcess | None = None
        self.worker_nodes: list[RayNodeProcess] = []
        self._workdir: Path | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _env(self, cluster_mode: bool) -> dict[str, str]:
        env = {**os.environ, **LOOPBACK_ENV}
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "1" if cluster_mode else "0"
        env.pop("RAY_ADDRESS", None)
        return env

    def _common_args(self, name: str) -> list[str]:
        return ["--num-cpus", str(self.cpus), "--num-gpus", "0", "--resources", json.dumps({name: 1}),
                "--object-store-memory", str(OBJECT_STORE_BYTES), "--disable-usage-stats"]

    def start(self) -> None:
        # short: Ray's unix sockets live under the temp dir (108-byte path limit)
        self._workdir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
        self.port = _free_port()
        deadline = time.monotonic() + START_TIMEOUT_S
        self.head = RayNodeProcess("head", ["--head", "--node-ip-address", "127.0.0.1", "--port", str(self.port),
                                            "--include-dashboard", "false", *self._common_args("head")],
                                   self._env(cluster_mode=False), self._workdir)
        self.head.wait_started(deadline)
        for i in range(self.workers):
            name = f"worker-{i}"
            node = RayNodeProcess(name, ["--address", f"LOCALHOST:{self.port}", *self._common_args(name)],
                                  self._env(cluster_mode=True), self._workdir)
            self.worker_nodes.append(node)
            node.wait_started(deadline)
        self.wait_for_nodes(deadline)

    def nodes(self) -> list[dict[str, Any]]:
        """The cluster's live nodes as the GCS lists them (`ray.nodes()` from a short-lived driver)."""
        import ray

        ray.init(address=self.address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        try:
            return [n for n in ray.nodes() if n["Alive"]]
        finally:
            ray.shutdown()

    def wait_for_nodes(self, deadline: float) -> None:
        expected = {"head", *(n.name for n in self.worker_nodes)}
        while True:
            nodes = self.nodes()
            names = {k for n in nodes for k in n["Resources"] if k in expected}
            if names == expected and len(nodes) == len(expected):
                not_loopback = [n["NodeManagerAddress"] for n in nodes if n["NodeManagerAddress"] != "127.0.0.1"]
                if not_loopback:
                    raise RuntimeError(f"Ray nodes not on loopback: {not_loopback}")
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"Ray nodes {sorted(names)} registered, expected {sorted(expected)}")
            time.sleep(0.5)

    def kill_worker(self, index: int = 0) -> None:
        """A machine lost: the node's raylet and its workers (actors) are killed, no draining."""
        self.worker_nodes.pop(index).kill(graceful=False)

    def stop(self) -> None:
        for node in self.worker_nodes:
            node.kill(graceful=True)
        self.worker_nodes = []
        if self.head is not None:
            self.head.kill(graceful=True)
            self.head = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> "LocalRayCluster":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
