"""The software version, from one place: pyproject.toml's `version`, read through the installed
package's metadata.

Why: the version goes into every SEG/SR (SoftwareVersions) and `dicom-node --version`; spelled in
several files it drifts. Here (the lowest layer) so both `inference` and `dicom_node` can use it.
"""
from __future__ import annotations

import importlib.metadata
import logging
from functools import lru_cache

DIST_NAME = "spine-dicom-node"  # [project] name in pyproject.toml
UNKNOWN = "0+unknown"  # PEP 440-valid, sorts below every release, and says what it is

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def package_version() -> str:
    """pyproject.toml's version as installed (`pip install -e .` or a wheel).

    Without package metadata (the sources run from a bare checkout or copy, never installed)
    this returns UNKNOWN, logged once, rather than raising: the node and the tools still work, and
    the marker shows in SoftwareVersions and --version instead of a plausible but invented
    number. A stale editable install (pyproject bumped since) is caught by tests/unit/test_version.py.
    """
    try:
        return importlib.metadata.version(DIST_NAME)
    except importlib.metadata.PackageNotFoundError:
        log.warning("package %s is not installed (no metadata): version reported as %s; "
                    "run `pip install -e .` in the checkout", DIST_NAME, UNKNOWN)
        return UNKNOWN
