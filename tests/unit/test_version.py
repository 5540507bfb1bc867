"""The version has one source, pyproject.toml; what runs reports that one."""
from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import pytest

from dicom_node import cli
from inference import version

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"

# Literal copies in files another branch is rewriting now (issue 19); they are to call
# inference.version.package_version(). The lead empties this set after merging them.
KNOWN_PENDING: set[str] = set()  # files allowed a literal: none


def test_runtime_version_is_pyprojects() -> None:
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads pyproject.toml")
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    assert project["name"] == version.DIST_NAME
    assert version.package_version() == project["version"], (
        "the installed package metadata is stale: run `pip install -e .` after changing pyproject.toml's version")


def test_cli_reports_it(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        cli.main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"dicom-node {version.package_version()}"


def test_without_metadata_the_version_says_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    def absent(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(version.importlib.metadata, "version", absent)
    version.package_version.cache_clear()
    try:
        assert version.package_version() == version.UNKNOWN == "0+unknown"
    finally:
        version.package_version.cache_clear()


def test_no_version_literal_outside_pyproject() -> None:
    """Code takes the version from package_version(); a literal copy would drift."""
    literal = re.compile(r"""(SoftwareVersions|software_version|SOFTWARE_VERSION|__version__)\s*=\s*["'][0-9]""")
    root = PYPROJECT.parent
    found = [f"{p.relative_to(root)}:{n}"
             for pkg in ("dicom_node", "inference", "testbed") for p in sorted((root / pkg).rglob("*.py"))
             if p.relative_to(root).as_posix() not in KNOWN_PENDING
             for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if literal.search(line)]
    assert not found, f"version literals (use inference.version.package_version()): {found}"
