"""Generate the bad-input corpus into a folder: hostile, broken and unusual DICOM a node meets in practice.

    python -m tests.helpers.bad_inputs OUT_DIR [--source NIFTI]

Every case is derived from a real series (`testbed.series.write_series` of a crop of
a real spine T2 volume) or from real files in ../shared/data/dicom, so only the one defect
differs from valid input. Nothing binary is committed: the cases are made on demand.

Each case says what the node must do with it:
  refused   number of instances the listener must refuse (the others are stored)
  outcome   what happens to its series: 'done' (processed, results queued), 'failed' (job failed,
            `reason` in the job's reason), 'ignored' (routing sends it nowhere, `reason` in the
            routing explanation), 'none' (nothing is stored, so there is no series)
"""
from __future__ import annotations

import argparse
import hashlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID

REPO = Path(__file__).resolve().parents[2]
SHARED = (REPO.parent / "shared" / "data").resolve()
DEFAULT_SOURCE = SHARED / "lesion-example" / "t2_fake_lesion.nii.gz"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


@dataclass
class Case:
    name: str
    files: list[Path]
    refused: int
    outcome: str  # done | failed | ignored | none
    reason: str = ""  # substring expected in the job reason (failed) or routing reason (ignored)
    note: str = ""
    series_keys: list[tuple[str, str]] = field(default_factory=list)  # (study, series) it creates, unless 'none'


def uid(*parts: str) -> str:
    """A deterministic valid UID under the pydicom root."""
    digits = str(int(hashlib.sha256("/".join(parts).encode()).hexdigest(), 16))[:30]
    return f"1.2.826.0.1.3680043.8.498.{digits.lstrip('0') or '1'}"


