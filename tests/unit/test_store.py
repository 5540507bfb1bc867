"""InstanceStore: Part-10 files on disk, safe paths, one catalog transaction, idempotent re-sends."""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.filewriter import write_dataset

from dicom_node.catalog import Catalog
from dicom_node.store import InstanceStore, InvalidInstance, expected_instances, path_component
from tests.helpers.catalog import series_id, series_of
from tests.helpers.env import require_shared


@pytest.fixture()
def store(tmp_path: Path) -> InstanceStore:
    return InstanceStore(tmp_path, Catalog(tmp_path / "catalog.sqlite"))


def real(rel: str) -> pydicom.Dataset:
    return pydicom.dcmread(require_shared(rel))


def test_path_component_validates_or_hashes() -> None:
    assert path_component("1.2.840.10008.1.2") == "1.2.840.10008.1.2"
    for hostile in ("../../etc/passwd", "1.2/../3", "..", "", "1.02.3", "1." + "2" * 70, "1.2.3\x00", "1.2.3\n"):
        component = path_component(hostile)
        assert component == hashlib.sha256(hostile.encode()).hexdigest()
        assert "/" not in component and component not in ("..", ".")


def test_store_writes_part10_and_catalog(store: InstanceStore, tmp_path: Path) -> None:
    ds = real("dicom/pydicom-data/MR-SIEMENS-DICOM-WithOverlays.dcm")
    stored = store.store(ds, "MODALITY")
    assert stored.new and not stored.reopened and stored.generation == 1
    assert stored.path == Path("instances", ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID + ".dcm")
    path = tmp_path / stored.path
    raw = path.read_bytes()
    assert raw[128:132] == b"DICM" and hashlib.sha256(raw).hexdigest() == stored.sha256
    assert pydicom.dcmread(path) == ds
    assert not [p for p in path.parent.iterdir() if p.suffix == ".tmp"]
    (row,) = store.catalog.query("SELECT * FROM instances")
    assert (row["path"], row["size"], row["calling_ae"]) == (stored.path.as_posix(), len(raw), "MODALITY")
    assert row["transfer_syntax"] == ds.file_meta.TransferSyntaxUID
    series = series_of(store.catalog, ds.SeriesInstanceUID)
    assert (series["state"], series["received_count"], series["modality"]) == ("receiving", 1, "MR")
    assert store.instances_of(series_id(store.catalog, ds.SeriesInstanceUID)) == [path]
    read = store.read_series(series_id(store.catalog, ds.SeriesInstanceUID))
    assert read[0].pixel_array.shape == ds.pixel_array.shape


def test_encoded_bytes_are_written_as_received(store: InstanceStore, tmp_path: Path) -> None:
    src = require_shared("dicom/pydicom/MR_small.dcm")
    ds = pydicom.dcmread(src)
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    encoded = buf.getvalue()
    stored = store.store(ds, "X", encoded=encoded)
    assert (tmp_path / stored.path).read_bytes().endswith(encoded)
    assert pydicom.dcmread(tmp_path / stored.path) == ds


def test_hostile_uids_never_escape_data_dir(store: InstanceStore, tmp_path: Path) -> None:
    ds = real("dicom/pydicom/MR_small.dcm")
    ds.StudyInstanceUID = "../../../../tmp/evil"
    ds.SeriesInstanceUID = "/etc"
    ds.SOPInstanceUID = "..\\..\\x"
    stored = store.store(ds, "X")
    path = (tmp_path / stored.path).resolve()
    assert path.is_relative_to(tmp_path / "instances") and path.exists()
    (row,) = store.catalog.query("SELECT i.sop_instance_uid, s.series_uid FROM instances i JOIN series s "
                                 "ON s.id = i.series_id")
    assert tuple(row) == ("..\\..\\x", "/etc")  # the catalog keeps the raw values


def test_resend_is_idempotent_and_reopens_only_on_new_content(store: InstanceStore) -> None:
    ds = real("dicom/pydicom/MR_small.dcm")
    first = store.store(ds, "X")
    again = store.store(ds, "X")
    assert not again.new and again.path == first.path
    uid = ds.SeriesInstanceUID
    assert series_of(store.catalog, uid)["received_count"] == 1
    assert store.catalog.complete_series(now=1e12, idle_seconds=1) == [(first.series_id, uid, "idle")]
    store.store(ds, "X")  # identical re-send after completion: nothing new, no re-open
    row = series_of(store.catalog, uid)
    assert (row["state"], row["generation"], row["received_count"]) == ("complete", 1, 1)
    ds.InstanceNumber = 99  # corrected content under the same SOP Instance UID: re-open
    changed = store.store(ds, "X")
    assert changed.reopened and not changed.new and changed.generation == 2
    row = series_of(store.catalog, uid)
    assert ((row["state"], row["generation"], row["received_count"], row["completion_reason"])
            == ("receiving", 2, 1, None))


