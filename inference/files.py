"""Files that are either whole or absent: written under a temporary name, fsynced, then renamed.

Why: the node acknowledges instances and publishes results, and `dicom-node segment` is run on
whole cohorts and may be stopped at any moment; a reader (or a re-run that skips finished
cases) must never take a truncated DICOM, NIfTI, checkpoint or JSON for a whole one, and after
a power cut a renamed file must not turn out empty. This module is the one implementation of
that write-to-temp / fsync / rename / fsync-folder sequence; it lives in `inference` (the lowest
layer) so `dicom_node` uses it too.
"""
from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Union

Writer = Callable[[Path], None]
Data = Union[bytes, bytearray, memoryview, str, Writer]


def fsync_dir(path: str | Path) -> None:
    """Make a folder's entries (files created, renamed or deleted in it) durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path_beside(path: Path, temp_suffix: str | None = None) -> Path:
    """A unique hidden name in `path`'s folder.

    By default it ends in ``.partial`` plus the target's own suffixes (writers that pick the
    format by extension, like nibabel's or PIL's, still see .nii.gz / .png); a caller whose crash
    clean-up sweeps a pattern passes its own ending (the instance store: ``.tmp``).
    """
    if temp_suffix is None:
        suffixes = "".join(path.suffixes)
        stem = path.name[: len(path.name) - len(suffixes)] if suffixes else path.name
        return path.with_name(f".{stem}.{uuid.uuid4().hex[:12]}.partial{suffixes}")
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}{temp_suffix}")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def replaced_atomically(path: str | Path, *, fsync: bool = True, fsync_folder: bool | None = None,
                        make_parents: bool = True, temp_suffix: str | None = None) -> Iterator[Path]:
    """The `with` form of `atomic_write`: yields the temporary path to write; when the block ends
    without error the file is fsynced and renamed onto `path`, otherwise it is deleted."""
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_beside(path, temp_suffix)
    try:
        yield tmp
        _commit(tmp, path, fsync, fsync_folder, synced=False)
    finally:
        tmp.unlink(missing_ok=True)


def _commit(tmp: Path, path: Path, fsync: bool, fsync_folder: bool | None, synced: bool) -> None:
    if fsync and not synced:
        _fsync_file(tmp)
    os.replace(tmp, path)
    if fsync if fsync_folder is None else fsync_folder:
        fsync_dir(path.parent)


def atomic_write(path: str | Path, data: Data, *, fsync: bool = True, fsync_folder: bool | None = None,
                 make_parents: bool = True, temp_suffix: str | None = None) -> Path:
    """Write `data` to `path` whole or not at all; returns `path`.

    `data` is bytes, str (UTF-8) or a callable that writes the file at the path it is given
    (for writers that need a path or a file: torch.save, pydicom, nibabel, sqlite). The file is
    written under a temporary name in the same folder, fsynced, renamed onto `path` (atomic on
    POSIX) and the folder fsynced. On any error the temporary file is removed and the error
    re-raised; an existing `path` is left as it was.

    `fsync=False` skips both fsyncs (tests, benchmarks); `fsync_folder=False` skips only the
    folder's, for a caller that fsyncs the folder once for many files (the instance store's
    group commit). `make_parents=False` leaves creating the folder to the caller (a missing one
    raises FileNotFoundError).
    """
    path = Path(path)
    if callable(data):
        with replaced_atomically(path, fsync=fsync, fsync_folder=fsync_folder,
                                 make_parents=make_parents, temp_suffix=temp_suffix) as tmp:
            data(tmp)
        return path
    payload = data.encode("utf-8") if isinstance(data, str) else data
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_beside(path, temp_suffix)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view):]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        _commit(tmp, path, fsync, fsync_folder, synced=True)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text_atomically(path: str | Path, text: str) -> Path:
    """`path.write_text(text)`, whole or not at all (UTF-8, fsynced)."""
    return atomic_write(path, text)
