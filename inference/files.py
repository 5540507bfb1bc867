"""Output files that are either whole or absent: written under a temporary name, then renamed.

Why: `dicom-node segment` is run on whole cohorts and may be stopped at any moment; a reader
(or a re-run that skips finished cases) must never take a truncated NIfTI or JSON for a result.
"""
from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def replaced_atomically(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path`, with the same suffixes (writers that go by the extension,
    like nibabel's, still see .nii.gz); renamed onto `path` when the block ends without error,
    deleted otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffixes = "".join(path.suffixes)
    stem = path.name[: len(path.name) - len(suffixes)] if suffixes else path.name
    tmp = path.with_name(f".{stem}.{uuid.uuid4().hex[:12]}.partial{suffixes}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomically(path: str | Path, text: str) -> Path:
    """`path.write_text(text)`, whole or not at all."""
    with replaced_atomically(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
