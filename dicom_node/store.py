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
import re
import struct
import threading
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import dcmwrite, write_file_meta_info
from pydicom.multival import MultiValue
from pydicom.uid import RE_VALID_UID, UID, ExplicitVRLittleEndian

from dicom_node.catalog import Catalog, IdentityConflict, Recorded
from inference.api import atomic_write, fsync_dir

LOGGER = logging.getLogger(__name__)

PREAMBLE = b"\x00" * 128 + b"DICM"


UID_SYNTAX = re.compile(r"[0-9]+(\.[0-9]+)*")
UID_MAX = 64


def uid_problem(value: str) -> str:
    """Why `value` is not a UID our results can reference, or "" when it is.

    PS3.5 9.1: digits and dots, no empty component, at most 64 characters. A component with a
    leading zero ("1.2.03") breaks the letter of the rule but is common in real archives and
    harmless here, so it is accepted."""
    if len(value) > UID_MAX:
        return f"is {len(value)} characters long (a UID has at most {UID_MAX})"
    if not UID_SYNTAX.fullmatch(value):
        return "is not a UID (digits and dots only, no empty component)"
    return ""


class InvalidInstance(ValueError):
    """The dataset cannot be stored: a required identifier is missing or unusable, or it would
    join a study of another patient (maps to status 0xC000 with the reason as error comment)."""


@dataclass(frozen=True)
class StoredInstance:
    """What was stored: identifiers, where (relative to data_dir) and what the catalog now says."""

    sop_instance_uid: str
    sop_class_uid: str
    series_uid: str
    study_uid: str
    series_id: int  # the catalog's key of (study_uid, series_uid)
    path: Path  # relative to data_dir
    size: int
    sha256: str
    new: bool  # False: a re-send of an instance already held
    reopened: bool  # a late instance re-opened a complete/routed series
    generation: int
    reached_expected: bool = False  # the series now holds the count its header announced


def path_component(value: str) -> str:
    """A file-name-safe component for a UID: the UID itself when valid, else its SHA-256 hex.

    pydicom's UID validity (digits and dots, no leading zeros, at most 64 characters) rules
    out '/', '..' and every other hostile spelling.
    """
    if len(value) <= UID_MAX and re.fullmatch(RE_VALID_UID, value):
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


# attributes the store and the catalog need, and the declared pixel matrix (checked against the
# size limit); parsing stops after the last of them (0028,0100), before any bulk data
HEADER_KEYWORDS = (
    "SOPClassUID", "SOPInstanceUID", "Modality", "SeriesDescription", "PatientID", "StudyInstanceUID",
    "SeriesInstanceUID", "ImagesInAcquisition", "NumberOfTemporalPositions", "InConcatenationTotalNumber",
    "SamplesPerPixel", "NumberOfFrames", "Rows", "Columns", "BitsAllocated",
)


def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise ValueError(f"{keyword!r} is not a DICOM keyword")
    return tag


_HEADER_TAGS = [_tag(k) for k in HEADER_KEYWORDS]
_LAST_HEADER_TAG = max(_HEADER_TAGS)
IMPLEMENTATION_VERSION = "SPINE_NODE_0.1"


def read_header(encoded: bytes, transfer_syntax: str) -> Dataset:
    """The identifying attributes of an encoded dataset (no file meta), without decoding the rest.

    The listener needs a handful of attributes; decoding every element of each instance
    (pixel data, vendor private blocks) would cost more CPU than the store itself.
    """
    ts = UID(transfer_syntax)
    if not ts.is_transfer_syntax:
        raise InvalidInstance(f"unknown transfer syntax {transfer_syntax!r}")
    body = encoded
    if ts.is_deflated:
        try:
            body = zlib.decompress(encoded, -zlib.MAX_WBITS)
        except zlib.error as exc:
            raise InvalidInstance(f"deflated dataset does not inflate: {exc}") from None
    try:
        ds = read_dataset(
            io.BytesIO(body), ts.is_implicit_VR, ts.is_little_endian,
            stop_when=lambda tag, vr, length: tag > _LAST_HEADER_TAG, specific_tags=_HEADER_TAGS,
        )
        for keyword in HEADER_KEYWORDS:  # force the lazy values now, inside this try
            ds.get(keyword)
    except Exception as exc:  # pydicom raises many types for malformed streams
        raise InvalidInstance(f"dataset header cannot be parsed: {exc}") from None
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ts
    return ds


