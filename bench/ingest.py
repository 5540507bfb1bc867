"""Ingest benchmark: our node (fsync on) against dcmtk storescp, same stock storescu load.

Sends N real-size MR images (256x256 16-bit, ~265 KB with the Siemens header; --columns 512
for ~390 KB; made from the real Siemens series with new UIDs and fresh noise) with 1 and with
P parallel storescu associations, and prints instances/s, p50/p95
per-instance latency as the sender sees it (storescu's own timestamps from "Sending Store
Request" to "Received Store Response"), and the node/storescp ratio.

storescp does not fsync; the node fsyncs each file, its folder and the catalog commit before
it answers, so this measures what durability costs next to a plain receiver.

    .venv/bin/python bench/ingest.py [--images 350] [--parallel 8] [--rounds 3] [--columns 256]
"""
from __future__ import annotations

import argparse
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO.parent / "shared" / "data" / "dicom" / "dcm_qa_decubitus_HFS_t1_sag"
AET = "SPINE_NODE"
LOG_CONFIG = """log4cplus.rootLogger = INFO, console
log4cplus.appender.console = log4cplus::ConsoleAppender
log4cplus.appender.console.layout = log4cplus::PatternLayout
log4cplus.appender.console.layout.ConversionPattern = %D{%s.%q} %m%n
"""
LINE = re.compile(r"^(\d+\.\d+) (Sending Store Request|Received Store Response) ?(.*)$")


@dataclass
class Result:
    server: str
    parallel: int
    images: int
    seconds: float
    latencies: list[float]
    stored: int
    failures: int

    @property
    def rate(self) -> float:
        return self.images / self.seconds

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1000 if self.latencies else float("nan")


def make_images(out: Path, n: int, columns: int = 256) -> list[Path]:
    """n single-frame MR images of one series, 256 rows x `columns` uint16, each with its own UIDs."""
    sources = sorted(SOURCE.glob("*.dcm"))
    if not sources:
        sys.exit(f"bench: no DICOM files in {SOURCE} (the shared real data is needed)")
    out.mkdir(parents=True, exist_ok=True)
    study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        ds = pydicom.dcmread(sources[i % len(sources)])
        pixels = ds.pixel_array.astype(np.uint16)
        wide = np.concatenate([pixels, pixels[:, ::-1]], axis=1)[:, :columns]
        wide = (wide + rng.integers(0, 4, wide.shape, dtype=np.uint16)).astype(np.uint16)
        ds.Rows, ds.Columns = wide.shape
        ds.PixelData = wide.tobytes()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        path = out / f"img{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port} after {timeout} s")


def send(port: int, files: list[Path], parallel: int, work: Path) -> tuple[float, list[float], int]:
    """Stock storescu, `parallel` processes each with its share; returns (seconds, latencies, failures)."""
    cfg = work / "storescu-log.cfg"
    cfg.write_text(LOG_CONFIG)
    shares = [files[i::parallel] for i in range(parallel)]
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            ["storescu", "-lc", str(cfg), "-aec", AET, "127.0.0.1", str(port), *map(str, share)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for share in shares
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    seconds = time.perf_counter() - start
    latencies, failures = [], 0
    for out, proc in zip(outputs, procs):
        failures += proc.returncode != 0
        sent_at = None
        for line in out.splitlines():
            m = LINE.match(line.strip())
            if not m:
                continue
            if m.group(2) == "Sending Store Request":
                sent_at = float(m.group(1))
            elif sent_at is not None:
                latencies.append(float(m.group(1)) - sent_at)
                failures += "(Success)" not in m.group(3)
                sent_at = None
    return seconds, latencies, failures


def bench_node(files: list[Path], parallel: int, work: Path) -> Result:
    from dicom_node.catalog import Catalog
    from dicom_node.config import Config
    from dicom_node.scp import StorageSCP
    from dicom_node.store import InstanceStore

    cfg = Config()
    cfg.node.ae_title, cfg.node.port = AET, 0
    data = work / "node"
    catalog = Catalog(data / "catalog.sqlite")
    scp = StorageSCP(cfg, InstanceStore(data, catalog, fsync=True))
    scp.start()
    try:
        seconds, lat, failures = send(scp.port, files, parallel, work)
    finally:
        scp.stop()
    stored = catalog.query("SELECT COUNT(*) FROM instances")[0][0]
    catalog.close()
    return Result("node", parallel, len(files), seconds, lat, stored, failures)


def bench_storescp(files: list[Path], parallel: int, work: Path, extra: list[str]) -> Result:
    out = work / "storescp"
    out.mkdir()
    port = free_port()
    # --fork: one process per association, else storescp serves them one at a time
    proc = subprocess.Popen(["storescp", "--fork", "-aet", AET, "-od", str(out), *extra, str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port)
        seconds, lat, failures = send(port, files, parallel, work)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    stored = sum(1 for p in out.iterdir() if p.is_file())
    return Result("storescp" + (" " + " ".join(extra) if extra else ""), parallel, len(files), seconds, lat,
                  stored, failures)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=350)
    ap.add_argument("--parallel", type=int, default=8, help="parallel associations for the second load")
    ap.add_argument("--columns", type=int, default=256, choices=(256, 384, 512), help="image width")
    ap.add_argument("--rounds", type=int, default=3, help="repeat each case, report the median-rate round")
    ap.add_argument("--storescp-args", default="", help="extra storescp options, e.g. '--max-pdu 131072'")
    args = ap.parse_args(argv)
    for tool in ("storescu", "storescp"):
        if shutil.which(tool) is None:
            sys.exit(f"bench: {tool} not found (apt-get install dcmtk)")
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        files = make_images(root / "images", args.images, args.columns)
        size = sum(p.stat().st_size for p in files) / len(files) / 1024
        print(f"{len(files)} images, {size:.0f} KB each (made in {time.perf_counter() - t0:.1f} s)")
        print(f"{'server':<28}{'assoc':>6}{'img/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'stored':>8}{'fail':>6}")
        best: dict[tuple[str, int], Result] = {}
        for parallel in (1, args.parallel):
            for server in ("node", "storescp"):
                runs = []
                for r in range(args.rounds):
                    work = root / f"{server}-{parallel}-{r}"
                    work.mkdir()
                    res = (bench_node(files, parallel, work) if server == "node"
                           else bench_storescp(files, parallel, work, args.storescp_args.split()))
                    shutil.rmtree(work, ignore_errors=True)
                    runs.append(res)
                res = sorted(runs, key=lambda x: x.rate)[len(runs) // 2]
                best[(server, parallel)] = res
                print(f"{res.server:<28}{parallel:>6}{res.rate:>9.1f}{res.pct(50):>9.1f}{res.pct(95):>9.1f}"
                      f"{res.stored:>8}{res.failures:>6}   rounds: "
                      + ", ".join(f"{x.rate:.0f}" for x in runs))
        for parallel in (1, args.parallel):
            node, peer = best[("node", parallel)], best[("storescp", parallel)]
            print(f"{parallel} association(s): node/storescp throughput ratio {node.rate / peer.rate:.2f}, "
                  f"p95 latency ratio {node.pct(95) / peer.pct(95):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
