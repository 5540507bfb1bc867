"""The node as a separate process (`dicom-node serve`): for the demo, the benches, and tests that
kill -9 it or use its CLI.

The config is the default one with loopback ports, Orthanc as the destination and a scratch
data dir (node_config, as `dicom-node demo` runs it), plus the tiny random-weight model for
tests (tiny_node_config). Every process NodeProcess starts is stopped by the context manager,
whatever happens.
"""
from __future__ import annotations

import copy
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from dicom_node.config import DEFAULT_CONFIG
from testbed.orthanc import LocalOrthanc, free_port

REPO = Path(__file__).resolve().parent.parent


def node_config(workdir: Path, pacs: LocalOrthanc, device: str) -> Path:
    """The default config with loopback ports, a scratch data dir and Orthanc as the destination."""
    cfg = yaml.safe_load(DEFAULT_CONFIG.read_text())
    cfg["node"]["port"] = free_port()
    cfg["storage"]["data_dir"] = str(workdir / "node")
    cfg["completion"]["idle_seconds"] = 5.0
    cfg["completion"]["poll_interval_s"] = 0.5
    cfg["worker"]["device"] = device
    cfg["worker"]["poll_interval_s"] = 0.5
    cfg["destinations"]["pacs"].update(ae_title=pacs.ae_title, host="127.0.0.1", port=pacs.dicom_port)
    cfg["dispatch"]["backoff_initial_s"] = 1.0
    path = workdir / "node.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def start_node(config: Path, log_path: Path) -> tuple[subprocess.Popen[str], int]:
    """`dicom-node serve` in a child process, returned with its DICOM port once it accepts associations."""
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "dicom_node.cli", "serve", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=log, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "READY AE host:port" once the listener accepts associations
    if not line.startswith("READY"):
        proc.kill()
        raise RuntimeError(f"node did not start; see {log_path}")
    return proc, int(line.split(":")[-1])


def tiny_node_config(workdir: Path, pacs: LocalOrthanc, *, also_to: dict[str, LocalOrthanc] | None = None,
                     **overrides: dict[str, Any]) -> Path:
    """node_config with the tiny model; `overrides` update sections (dispatch={...}). `also_to` adds
    destinations (name -> Orthanc, set up as "pacs" is) that every rule sending to "pacs" also sends to."""
    from testbed.tiny_model import make_tiny_model  # torch: only when a model is made

    workdir.mkdir(parents=True, exist_ok=True)
    model = make_tiny_model(workdir / "model", thresholds=(0.5, 1.01), patch=(32, 32, 32))
    path = node_config(workdir, pacs, "cpu")
    cfg = yaml.safe_load(path.read_text())
    cfg["models"]["default"]["path"] = str(model)
    cfg["worker"]["torch_threads"] = 1  # two shared cores: be gentle
    for name, other in (also_to or {}).items():
        cfg["destinations"][name] = copy.deepcopy(cfg["destinations"]["pacs"])
        cfg["destinations"][name].update(ae_title=other.ae_title, host="127.0.0.1", port=other.dicom_port)
        for rule in cfg["routing"]:
            if "pacs" in rule["destinations"]:
                rule["destinations"].append(name)
    for section, values in overrides.items():
        cfg[section].update(values)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


class NodeProcess:
    """`dicom-node serve --config CONFIG` in a child process; start, kill -9, restart, stop."""

    def __init__(self, config: Path, log_dir: Path) -> None:
        self.config = config
        self.log_dir = log_dir
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.starts = 0

    def start(self) -> int:
        self.starts += 1
        self.proc, self.port = start_node(self.config, self.log_dir / f"node-{self.starts}.log")
        return self.port

    def kill9(self) -> None:
        """SIGKILL: no handler runs, nothing is flushed; as a power cut for the process."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def log(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-200_000:] for p in sorted(self.log_dir.glob("node-*.log")))

    def __enter__(self) -> "NodeProcess":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def catalog_query(catalog: Path, sql: str, args: tuple = ()) -> list[tuple]:
    """Read the node's catalog from outside (another process, read-only, WAL-safe)."""
    con = sqlite3.connect(f"file:{catalog}?mode=ro", uri=True, timeout=10)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def wait_until(check: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll `check` until it returns something truthy; bounded in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except sqlite3.OperationalError:  # catalog not created yet / busy
            value = None
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached within {timeout:.0f} s")


def cli(config: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`dicom-node ARGS --config CONFIG` as the operator runs it."""
    cmd = [sys.executable, "-m", "dicom_node.cli", *args, "--config", str(config)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
