"""Shared fixtures; the helpers tests import are in tests/helpers/."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.env import require_shared


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return require_shared("")
