"""Every bench/ script starts as the README runs it: `python bench/NAME.py` (issue 23, item 7).

Why: a script's own folder is the first entry of sys.path, so a bench file named like one of our
packages (bench/inference.py once) shadows it, and the script fails at its first lazy import of
that package, long after `--help` would have passed.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = sorted((REPO / "bench").glob("*.py"))
PACKAGES = ("inference", "dicom_node", "testbed", "tests")


def test_no_bench_file_shadows_a_package_of_ours() -> None:
    names = {p.stem for p in (REPO / "bench").iterdir() if p.suffix == ".py" or p.is_dir()}
    assert not names & set(PACKAGES), f"bench/ holds {sorted(names & set(PACKAGES))}: rename it"
    probe = ("import sys; sys.path.insert(0, %r); import inference.volume, testbed.series, "
             "testbed.demo" % str(REPO / "bench"))
    proc = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_bench_script_help_runs(script: Path) -> None:
    proc = subprocess.run([sys.executable, str(script), "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout
