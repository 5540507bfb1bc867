"""inference.heap: freed blocks are reused between tiles and cases (no fresh pages), given back when idle.

Each check runs in a fresh interpreter: the allocator settings are per process and must be made
before threads start, as the console script does.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from tests.helpers.env import REPO

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the heap settings are for glibc; other allocators are left alone")

# Five forwards of a small U-Net-like network (activations of 60-250 MB, 1x48x128x160 input) in a
# worker thread, each as one case inside heap.busy() as engine.segment runs it; page faults of the
# process per forward, RSS right after the cases and once idle past RELEASE_AFTER_S.
SCRIPT = r"""
import json, os, resource, threading, time
from inference import heap
heap.RELEASE_AFTER_S = 0.3
applied = False if os.environ.get("SKIP_CONFIGURE") else heap.configure()
import torch

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20

def block(cin, cout, stride=1):
    return torch.nn.Sequential(torch.nn.Conv3d(cin, cout, 3, stride, 1), torch.nn.InstanceNorm3d(cout, affine=True),
                               torch.nn.LeakyReLU(0.01, inplace=True))

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.enc0, self.enc1 = block(1, 16), block(16, 32, 2)
        self.up = torch.nn.ConvTranspose3d(32, 16, 2, 2)
        self.dec0, self.head = block(32, 16), torch.nn.Conv3d(16, 2, 1)

    def forward(self, x):
        s = self.enc0(x)
        return self.head(self.dec0(torch.cat([s, self.up(self.enc1(s))], 1)))

torch.manual_seed(0)
net = Net().eval()
out = {"applied": applied, "faults": []}
def work():
    x = torch.randn(1, 1, 48, 128, 160)
    with torch.inference_mode():
        for _ in range(5):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            with heap.busy():
                net(x)
            out["faults"].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
t = threading.Thread(target=work)
t.start(); t.join()
out["rss_after_cases_mb"] = rss_mb()
time.sleep(1.5)  # past RELEASE_AFTER_S with no case running: the timer trims the heap
out["rss_idle_mb"] = rss_mb()
print(json.dumps(out))
"""


def run(env_extra: dict[str, str]) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "DICOM_NODE_HEAP"}
    env.update(env_extra)
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def steady_faults(out: dict) -> int:
    return sum(out["faults"][1:])  # after the first forward, which maps the memory it needs


def test_configured_heap_reuses_freed_blocks_and_release_gives_them_back():
    system = run({"DICOM_NODE_HEAP": "system"})
    out = run({})
    assert out["applied"] is True and system["applied"] is False
    assert min(system["faults"][1:]) > 100_000, system  # glibc's default: fresh pages on every forward
    assert steady_faults(out) < 0.15 * steady_faults(system), (out, system)  # mostly reused
    assert out["rss_after_cases_mb"] - out["rss_idle_mb"] > 100, out  # given back once idle


def test_child_env_gives_a_process_started_with_it_the_same_heap():
    from inference import heap

    env = heap.child_env()
    assert env["MALLOC_ARENA_MAX"] == "1"
    system = run({"DICOM_NODE_HEAP": "system"})
    # the child does not call configure (what a Ray actor's process is like): the environment alone acts
    out = run({**env, "SKIP_CONFIGURE": "1"})
    assert out["applied"] is False
    assert steady_faults(out) < 0.15 * steady_faults(system), (out, system)
    assert out["rss_after_cases_mb"] - out["rss_idle_mb"] > 100, out  # trimmed when idle there too
