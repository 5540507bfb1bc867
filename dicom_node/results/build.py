"""One analysis -> every result file its destinations ask for, each validated, and what to send where.

Why one call: which SEG variant a destination gets, which UIDs a re-run must reuse, how an SR
points at the SR it replaces and at its own SEG, and the gate before anything is queued belong
together; the worker only asks for them (``build_results``) and hands the deliveries to the jobs.

Per SEG variant a destination asks for (binary, fractional or the OHIF profile's byte frames; all
frames or only non-empty ones) one SEG + SR pair is written, the SR referencing its own SEG;
Secondary Captures once if any destination wants them. Every file passes dciodvfy and a highdicom read-back first.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import pydicom
from pydicom.uid import generate_uid

from dicom_node.config import DestinationSettings
from dicom_node.jobs import Delivery
from dicom_node.results.readback import ResultValidationError
from dicom_node.results.secondary_capture import build_secondary_captures, render_seg_png
from dicom_node.results.seg import build_seg
from dicom_node.results.sr import build_sr
from dicom_node.results.validate import SEG_STORAGE, check_result, write_result
from inference.api import Analysis, Volume, atomic_write

log = logging.getLogger(__name__)

DEFAULT_VARIANT = "binary"
# "ohif": the destination's viewer is OHIF (viewer: ohif), which misreads bit-packed frames of odd
# size; its SEG has byte frames (seg.build_seg(byte_frames=True)), read right for any Rows x Columns
VARIANTS = ("binary", "binary-sparse", "fractional", "fractional-sparse", "ohif", "ohif-sparse")
PAIR_KEYS = ("seg_series", "seg_sop", "sr_series", "sr_sop")
SC_IMAGES = 3  # key slices burned into Secondary Captures, for PACS that cannot show SEG
THUMB_SIZE = (480, 320)


class ResultRejected(ValueError):
    """A result failed the gate (dciodvfy errors or read-back): the job fails with this reason, no retry."""


def seg_variant(dest: DestinationSettings) -> str:
    """Which SEG a destination gets: its viewer's encoding (OHIF: byte frames; generic: binary or
    fractional), all frames or only non-empty ones."""
    if dest.viewer == "ohif":
        kind = "ohif"
    else:
        kind = "fractional" if dest.seg_fractional else "binary"
    return f"{kind}-sparse" if dest.seg_omit_empty_frames else kind


class SegOptions(TypedDict):
    omit_empty_frames: bool
    fractional: bool
    byte_frames: bool


def seg_options(variant: str) -> SegOptions:
    """build_seg's keyword options for one variant name."""
    kind = variant.removesuffix("-sparse")
    return {"omit_empty_frames": variant.endswith("-sparse"), "fractional": kind == "fractional",
            "byte_frames": kind == "ohif"}


def _uid_prefix(variant: str) -> str:
    """The default pair keeps flat keys (seg_sop, ...); other variants prefix them ("fractional.seg_sop")."""
    return "" if variant == DEFAULT_VARIANT else f"{variant}."


def variant_uids(uids: Mapping[str, Any], variant: str) -> dict[str, str]:
    return {k: uids[_uid_prefix(variant) + k] for k in PAIR_KEYS}


def new_result_uids() -> dict[str, Any]:
    """UIDs of every result a job can produce, made once and kept by the job: a re-run or re-send
    reuses them. Flat keys seg_series/seg_sop/sr_series/sr_sop are the default (binary, all frames)
    pair; other SEG variants use keys prefixed "VARIANT."; Secondary Captures sc_series/sc_sops."""
    uids: dict[str, Any] = {_uid_prefix(v) + k: generate_uid() for v in VARIANTS for k in PAIR_KEYS}
    uids["sc_series"] = generate_uid()
    uids["sc_sops"] = [generate_uid() for _ in range(SC_IMAGES)]
    return uids


def complete_result_uids(uids: Mapping[str, Any]) -> dict[str, Any]:
    """Kept UIDs plus new ones for variants they lack: a job kept by an older release (before the
    "ohif" variant) must still build every variant; the caller keeps the result when it grew."""
    fresh = new_result_uids()
    return {**fresh, **uids}


@dataclass(frozen=True)
class ResultFile:
    kind: str  # seg | sr | scN
    path: Path
    sop_instance_uid: str


def _gated(ds: pydicom.Dataset, path: Path) -> Path:
    return _checked(write_result(ds, path))


def _checked(path: Path) -> Path:
    """A written result through the gate: dciodvfy without errors, then highdicom read-back."""
    try:
        check_result(path)
    except ResultValidationError as exc:
        raise ResultRejected(str(exc)) from None
    return path