def crop_source(source: Path, out: Path, half_xy: int = 20, half_z: int | None = 4) -> Path:
    """A smaller real volume (keeps CI fast): centre crop, the affine follows the voxels.

    `half_z` None keeps every slice (a series long enough to interrupt mid-association).
    """
    import nibabel as nib

    img = nib.load(str(source))
    x, y, z = img.shape[:3]
    zs = slice(None) if half_z is None else slice(max(0, z // 2 - half_z), z // 2 + half_z)
    cropped = img.slicer[x // 2 - half_xy: x // 2 + half_xy, y // 2 - half_xy: y // 2 + half_xy, zs]
    path = out / "crop.nii.gz"
    nib.save(cropped, str(path))
    return path


def write(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=False)
    return path


def renamed(files: list[Path], folder: Path, name: str, change: Callable[[Dataset, int], None] | None = None,
            keep_pixels: bool = True) -> list[Path]:
    """Copies of a series with its own study/series/instance UIDs, each changed by `change(ds, index)`."""
    study, series = uid(name, "study"), uid(name, "series")
    out = []
    for i, f in enumerate(files):
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid(name, "sop", str(i))
        if change is not None:
            change(ds, i)
        out.append(write(ds, folder / name / f"IM{i + 1:04d}.dcm"))
    return out


def set_pixels(ds: Dataset, arr: np.ndarray, bits_stored: int, signed: bool) -> None:
    ds.BitsAllocated = arr.dtype.itemsize * 8
    ds.BitsStored, ds.HighBit = bits_stored, bits_stored - 1
    ds.PixelRepresentation = int(signed)
    ds.PixelData = arr.tobytes()
    for k in ("SmallestImagePixelValue", "LargestImagePixelValue"):
        if k in ds:
            del ds[k]


def make_corpus(out: Path, source: Path = DEFAULT_SOURCE) -> list[Case]:
    """Write every case under `out/<case name>/` and return the list."""
    from testbed.series import TRANSFER_SYNTAXES, write_series

    out.mkdir(parents=True, exist_ok=True)
    crop = crop_source(source, out)

    def series(name: str, **kw) -> list[Path]:
        kw.setdefault("series_description", "T2 SAG SPINE")
        return write_series(crop, out / name, uid_seed=f"corpus-{name}", **kw)

    base = series("_base")
    n = len(base)
    cases: list[Case] = []

    def add(name: str, files: list[Path], refused: int, outcome: str, reason: str = "", note: str = "",
            accepted: list[Path] | None = None) -> None:
        """`accepted`: the files the node stores, when they are not the last len(files) - refused."""
        keys: set[tuple[str, str]] = set()
        for f in (files[refused:] if accepted is None else accepted) if outcome != "none" else []:
            ds = pydicom.dcmread(f, stop_before_pixels=True, force=True)
            keys.add((str(ds.get("StudyInstanceUID", "")), str(ds.get("SeriesInstanceUID", ""))))
        cases.append(Case(name, files, refused, outcome, reason, note, sorted(keys)))

    # --- broken bytes -------------------------------------------------------------------------
    cut = out / "truncated_header" / "IM0001.dcm"
    cut.parent.mkdir(parents=True)
    raw = renamed(base[:1], out, "_truncated_header_src")[0].read_bytes()
    meta_end = raw.index(b"\x08\x00", 132 + 12)  # first group 0008 element after the file meta
    cut.write_bytes(raw[: meta_end + 40])
    add("truncated_header", [cut], 1, "none", note="file cut inside the first dataset elements")

    files = renamed(base, out, "truncated_pixels")
    files[3].write_bytes(files[3].read_bytes()[:-1000])
    add("truncated_pixels", files, 0, "failed", "cannot be made into a volume",
        "one file cut inside its pixel data (header intact): stored as received, the job says why")

    junk = out / "garbage" / "IM0001.dcm"
    junk.parent.mkdir(parents=True)
    meta_only = renamed(base[:1], out, "_garbage_src")[0].read_bytes()
    junk.write_bytes(meta_only[:meta_end] + np.random.default_rng(6).bytes(4000))
    add("garbage", [junk], 1, "none", note="valid file meta, random bytes as the dataset")

    files = renamed(base[:1], out, "no_series_uid", lambda ds, i: delattr(ds, "SeriesInstanceUID"))
    add("no_series_uid", files, 1, "none", note="no SeriesInstanceUID: cannot be filed")

    # --- pixel data --------------------------------------------------------------------------
    files = renamed(base, out, "missing_pixel_data", lambda ds, i: delattr(ds, "PixelData") if i == 2 else None)
    add("missing_pixel_data", files, 0, "failed", "cannot be made into a volume", "one instance without PixelData")

    def short(ds: Dataset, i: int) -> None:
        if i == 2:
            ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    add("short_pixel_data", renamed(base, out, "short_pixel_data", short), 0, "failed", "cannot be made into a volume",
        "PixelData half of Rows x Columns x BitsAllocated")

    def huge(ds: Dataset, i: int) -> None:
        ds.Rows = ds.Columns = 65535
    # the listener refuses a declared matrix over security.max_instance_bytes (0xC000); the volume
    # builder would otherwise allocate it before checking the pixel data length (MemoryError)
    add("huge_matrix_declared", renamed(base, out, "huge_matrix_declared", huge), n, "none", "",
        "Rows = Columns = 65535 declared (8.6 GB), small pixel data: refused at the listener")

    def bits8(ds: Dataset, i: int) -> None:
        a = ds.pixel_array.astype(np.float64)
        set_pixels(ds, np.clip(a / max(a.max(), 1) * 255, 0, 255).astype(np.uint8), 8, False)
    add("bits8", renamed(base, out, "bits8", bits8), 0, "done", note="8-bit unsigned pixels")

    def bits12(ds: Dataset, i: int) -> None:
        set_pixels(ds, np.clip(ds.pixel_array, 0, 4095).astype(np.uint16), 12, False)
    add("bits12", renamed(base, out, "bits12", bits12), 0, "done", note="12 bits stored in 16")

    def signed16(ds: Dataset, i: int) -> None:
        set_pixels(ds, (ds.pixel_array.astype(np.int32) - 2000).clip(-32768, 32767).astype(np.int16), 16, True)
    add("signed16", renamed(base, out, "signed16", signed16), 0, "done", note="signed 16-bit, negative values")

    for key in ("rle", "jpegls", "j2k"):
        add(f"compressed_{key}", series(f"compressed_{key}", transfer_syntax=TRANSFER_SYNTAXES[key]), 0, "done",
            note=f"{key} compressed, stored as received")

    # --- geometry ----------------------------------------------------------------------------
    def mixed(ds: Dataset, i: int) -> None:
        if i % 2:
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]  # axial among sagittal
    add("mixed_orientations", renamed(base, out, "mixed_orientations", mixed), 0, "failed", "orientation")

    def dup_pos(ds: Dataset, i: int) -> None:
        if i == 4:
            ds.ImagePositionPatient = pydicom.dcmread(base[3], stop_before_pixels=True).ImagePositionPatient
    add("duplicate_positions", renamed(base, out, "duplicate_positions", dup_pos), 0, "failed", "position")

    add("single_slice", renamed(base[n // 2: n // 2 + 1], out, "single_slice",
                                lambda ds, i: setattr(ds, "ImagesInAcquisition", 1)), 0, "failed",
        "cannot be made into a volume",
        "one slice is not a volume")

    def bad_spacing(ds: Dataset, i: int) -> None:
        ds.PixelSpacing = [-0.8, 0.0]
    add("negative_zero_spacing", renamed(base, out, "negative_zero_spacing", bad_spacing), 0, "failed",
        "PixelSpacing", "PixelSpacing [-0.8, 0.0]: the job fails once, before inference, not retried")

    def zero_iop(ds: Dataset, i: int) -> None:
        ds.ImageOrientationPatient = [0, 0, 0, 0, 0, 0]
    add("zero_orientation", renamed(base, out, "zero_orientation", zero_iop), 0, "ignored", "not matched",
        "ImageOrientationPatient all zero: no plane, so the spine rule does not match (the log says why)")

    def long_for(ds: Dataset, i: int) -> None:
        ds.FrameOfReferenceUID = "1.2." + "3" * 62
    add("long_frame_of_reference", renamed(base, out, "long_frame_of_reference", long_for), 0, "failed",
        "FrameOfReferenceUID", "66-character Frame of Reference UID: a SEG must share it, so the job fails "
        "before inference with the reason")

    def no_iop(ds: Dataset, i: int) -> None:
        del ds.ImageOrientationPatient
    add("missing_orientation", renamed(base, out, "missing_orientation", no_iop), 0, "ignored", "not matched",
        "no ImageOrientationPatient: the spine rule cannot tell the plane")

    # --- identity ----------------------------------------------------------------------------
    files = renamed(base, out, "duplicate_sop_uid")
    twin = pydicom.dcmread(files[5])
    twin.PixelData = bytes(len(twin.PixelData))  # same SOP Instance UID, other content
    files.append(write(twin, out / "duplicate_sop_uid" / "IM9999.dcm"))
    add("duplicate_sop_uid", files, 0, "done", note="same SOP Instance UID twice with different pixels: the later "
                                                     "one replaces the first, the series still has one per position")

    # a modality or anonymiser that reuses a Series UID in another study, same frame of reference:
    # two series, never one volume of two patients
    first = renamed(base, out, "reused_series_uid", lambda ds, i: setattr(ds, "PatientID", "CORPUS-A"))
    reused = str(pydicom.dcmread(first[0], stop_before_pixels=True).SeriesInstanceUID)

    def other_study(ds: Dataset, i: int) -> None:
        ds.SeriesInstanceUID, ds.PatientID = reused, "CORPUS-B"
    second = renamed(base, Path(out, "reused_series_uid"), "b", other_study)
    add("reused_series_uid", first + second, 0, "done", note="two studies (two patients) with one Series UID and "
        "one frame of reference: two series, each processed alone")

    files = renamed(base, out, "sop_uid_other_patient", lambda ds, i: setattr(ds, "PatientID", "CORPUS-C"))
    intruder = pydicom.dcmread(files[2])
    intruder.PatientID = "CORPUS-D"  # the same study, series and SOP Instance UID under another patient
    intruder.PixelData = bytes(len(intruder.PixelData))
    add("sop_uid_other_patient", [*files, write(intruder, out / "sop_uid_other_patient" / "IM9999.dcm")], 1,
        "done", note="an instance re-sent under another patient: refused (0xC000), never overwriting the first",
        accepted=files)

    def hostile(ds: Dataset, i: int) -> None:
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"../../../etc/{i}/passwd"
        ds.SeriesInstanceUID = "1.2/../../" + "9" * 200
        ds.StudyInstanceUID = "/tmp/study"
    files = renamed(base, out, "hostile_uids", hostile)
    add("hostile_uids", files, len(files), "none",
        note="UIDs with '../', '/' and 200 characters: refused at the door (0xC000 naming the UID), no inference")

    def ct(ds: Dataset, i: int) -> None:
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID(CT_IMAGE_STORAGE)
        ds.Modality = "CT"
    add("ct_to_spine_rule", renamed(base, out, "ct_to_spine_rule", ct), 0, "ignored", "not matched",
        "CT described as 'T2 SAG SPINE': not MR, not processed")

    for name, charset, person, outcome, reason, issue in (
        ("charset_latin1", "ISO_IR 100", "Müller^Jürgen", "done", "", ""),
        ("charset_utf8", "ISO_IR 192", "Łukasz^Żółć=李^小龍", "done", "", ""),
        # value 1 empty = the default repertoire with code extensions (Japanese, ISO 2022 IR 87)
        ("charset_iso2022_jp", ["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎", "done", "", ""),
    ):
        def cs(ds: Dataset, i: int, charset=charset, person=person) -> None:
            ds.SpecificCharacterSet = charset
            ds.PatientName = person
            ds.SeriesDescription = "T2 SAG SPINE"
        add(name, renamed(base, out, name, cs), 0, outcome, reason, f"{issue}PatientName {person!r} in {charset}")

    # --- other objects -----------------------------------------------------------------------
    enhanced = out / "enhanced_mr" / "IM0001.dcm"
    enhanced.parent.mkdir(parents=True)
    write(legacy_enhanced(renamed(base, out, "_enhanced_src")), enhanced)
    add("enhanced_mr", [enhanced], 0, "done", "", "Legacy Converted Enhanced MR, one multi-frame instance")

    for name, rel in (("sr_document", "dicom/highdicom/sr_document.dcm"), ("seg_object", "dicom/dcmqi/seg.dcm")):
        dst = out / name / "obj.dcm"
        dst.parent.mkdir(parents=True)
        shutil.copy(SHARED / rel, dst)
        dst.chmod(0o644)
        add(name, [dst], 0, "ignored", "not matched", "a result object sent to the node is kept, not processed")

    shutil.rmtree(out / "_base", ignore_errors=True)
    for tmp in out.glob("_*"):
        shutil.rmtree(tmp, ignore_errors=True)
    return cases


def legacy_enhanced(files: list[Path]) -> Dataset:
    """One Legacy Converted Enhanced MR instance from a classic series (highdicom)."""
    from highdicom.legacy import LegacyConvertedEnhancedMRImage

    legacy = [pydicom.dcmread(f) for f in files]
    return LegacyConvertedEnhancedMRImage(legacy, series_instance_uid=uid("enhanced", "series"), series_number=90,
                                          sop_instance_uid=uid("enhanced", "sop"), instance_number=1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    args = p.parse_args(argv)
    for case in make_corpus(args.out, args.source):
        print(f"{case.name:<24} {len(case.files):>3} file(s)  refused {case.refused}  -> {case.outcome:<8} {case.note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
