"""Byte-mutation fuzzing of what the listener and the volume builder parse.

Real files (../shared/data/dicom and a real series written by testbed.series) are mutated by
hypothesis (bytes overwritten, deleted, inserted, truncated). The parsers may only fail with
their documented error types: `store.read_header` and `InstanceStore.store_encoded` with
InvalidInstance (OSError is reserved for the disk), `volume_from_datasets` with VolumeError.
Anything else would reach the listener as 0x0110 or the worker as a "transient" crash.
Bounded: 200 examples per target, no example database written.
"""
from __future__ import annotations

import io
import struct
import warnings
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dicom_node.catalog import Catalog
from dicom_node.store import InstanceStore, InvalidInstance, read_header
from tests.helpers.env import require_shared

FILES = ["dicom/pydicom/MR_small.dcm", "dicom/pydicom-data/emri_small.dcm", "dicom/pydicom/test-SR.dcm",
         "dicom/dcmqi/seg.dcm", "dicom/pydicom/CT2/17106", "dicom/highdicom/sr_document.dcm"]
FUZZ = settings(max_examples=200, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


def split_part10(raw: bytes) -> tuple[str, bytes]:
    """(transfer syntax, dataset bytes after the file meta) of a Part-10 file."""
    assert raw[128:132] == b"DICM"
    meta_len = struct.unpack("<I", raw[140:144])[0]
    meta = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True).file_meta
    return str(meta.TransferSyntaxUID), raw[144 + meta_len:]


@st.composite
def mutated(draw, blobs: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(blobs)))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        # most of a file is pixel data: aim half of the mutations at the first 2 kB (the header)
        pos = draw(st.integers(0, min(len(data), 2048) - 1) | st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["overwrite", "delete", "insert", "truncate", "lengths"]))
        if kind == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[pos:pos + len(chunk)] = chunk
        elif kind == "delete":
            del data[pos:pos + draw(st.integers(1, 64))]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "truncate":
            del data[pos:]
        else:  # a length or count field turned huge or odd: the classic parser killer
            data[pos:pos + 4] = draw(st.sampled_from([b"\xff\xff\xff\xff", b"\xff\xff\x00\x00", b"\x01\x00\x00\x00",
                                                      b"\x00\x00\x00\x80"]))
    return bytes(data)


@pytest.fixture(scope="module")
def datasets() -> list[tuple[str, bytes]]:
    return [split_part10(require_shared(f).read_bytes()) for f in FILES]


def test_listener_parse_raises_only_invalid_instance(datasets, tmp_path: Path) -> None:
    by_ts: dict[str, list[bytes]] = {}
    for ts, body in datasets:
        by_ts.setdefault(ts, []).append(body)
    store = InstanceStore(tmp_path, Catalog(tmp_path / "catalog.sqlite"), fsync=False)
    outcomes = {"stored": 0, "refused": 0}

    @FUZZ
    @given(st.data())
    def run(data) -> None:
        ts = data.draw(st.sampled_from(sorted(by_ts)))
        body = data.draw(mutated(by_ts[ts]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                read_header(body, ts)
                store.store_encoded(body, ts, "FUZZ")
                outcomes["stored"] += 1
            except InvalidInstance:
                outcomes["refused"] += 1

    try:
        run()
    finally:
        store.close()
        store.catalog.close()
    print(f"listener parse: {outcomes}")
    assert outcomes["stored"] and outcomes["refused"], outcomes
    assert not list(tmp_path.rglob("*.tmp"))


def test_volume_builder_raises_only_volume_error(tmp_path: Path) -> None:
    from inference.volume import VolumeError, volume_from_datasets
    from testbed.series import write_series
    from tests.helpers.bad_inputs import crop_source

    crop = crop_source(require_shared("lesion-example/t2_fake_lesion.nii.gz"), tmp_path)
    files = write_series(crop, tmp_path / "series", uid_seed="fuzz")
    raws = [f.read_bytes() for f in files]
    good = [pydicom.dcmread(f) for f in files]
    outcomes = {"volume": 0, "volume_error": 0, "unreadable": 0}

    @FUZZ
    @given(st.data())
    def run(data) -> None:
        k = data.draw(st.integers(0, len(raws) - 1))
        blob = data.draw(mutated([raws[k]]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:  # the worker reads stored files with dcmread; what it cannot read is not the builder's
                ds = pydicom.dcmread(io.BytesIO(blob), force=True)
                ds.get("PixelData")
            except Exception:
                outcomes["unreadable"] += 1
                return
            series = good[:k] + [ds] + good[k + 1:]
            try:
                volume_from_datasets(series)
                outcomes["volume"] += 1
            except VolumeError:
                outcomes["volume_error"] += 1

    run()
    print(f"volume builder: {outcomes}")
    assert outcomes["volume"] and outcomes["volume_error"], outcomes