def test_missing_identifiers_refused_and_nothing_recorded(store: InstanceStore, tmp_path: Path) -> None:
    ds = real("dicom/pydicom/MR_small.dcm")
    del ds.SeriesInstanceUID
    with pytest.raises(InvalidInstance, match="SeriesInstanceUID"):
        store.store(ds, "X")
    assert store.catalog.query("SELECT COUNT(*) FROM instances")[0][0] == 0
    assert not (tmp_path / "instances").exists()


def test_disk_failure_raises_oserror_and_records_nothing(store: InstanceStore, tmp_path: Path) -> None:
    (tmp_path / "instances").write_text("a file where the folder should be")
    with pytest.raises(OSError):
        store.store(real("dicom/pydicom/MR_small.dcm"), "X")
    assert store.catalog.query("SELECT COUNT(*) FROM instances")[0][0] == 0


def test_dataset_without_file_meta_gets_one(store: InstanceStore, tmp_path: Path) -> None:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID = "1.2.3.4", "1.2.3", "1.2"
    ds.Modality = "OT"
    stored = store.store(ds, "X")
    back = pydicom.dcmread(tmp_path / stored.path)
    assert back.file_meta.MediaStorageSOPInstanceUID == "1.2.3.4" and back.Modality == "OT"


@pytest.mark.parametrize("attrs,expected", [
    ({}, None),
    ({"ImagesInAcquisition": 24}, 24),
    ({"ImagesInAcquisition": 0}, None),
    ({"ImagesInAcquisition": 12, "NumberOfTemporalPositions": 3}, 36),
    ({"NumberOfFrames": 52}, 1),
    ({"NumberOfFrames": 52, "InConcatenationTotalNumber": 4}, 4),
    ({"NumberOfFrames": 1, "ImagesInAcquisition": 35}, 35),
])
def test_expected_instances(attrs: dict, expected: int | None) -> None:
    ds = Dataset()
    for key, value in attrs.items():
        setattr(ds, key, value)
    assert expected_instances(ds) == expected


def test_expected_count_recorded_from_enhanced_mr(store: InstanceStore) -> None:
    ds = real("dicom/pydicom-data/emri_small.dcm")
    store.store(ds, "X")
    assert series_of(store.catalog, ds.SeriesInstanceUID)["expected_count"] == 1


@pytest.mark.parametrize("syntax", [pydicom.uid.ImplicitVRLittleEndian, pydicom.uid.ExplicitVRLittleEndian,
                                    pydicom.uid.DeflatedExplicitVRLittleEndian])
def test_store_encoded_parses_header_only_and_keeps_bytes(store: InstanceStore, tmp_path: Path, syntax: str) -> None:
    src = require_shared("dicom/dcm_qa_decubitus_HFS_t1_sag")
    ds = pydicom.dcmread(sorted(src.glob("*.dcm"))[0])
    ds.ImagesInAcquisition = 35
    ds.file_meta.TransferSyntaxUID = syntax
    path = tmp_path / "in.dcm"
    ds.save_as(path, enforce_file_format=True)
    raw = path.read_bytes()
    fp = io.BytesIO(raw)
    read_preamble(fp, False)
    _read_file_meta_info(fp)
    encoded = raw[fp.tell():]  # the dataset as a peer sends it: no preamble, no file meta
    stored = store.store_encoded(encoded, syntax, "MRI_3T")
    assert (tmp_path / stored.path).read_bytes().endswith(encoded)
    back, sent = pydicom.dcmread(tmp_path / stored.path), pydicom.dcmread(path)
    assert back.file_meta.TransferSyntaxUID == syntax
    assert back.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert back.file_meta.SourceApplicationEntityTitle == "MRI_3T"
    assert back == sent and back.PixelData == sent.PixelData
    row = series_of(store.catalog, ds.SeriesInstanceUID)
    assert (row["expected_count"], row["description"], row["modality"]) == (35, "t1_fl2d_sag", "MR")


def test_store_encoded_garbage_is_invalid(store: InstanceStore) -> None:
    with pytest.raises(InvalidInstance):
        store.store_encoded(b"\x08\x00\x18\x00UI\xff\xff" + b"x" * 40, pydicom.uid.ExplicitVRLittleEndian, "X")
    with pytest.raises(InvalidInstance):
        store.store_encoded(b"not deflate", pydicom.uid.DeflatedExplicitVRLittleEndian, "X")
    with pytest.raises(InvalidInstance, match="transfer syntax"):
        store.store_encoded(b"", "1.2.3.4", "X")
    assert store.catalog.query("SELECT COUNT(*) FROM instances")[0][0] == 0


