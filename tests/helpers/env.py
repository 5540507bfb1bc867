"""Where the real data and the peer programs are, and the rule that CI never skips a peer."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = (REPO.parent / "shared" / "data").resolve()
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_tool(name: str) -> str:
    """Path of a peer program; skip locally when missing, but fail in CI (no integration test may skip)."""
    path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    if path is None:
        if IN_CI:
            pytest.fail(f"{name} is required in CI (install dcmtk, orthanc, dicom3tools: make peers)")
        pytest.skip(f"{name} not installed")
    return path


def require_shared(rel: str) -> Path:
    """A file or folder of ../shared/data; fails in CI if absent."""
    path = SHARED_DATA / rel
    if not path.exists():
        if IN_CI:
            pytest.fail(f"{path} is required in CI")
        pytest.skip(f"{path} not available")
    return path


def assert_runs_without_torch(code: str) -> None:
    """Run `code` in a fresh interpreter at the repo root; it must pass and leave torch unimported.

    Why a subprocess: this test process has imported torch long ago, so only a fresh
    interpreter can show that a code path (config load, /health) does not pull it in.
    """
    import subprocess
    import sys

    code += "\nimport sys\nassert 'torch' not in sys.modules, 'this path imported torch'\n"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
