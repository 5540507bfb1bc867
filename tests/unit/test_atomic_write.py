"""`inference.files.atomic_write`: the one write-to-temp / fsync / rename for whole-or-absent files."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from inference import files
from inference.files import atomic_write, replaced_atomically


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count os.fsync calls (still fsyncing for real)."""
    calls: list[int] = []
    real = os.fsync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(files.os, "fsync", counting)
    return calls


@pytest.mark.parametrize("data", [b"\x00new bytes", "new text", lambda p: p.write_bytes(b"by a writer")])
def test_writes_the_whole_file_and_leaves_no_temp(tmp_path: Path, data, fsyncs: list[int]) -> None:
    target = tmp_path / "sub" / "out.nii.gz"
    assert atomic_write(target, data) == target
    expected = data.encode() if isinstance(data, str) else data if isinstance(data, bytes) else b"by a writer"
    assert target.read_bytes() == expected
    assert os.listdir(target.parent) == ["out.nii.gz"]
    assert len(fsyncs) == 2, "the file and then its folder are fsynced by default"


@pytest.mark.parametrize("stage", ["writer", "rename"])
def test_an_error_mid_write_leaves_the_old_file_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           stage: str) -> None:
    target = tmp_path / "result.dcm"
    target.write_bytes(b"old")
    seen: list[Path] = []

    def half_then_fail(tmp: Path) -> None:
        seen.append(tmp)
        tmp.write_bytes(b"half")
        if stage == "writer":
            raise OSError("disk full")

    if stage == "rename":
        def failing_replace(src: object, dst: object) -> None:
            raise OSError("rename refused")
        monkeypatch.setattr(files.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full|rename refused"):
        atomic_write(target, half_then_fail)
    assert seen and seen[0].parent == tmp_path and seen[0].name.startswith(".result.")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["result.dcm"], "the temporary file must be removed"


def test_an_error_writing_bytes_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_fsync(fd: int) -> None:
        raise OSError("I/O error")

    monkeypatch.setattr(files.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="I/O error"):
        atomic_write(tmp_path / "a.json", "{}")
    assert os.listdir(tmp_path) == []


def test_fsync_off_and_folder_fsync_off(tmp_path: Path, fsyncs: list[int]) -> None:
    atomic_write(tmp_path / "a.bin", b"x", fsync=False)
    assert fsyncs == []
    atomic_write(tmp_path / "b.bin", b"x", fsync_folder=False)
    assert len(fsyncs) == 1, "only the file: its folder is left to the caller (the store's group commit)"


def test_temp_names_keep_the_suffixes_or_take_the_callers(tmp_path: Path) -> None:
    names: list[str] = []
    atomic_write(tmp_path / "case.nii.gz", lambda tmp: names.append(tmp.name) or tmp.write_bytes(b""))
    atomic_write(tmp_path / "x.dcm", lambda tmp: names.append(tmp.name) or tmp.write_bytes(b""), temp_suffix=".tmp")
    assert names[0].startswith(".case.") and names[0].endswith(".partial.nii.gz")
    assert names[1].startswith(".x.dcm.") and names[1].endswith(".tmp")


def test_make_parents_false_leaves_a_missing_folder_to_the_caller(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        atomic_write(tmp_path / "gone" / "x.dcm", b"x", make_parents=False)
    assert not (tmp_path / "gone").exists()


def test_with_form_is_fsynced_too(tmp_path: Path, fsyncs: list[int]) -> None:
    with replaced_atomically(tmp_path / "m.json") as tmp:
        tmp.write_text("{}")
    assert (tmp_path / "m.json").read_text() == "{}" and len(fsyncs) == 2