def declared_pixel_bytes(ds: Dataset) -> int:
    """Bytes the pixel matrix takes once decoded, as the header declares it (0 when it has none).

    The volume builder allocates what the header says; a header declaring 65535 x 65535 with a
    few bytes of pixel data must be refused at the door, not discovered as a MemoryError later.
    """
    def as_int(keyword: str, default: int) -> int:
        try:
            value = ds.get(keyword)
            return max(0, int(value)) if value not in (None, "") else default
        except (TypeError, ValueError):
            return default

    rows, cols = as_int("Rows", 0), as_int("Columns", 0)
    frames, samples, bits = as_int("NumberOfFrames", 1), as_int("SamplesPerPixel", 1), as_int("BitsAllocated", 8)
    return rows * cols * frames * samples * ((bits + 7) // 8)


def _element(group_elem: int, vr: bytes, value: bytes) -> bytes:
    """One explicit VR little endian file meta element (group 0002)."""
    tag = struct.pack("<HH", 0x0002, group_elem)
    if vr == b"OB":
        return tag + vr + b"\0\0" + struct.pack("<I", len(value)) + value
    return tag + vr + struct.pack("<H", len(value)) + value


def encode_file_meta(sop_class: str, sop_instance: str, transfer_syntax: str, source_ae: str = "") -> bytes:
    """Group 0002 for a Part-10 file, encoded directly (pydicom's writer costs ~0.5 ms per file).

    Raises UnicodeEncodeError for non-ASCII values; the caller then uses pydicom's writer.
    """
    def ui(v: str) -> bytes:
        b = v.encode("ascii")
        return b + b"\0" if len(b) % 2 else b

    def text(v: str) -> bytes:
        b = v.encode("ascii")
        return b + b" " if len(b) % 2 else b

    parts = [
        _element(0x0001, b"OB", b"\x00\x01"),
        _element(0x0002, b"UI", ui(sop_class)),
        _element(0x0003, b"UI", ui(sop_instance)),
        _element(0x0010, b"UI", ui(transfer_syntax)),
        _element(0x0012, b"UI", ui(pydicom.uid.PYDICOM_IMPLEMENTATION_UID)),
        _element(0x0013, b"SH", text(IMPLEMENTATION_VERSION)),
    ]
    if source_ae and source_ae.isprintable() and "\\" not in source_ae and len(source_ae) <= 16:
        parts.append(_element(0x0016, b"AE", text(source_ae)))
    body = b"".join(parts)
    return _element(0x0000, b"UL", struct.pack("<I", len(body))) + body


@dataclass
class _Pending:
    folder: Path
    inst: dict
    series: dict
    done: threading.Event = field(default_factory=threading.Event)
    result: Recorded | None = None
    error: BaseException | None = None


class GroupCommit:
    """Shares the folder fsync and the catalog commit among concurrent stores.

    Parallel associations each wait for a commit anyway; one thread that commits everything
    pending in one transaction turns N fsyncs of the WAL (and of the series folder) into one,
    without acknowledging anything before its own commit is done.
    """

    MAX_BATCH = 64
    WAIT_S = 120.0

    def __init__(self, catalog: Catalog, fsync: bool) -> None:
        self.catalog = catalog
        self.fsync = fsync
        self._cond = threading.Condition()
        self._pending: list[_Pending] = []
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, folder: Path, inst: dict, series: dict) -> Recorded:
        """Record one instance whose file is already renamed into `folder`; returns after commit."""
        item = _Pending(folder, inst, series)
        with self._cond:
            if self._closed:
                raise OSError("the instance store is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="dicom-node-commit", daemon=True)
                self._thread.start()
            self._pending.append(item)
            self._cond.notify()
        if not item.done.wait(self.WAIT_S):
            raise OSError(f"catalog commit did not finish within {self.WAIT_S:.0f} s")
        if item.error is not None:
            raise item.error
        assert item.result is not None
        return item.result

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    return
                batch, self._pending = self._pending[: self.MAX_BATCH], self._pending[self.MAX_BATCH :]
            self._commit(batch)

    def _commit(self, batch: list[_Pending]) -> None:
        try:
            if self.fsync:
                for folder in dict.fromkeys(item.folder for item in batch):
                    fsync_dir(folder)  # the renames are durable before the catalog says so
            results = self.catalog.record_instances([(i.inst, i.series) for i in batch])
            for item, result in zip(batch, results):
                item.result = result
        except Exception as exc:
            if len(batch) > 1 and not isinstance(exc, OSError):  # find the one bad record
                LOGGER.warning("group commit of %d instances failed (%s); committing one by one", len(batch), exc)
                for item in batch:
                    self._commit([item])
                return
            for item in batch:
                item.error = exc
        finally:
            for item in batch:
                if item.result is not None or item.error is not None:
                    item.done.set()


class SharedExclusive:
    """Many holders of `shared()` at once, or one holder of `exclusive()`.

    Why: each C-STORE writes its file and then records it; retention deletes a finished series'
    files and rows. Stores hold it shared and retention exclusive, so a re-sent instance can never
    be written, then deleted by a purge that read the catalog before its row existed.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                if not self._shared:
                    self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._exclusive = True  # new shared holders wait from here on
            while self._shared:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


class InstanceStore:
    """Writes received instances under `data_dir/instances/` and records them in the catalog."""

    def __init__(self, data_dir: Path, catalog: Catalog, fsync: bool = True) -> None:
        self.data_dir = Path(data_dir)
        self.root = self.data_dir / "instances"
        self.catalog = catalog
        self.fsync = fsync
        self._known_dirs: set[Path] = set()
        self._dir_lock = threading.Lock()
        self._commit = GroupCommit(catalog, fsync)
        self.gate = SharedExclusive()  # stores shared, retention's deletions exclusive
        self._path_locks = [threading.Lock() for _ in range(256)]  # striped by instance path

    def close(self) -> None:
        """Finish pending commits and stop the commit thread (the listener is stopped first)."""
        self._commit.close()

    def relative_path(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        """instances/<h(study)>/<h(series)>/<h(sop)>.dcm, relative to data_dir."""
        return Path("instances", path_component(study_uid), path_component(series_uid),
                    path_component(sop_uid) + ".dcm")

    def store_encoded(self, encoded: bytes, transfer_syntax: str, calling_ae: str,
                      max_pixel_bytes: int = 0) -> StoredInstance:
        """The listener's path: the dataset exactly as received, parsed only for its header.

        `max_pixel_bytes` (0 = no limit): refuse a header whose declared pixel matrix is larger.
        An instance UID that results could not reference (not digits and dots, over 64
        characters) is refused here, before anything is stored or computed; `store` itself files
        any value safely (hashed paths) for callers that decide otherwise.
        """
        ds = read_header(encoded, transfer_syntax)
        for keyword in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"):
            value = _text(ds, keyword).strip()
            problem = uid_problem(value) if value else ""
            if problem:
                shown = value[:40] + ("..." if len(value) > 40 else "")
                raise InvalidInstance(f"{keyword} {shown!r} {problem}")
        declared = declared_pixel_bytes(ds)
        if max_pixel_bytes and declared > max_pixel_bytes:
            raise InvalidInstance(f"header declares {declared} bytes of pixels (Rows x Columns x frames x bits), "
                                  f"over {max_pixel_bytes}")
        return self.store(ds, calling_ae, encoded=encoded)

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
        meta = getattr(ds, "file_meta", None)
        transfer_syntax = str(meta.get("TransferSyntaxUID", "") if meta is not None else "") or ExplicitVRLittleEndian
        data = self._encode(ds, ids, transfer_syntax, calling_ae, encoded)
        rel = self.relative_path(ids["StudyInstanceUID"], ids["SeriesInstanceUID"], ids["SOPInstanceUID"])
        patient_id = _text(ds, "PatientID")
        # file and catalog row together, never between a purge's reads and deletes; one store per
        # path at a time, so the identity check below holds until the row is committed
        with self.gate.shared(), self._path_lock(rel):
            conflict = self.catalog.identity_conflict(ids["StudyInstanceUID"], patient_id)
            if conflict:  # before the file is written: another patient's instance is never overwritten
                raise InvalidInstance(conflict)
            return self._write_and_record(ds, ids, patient_id, rel, data, transfer_syntax, calling_ae)

    def _path_lock(self, rel: Path) -> threading.Lock:
        return self._path_locks[hash(rel) % len(self._path_locks)]

    def _write_and_record(self, ds: Dataset, ids: dict[str, str], patient_id: str, rel: Path, data: bytes,
                          transfer_syntax: str, calling_ae: str) -> StoredInstance:
        self._write_durably(self.data_dir / rel, data)
        digest = hashlib.sha256(data).hexdigest()
        inst = {
            "sop_instance_uid": ids["SOPInstanceUID"],
            "sop_class_uid": ids["SOPClassUID"],
            "path": rel.as_posix(),
            "size": len(data),
            "sha256": digest,
            "transfer_syntax": transfer_syntax,
            "calling_ae": calling_ae,
            "received_at": time.time(),
        }
        series = {
            "study_uid": ids["StudyInstanceUID"],
            "series_uid": ids["SeriesInstanceUID"],
            "patient_id": patient_id,
            "modality": _text(ds, "Modality"),
            "description": _text(ds, "SeriesDescription"),
            "calling_ae": calling_ae,
            "expected_count": expected_instances(ds),
        }
        try:
            rec = self._commit.submit((self.data_dir / rel).parent, inst, series)
        except IdentityConflict as exc:
            # another association made the study another patient's after the check above; the
            # study did not exist then, so no row names this path: the file is only ours
            (self.data_dir / rel).unlink(missing_ok=True)
            raise InvalidInstance(str(exc)) from None
        if rec.reopened:
            LOGGER.info("series %s re-opened by a late instance: generation %d", ids["SeriesInstanceUID"],
                        rec.generation)
        return StoredInstance(
            sop_instance_uid=ids["SOPInstanceUID"], sop_class_uid=ids["SOPClassUID"],
            series_uid=ids["SeriesInstanceUID"], study_uid=ids["StudyInstanceUID"], series_id=rec.series_id,
            path=rel, size=len(data), sha256=digest, new=rec.new, reopened=rec.reopened,
            generation=rec.generation, reached_expected=rec.reached_expected,
        )

    def remove_partial_files(self) -> int:
        """Delete temporary files a crash left mid-write (never acknowledged); call at start.

        Such a file was never renamed, so no catalog row and no success status refer to it.
        """
        removed = 0
        if self.root.is_dir():
            for tmp in self.root.rglob(".*.tmp"):
                tmp.unlink(missing_ok=True)
                removed += 1
        if removed:
            LOGGER.warning("removed %d partial instance file(s) left by an interrupted write", removed)
        return removed

    # -- reading back (the worker) -----------------------------------------------------

    def instances_of(self, series_id: int) -> list[Path]:
        """Absolute paths of the instances the catalog holds for a series."""
        return [self.data_dir / p for p in self.catalog.instance_paths(series_id)]

    def read_series(self, series_id: int) -> list[Dataset]:
        """Every instance of a series, parsed (pixel data included)."""
        return [pydicom.dcmread(p) for p in self.instances_of(series_id)]

    # -- internals -------------------------------------------------------------------

    @staticmethod
    def _encode(ds: Dataset, ids: dict[str, str], transfer_syntax: str, source_ae: str, encoded: bytes | None) -> bytes:
        """Preamble + file meta + dataset: the received bytes when given, else `ds` encoded."""
        if encoded is not None:
            try:
                meta = encode_file_meta(ids["SOPClassUID"], ids["SOPInstanceUID"], transfer_syntax, source_ae)
                return b"".join((PREAMBLE, meta, encoded))
            except UnicodeEncodeError:  # hostile non-ASCII UIDs: let pydicom's writer deal with them
                head = DicomBytesIO()
                write_file_meta_info(head, InstanceStore._file_meta(ds, ids, transfer_syntax), enforce_standard=True)
                return b"".join((PREAMBLE, head.getvalue(), encoded))
        buf = io.BytesIO()
        copy = Dataset(ds)
        copy.file_meta = InstanceStore._file_meta(ds, ids, transfer_syntax)
        dcmwrite(buf, copy, enforce_file_format=True)
        return buf.getvalue()

    @staticmethod
    def _file_meta(ds: Dataset, ids: dict[str, str], transfer_syntax: str) -> FileMetaDataset:
        meta = FileMetaDataset(getattr(ds, "file_meta", None) or FileMetaDataset())
        # pydicom annotates these as UID but takes a str (UID() itself would validate, and warn on the
        # hostile values this path must store unchanged)
        meta.MediaStorageSOPClassUID = ids["SOPClassUID"]  # type: ignore[assignment]
        meta.MediaStorageSOPInstanceUID = ids["SOPInstanceUID"]  # type: ignore[assignment]
        meta.TransferSyntaxUID = transfer_syntax  # type: ignore[assignment]
        if "ImplementationClassUID" not in meta:
            meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
        return meta

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
                    fsync_dir(created.parent)
            self._known_dirs.add(folder)

    def _write_durably(self, final: Path, data: bytes) -> None:
        """`atomic_write` with the store's temp ending (`.tmp`, swept by `remove_partial_files`).

        The folder is fsynced by the group commit, once for all instances renamed into it.
        """
        folder = final.parent
        self._ensure_dir(folder)
        for attempt in (1, 2):
            try:
                atomic_write(final, data, fsync=self.fsync, fsync_folder=False, make_parents=False,
                             temp_suffix=".tmp")
                return
            except FileNotFoundError:  # the folder was removed behind our back: make it again
                if attempt == 2:
                    raise
                self._known_dirs.discard(folder)
                self._ensure_dir(folder)