def test_concurrent_stores_share_commits_and_count_right(tmp_path: Path) -> None:
    import copy
    import threading

    store = InstanceStore(tmp_path, Catalog(tmp_path / "catalog.sqlite"))
    base = pydicom.dcmread(require_shared("dicom/pydicom/MR_small.dcm"))
    datasets = []
    for i in range(40):
        ds = copy.deepcopy(base)
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.{i + 1}"
        datasets.append(ds)
    threads = [threading.Thread(target=lambda part=datasets[k::8]: [store.store(d, "X") for d in part])
               for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    store.close()
    assert series_of(store.catalog, base.SeriesInstanceUID)["received_count"] == 40
    assert len(store.instances_of(series_id(store.catalog, base.SeriesInstanceUID))) == 40
    with pytest.raises(OSError, match="closed"):
        store.store(datasets[0], "X")


def test_remove_partial_files_after_a_crash(store: InstanceStore, tmp_path: Path) -> None:
    stored = store.store(real("dicom/pydicom/MR_small.dcm"), "X")
    folder = (tmp_path / stored.path).parent
    (folder / f".{stored.path.name}.deadbeef.tmp").write_bytes(b"half an instance")
    assert store.remove_partial_files() == 1
    assert [p.name for p in folder.iterdir()] == [stored.path.name]


@pytest.mark.parametrize("keyword, value, why", [
    ("SOPInstanceUID", "../../../etc/1/passwd", "not a UID"),
    ("SeriesInstanceUID", "1.2/../../" + "9" * 200, "characters long"),
    ("StudyInstanceUID", "/tmp/study", "not a UID"),
    ("SeriesInstanceUID", "1..2", "not a UID"),
])
def test_the_door_refuses_uids_results_could_not_reference(store: InstanceStore, keyword: str, value: str,
                                                           why: str) -> None:
    # issue 23 item 2: such instances used to be stored and run through the network, then the SEG
    # failed dciodvfy; refused now, nothing stored
    ds = real("dicom/pydicom/MR_small.dcm")
    setattr(ds, keyword, value)
    with pytest.raises(InvalidInstance, match=f"{keyword} .*{why}"):
        store.store_encoded(_as_sent(ds), pydicom.uid.ExplicitVRLittleEndian, "X")
    assert not store.catalog.query("SELECT 1 FROM instances")


def test_the_door_accepts_the_common_leading_zero_component(store: InstanceStore) -> None:
    ds = real("dicom/pydicom/MR_small.dcm")
    ds.SeriesInstanceUID = "1.2.840.113619.2.5.1762583153.215519.978957063.078"  # as real archives hold
    assert store.store_encoded(_as_sent(ds), pydicom.uid.ExplicitVRLittleEndian, "X").new


def _as_sent(ds: pydicom.Dataset) -> bytes:
    """The dataset as a peer sends it: explicit VR little endian, no preamble, no file meta."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    return fp.getvalue()


# -- identity (issue 23 item 4): a series is (study, series) and a study has one patient ------------

def test_a_series_uid_reused_by_another_study_is_another_series(store: InstanceStore, tmp_path: Path) -> None:
    ds = real("dicom/pydicom/MR_small.dcm")
    first = store.store(ds, "X")
    ds.StudyInstanceUID, ds.PatientID = "1.2.3.4.5.6", "OTHER"  # same Series and SOP Instance UIDs
    second = store.store(ds, "X")
    assert second.new and second.series_id != first.series_id and second.generation == 1
    assert second.path != first.path and (tmp_path / first.path).is_file() and (tmp_path / second.path).is_file()
    assert store.catalog.series_ids(ds.SeriesInstanceUID) == [first.series_id, second.series_id]
    for sid in (first.series_id, second.series_id):
        row = store.catalog.series_row(sid)
        assert row is not None and row["received_count"] == 1 and store.catalog.instance_paths(sid)


def test_an_instance_under_another_patient_is_refused_before_anything_is_written(
        store: InstanceStore, tmp_path: Path) -> None:
    ds = real("dicom/pydicom/MR_small.dcm")
    first = store.store(ds, "X")
    before = (tmp_path / first.path).read_bytes()
    ds.PatientID, ds.PixelData = "SOMEONE-ELSE", bytes(len(ds.PixelData))
    with pytest.raises(InvalidInstance, match="Study UID already holds patient"):
        store.store(ds, "X")
    assert (tmp_path / first.path).read_bytes() == before, "the first patient's instance was overwritten"
    ds.SOPInstanceUID = "1.2.3.4.5.6.7"  # another instance of that study: refused too
    with pytest.raises(InvalidInstance, match="already holds patient"):
        store.store(ds, "X")
    assert not (tmp_path / store.relative_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)).exists()
    assert len(store.catalog.query("SELECT * FROM instances")) == 1


def test_a_patient_clash_found_at_commit_removes_the_file_it_wrote(store: InstanceStore, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Two associations start the same new study for two patients at once: both pass the check
    before writing; the commit of the second refuses it and deletes the file only it wrote."""
    ds = real("dicom/pydicom/MR_small.dcm")
    check = store.catalog.identity_conflict
    monkeypatch.setattr(store.catalog, "identity_conflict",
                        lambda study, patient, con=None: check(study, patient, con) if con is not None else "")
    store.store(ds, "X")
    ds.SOPInstanceUID, ds.PatientID = "1.2.3.4.5.6.7", "SOMEONE-ELSE"
    with pytest.raises(InvalidInstance, match="already holds patient"):
        store.store(ds, "X")
    assert not (tmp_path / store.relative_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)).exists()
    assert len(store.catalog.query("SELECT * FROM instances")) == 1