def build_results(source: Sequence[pydicom.Dataset], volume: Volume, analysis: Analysis,
                  destinations: Mapping[str, DestinationSettings], out_dir: Path, data_dir: Path,
                  uids: Mapping[str, Any], previous_uids: Mapping[str, Any] | None) -> list[Delivery]:
    """Write and validate the results for ``destinations`` into ``out_dir``; the deliveries to queue.

    ``uids`` are the job's kept result UIDs (``new_result_uids``); ``previous_uids`` those of the
    job this one supersedes, whose SR each new SR names as its predecessor.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    pairs: dict[str, list[ResultFile]] = {}
    for dest in destinations.values():
        variant = seg_variant(dest)
        if variant not in pairs:
            pairs[variant] = _seg_sr_pair(source, volume, analysis, variant, out_dir, uids, previous_uids)
    captures: list[ResultFile] = []
    if any(dest.secondary_capture for dest in destinations.values()):
        sc = build_secondary_captures(source, volume.frames, analysis, series_uid=uids["sc_series"],
                                      sop_instance_uids=uids["sc_sops"])
        captures = [ResultFile(f"sc{n}", _gated(ds, out_dir / f"sc-{n}.dcm"), str(ds.SOPInstanceUID))
                    for n, ds in enumerate(sc, 1)]
    deliveries = []
    for key, dest in destinations.items():
        wanted = {"seg": dest.send_seg, "sr": dest.send_sr}
        files = [f for f in pairs[seg_variant(dest)] if wanted[f.kind]]
        files += captures if dest.secondary_capture else []
        deliveries += [Delivery(key, f.kind, f.sop_instance_uid, str(f.path.relative_to(data_dir))) for f in files]
    return deliveries


def _seg_sr_pair(source: Sequence[pydicom.Dataset], volume: Volume, analysis: Analysis, variant: str,
                 out_dir: Path, uids: Mapping[str, Any], previous_uids: Mapping[str, Any] | None) -> list[ResultFile]:
    """The SEG of one variant and the SR that references it, both through the gate."""
    ids = variant_uids(uids, variant)
    suffix = "" if variant == DEFAULT_VARIANT else f"-{variant}"
    seg = build_seg(source, volume.frames, analysis, series_uid=ids["seg_series"], sop_instance_uid=ids["seg_sop"],
                    **seg_options(variant))
    previous = None  # the superseded SR of the same variant, for the predecessor reference
    if previous_uids is not None and all(_uid_prefix(variant) + k in previous_uids for k in PAIR_KEYS):
        # (a job of an older release may lack this variant: then it sent no SR of it to supersede)
        old = variant_uids(previous_uids, variant)
        previous = {"series_uid": old["sr_series"], "sop_instance_uid": old["sr_sop"]}
    # the written SEG file goes through the gate (dciodvfy: another process, on the other core) while
    # the SR is built; the gate reads the file only, never the dataset build_sr reads
    seg_file = write_result(seg, out_dir / f"seg{suffix}.dcm")
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="seg-gate") as pool:
        seg_gate = pool.submit(_checked, seg_file)
        sr = build_sr(source, analysis, seg, frames=volume.frames, series_uid=ids["sr_series"],
                      sop_instance_uid=ids["sr_sop"], previous_sr=previous)
        sr_path = _gated(sr, out_dir / f"sr{suffix}.dcm")
        seg_path = seg_gate.result()
    return [ResultFile("seg", seg_path, ids["seg_sop"]), ResultFile("sr", sr_path, ids["sr_sop"])]


def preload_encoders() -> None:
    """Have highdicom read its tables of the standard (the modules of each IOD, the attributes of
    each module: about 0.3 s of JSON) now. It reads them, once per process, when the first object
    is made, so the first case after a (re)start paid them in its encoding (issue 21)."""
    import highdicom as hd

    hd.base.SOPClass(study_instance_uid=generate_uid(), series_instance_uid=generate_uid(), series_number=1,
                     sop_instance_uid=generate_uid(), sop_class_uid=SEG_STORAGE, instance_number=1, modality="SEG")


def write_thumbnail(volume: Volume, analysis: Analysis, path: Path) -> None:
    """A small cord/lesion overlay PNG for the status page. Never fails the job: it is not a result,
    so the worker draws it after the results are queued (dispatch need not wait for it)."""
    try:
        from PIL import Image

        def render(tmp: Path) -> None:  # tmp keeps the .png ending: PIL picks the format by it
            render_seg_png(volume, (analysis.cord_mask, analysis.lesion_mask), tmp)
            with Image.open(tmp) as img:
                img.thumbnail(THUMB_SIZE)
                img.save(tmp, format="PNG")

        atomic_write(path, render)
    except Exception as exc:
        log.warning("overlay thumbnail %s not written: %s", path, exc)
