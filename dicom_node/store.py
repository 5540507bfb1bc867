"""Durable instance storage: what the node acknowledges is on disk and in the catalog first.

Each instance is written as a DICOM Part-10 file to a temporary name in its final folder,
fsynced, renamed over the final name (atomic on POSIX), the folder fsynced, and only then
recorded in the catalog. A crash before the catalog commit leaves at most an orphan file that
a re-send overwrites; a crash after it loses nothing. Paths come from validated UIDs or from
a hash of the raw value, never from raw DICOM text.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite, write_file_meta_info
from pydicom.multival import MultiValue
from pydicom.uid import RE_VALID_UID, ExplicitVRLittleEndian

from dicom_node.catalog import Catalog

LOGGER = logging.getLogger(__name__)

PREAMBLE = b"\x00" * 128 + b"DICM"


class InvalidInstance(ValueError):
    """The dataset cannot be stored: a required identifier is missing (maps to status 0xC000)."""


@dataclass(frozen=True)
class StoredInstance:
    """What was stored: identifiers, where (relative to data_dir) and what the catalog now says."""

    sop_instance_uid: str
    sop_class_uid: str
    series_uid: str
    study_uid: str
    path: Path  # relative to data_dir
    size: int
    sha256: str
    new: bool  # False: a re-send of an instance already held
    reopened: bool  # a late instance re-opened a complete/routed series
    generation: int


def path_component(value: str) -> str:
    """A file-name-safe component for a UID: the UID itself when valid, else its SHA-256 hex.

    pydicom's UID validity (digits and dots, no leading zeros, at most 64 characters) rules
    out '/', '..' and every other hostile spelling.
    """
    if len(value) <= 64 and re.fullmatch(RE_VALID_UID, value):
        return value
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()


def expected_instances(ds: Dataset) -> int | None:
    """How many instances the series should hold, when the header says so; else None (idle).

    Classic MR: ImagesInAcquisition, times NumberOfTemporalPositions when > 1 (vendors differ
    on whether the count is per position; over-estimating only falls back to the idle timeout,
    under-estimating would process a partial series). Multi-frame (Enhanced MR, SEG, ...): one
    instance carries the frames, unless a concatenation says how many instances there are.
    """
    def as_int(keyword: str) -> int | None:
        try:
            value = ds.get(keyword)
            return int(value) if value not in (None, "") else None
        except (TypeError, ValueError):
            return None

    frames = as_int("NumberOfFrames")
    if frames is not None and frames > 1:
        total = as_int("InConcatenationTotalNumber")
        return total if total and total > 0 else 1
    images = as_int("ImagesInAcquisition")
    if images is None or images <= 0:
        return None
    positions = as_int("NumberOfTemporalPositions")
    return images * positions if positions and positions > 1 else images


def _text(ds: Dataset, keyword: str) -> str:
    try:
        value = ds.get(keyword, "")
    except Exception:  # a malformed optional value must not stop storage
        return ""
    if isinstance(value, MultiValue):  # a backslash in a single-valued slot: keep the raw text
        return "\\".join(str(v) for v in value)
    return "" if value is None else str(value)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class InstanceStore:
    """Writes received instances under `data_dir/instances/` and records them in the catalog."""

    def __init__(self, data_dir: Path, catalog: Catalog, fsync: bool = True) -> None:
        self.data_dir = Path(data_dir)
        self.root = self.data_dir / "instances"
        self.catalog = catalog
        self.fsync = fsync
        self._known_dirs: set[Path] = set()
        self._dir_lock = threading.Lock()

    def relative_path(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        """instances/<h(study)>/<h(series)>/<h(sop)>.dcm, relative to data_dir."""
        return Path("instances", path_component(study_uid), path_component(series_uid),
                    path_component(sop_uid) + ".dcm")

    def store(self, ds: Dataset, calling_ae: str, encoded: bytes | None = None) -> StoredInstance:
        """Write `ds` durably, record it, then return (the caller may acknowledge after this).

        `encoded`: the dataset as received (no file meta), in `ds.file_meta.TransferSyntaxUID`;
        written as is, without re-encoding (faster, and byte-exact). Otherwise `ds` is encoded.
        Raises InvalidInstance for a dataset without its identifiers, OSError for disk trouble.
        """
        ids = {}
        for keyword in ("SOPInstanceUID", "SOPClassUID", "SeriesInstanceUID", "StudyInstanceUID"):
            value = _text(ds, keyword).strip()
            if not value:
                raise InvalidInstance(f"the dataset has no {keyword}: it cannot be filed")
            ids[keyword] = value
        meta = self._file_meta(ds, ids)
        data = self._encode(ds, meta, encoded)
        rel = self.relative_path(ids["StudyInstanceUID"], ids["SeriesInstanceUID"], ids["SOPInstanceUID"])
        self._write_durably(self.data_dir / rel, data)
        digest = hashlib.sha256(data).hexdigest()
        inst = {
            "sop_instance_uid": ids["SOPInstanceUID"],
            "sop_class_uid": ids["SOPClassUID"],
            "series_uid": ids["SeriesInstanceUID"],
            "study_uid": ids["StudyInstanceUID"],
            "path": rel.as_posix(),
            "size": len(data),
            "sha256": digest,
            "transfer_syntax": str(meta.TransferSyntaxUID),
            "calling_ae": calling_ae,
            "received_at": time.time(),
        }
        series = {
            "study_uid": ids["StudyInstanceUID"],
            "patient_id": _text(ds, "PatientID"),
            "modality": _text(ds, "Modality"),
            "description": _text(ds, "SeriesDescription"),
            "calling_ae": calling_ae,
            "expected_count": expected_instances(ds),
        }
        new, reopened, generation = self.catalog.record_instance(inst, series)
        if reopened:
            LOGGER.info("series %s re-opened by a late instance: generation %d", ids["SeriesInstanceUID"], generation)
        return StoredInstance(
            sop_instance_uid=ids["SOPInstanceUID"], sop_class_uid=ids["SOPClassUID"],
            series_uid=ids["SeriesInstanceUID"], study_uid=ids["StudyInstanceUID"], path=rel,
            size=len(data), sha256=digest, new=new, reopened=reopened, generation=generation,
        )

    # -- reading back (the worker) -----------------------------------------------------

    def instances_of(self, series_uid: str) -> list[Path]:
        """Absolute paths of the instances the catalog holds for a series."""
        return [self.data_dir / p for p in self.catalog.instance_paths(series_uid)]

    def read_series(self, series_uid: str) -> list[Dataset]:
        """Every instance of a series, parsed (pixel data included)."""
        return [pydicom.dcmread(p) for p in self.instances_of(series_uid)]

    # -- internals -------------------------------------------------------------------

    @staticmethod
    def _file_meta(ds: Dataset, ids: dict[str, str]) -> FileMetaDataset:
        """File meta for the Part-10 file: the SCP's (transfer syntax as negotiated) or a fresh one."""
        meta = FileMetaDataset(getattr(ds, "file_meta", None) or FileMetaDataset())
        meta.MediaStorageSOPClassUID = ids["SOPClassUID"]
        meta.MediaStorageSOPInstanceUID = ids["SOPInstanceUID"]
        if "TransferSyntaxUID" not in meta:
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
        if "ImplementationClassUID" not in meta:
            meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
        return meta

    @staticmethod
    def _encode(ds: Dataset, meta: FileMetaDataset, encoded: bytes | None) -> bytes:
        if encoded is not None:
            head = DicomBytesIO()
            write_file_meta_info(head, meta, enforce_standard=True)
            return b"".join((PREAMBLE, head.getvalue(), encoded))
        buf = io.BytesIO()
        copy = Dataset(ds)
        copy.file_meta = meta
        dcmwrite(buf, copy, enforce_file_format=True)
        return buf.getvalue()

    def _ensure_dir(self, folder: Path) -> None:
        """Create the folder and make its new entries durable (fsync the parents once)."""
        if folder in self._known_dirs:
            return
        with self._dir_lock:
            missing = []
            p = folder
            while not p.exists():
                missing.append(p)
                p = p.parent
            folder.mkdir(parents=True, exist_ok=True)
            if self.fsync:
                for created in missing:
                    _fsync_dir(created.parent)
            self._known_dirs.add(folder)

    def _write_durably(self, final: Path, data: bytes) -> None:
        """temp name in the same folder -> write -> fsync -> rename -> fsync folder."""
        folder = final.parent
        self._ensure_dir(folder)
        tmp = folder / f".{final.name}.{uuid.uuid4().hex}.tmp"
        try:
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileNotFoundError:  # the folder was removed behind our back: make it again
                self._known_dirs.discard(folder)
                self._ensure_dir(folder)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if self.fsync:
            _fsync_dir(folder)
