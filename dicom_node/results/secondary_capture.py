"""Fallback for viewers without SEG support, and the picture a human checks.

- ``build_secondary_captures``: a few key source slices with the cord (green) and lesions (red)
  burned in, as RGB Secondary Capture images in a new series of the same study. They are
  marked BurnedInAnnotation YES, ImageComments and a visible "NOT FOR DIAGNOSIS" label: a
  burned-in overlay hides the pixels under it, so these must never be read as the image.
- ``render_seg_png``: decodes a written SEG back onto the source volume (by each SEG frame's
  references) and draws it with ``inference.qc.render_overlay``; what is drawn is what the
  SEG says, not what the model meant, so it checks the whole encode path by eye.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from PIL import Image, ImageDraw

from dicom_node.results.readback import seg_masks_on_source
from dicom_node.results.seg import CORD_SEGMENT, DEFAULT_MANUFACTURER, ResultBuildError, order_source
from inference.api import Analysis, FrameRef, Volume, render_overlay

SC_SERIES_NUMBER = 9903
NOT_FOR_DIAGNOSIS = "NOT FOR DIAGNOSIS"
CORD_RGB = np.array([40, 220, 60], np.float32)
LESION_RGB = np.array([235, 30, 30], np.float32)


def key_slices(cord: np.ndarray, lesion: np.ndarray, n: int = 3) -> list[int]:
    """Slice indices k worth showing: most lesion first, then most cord, then spread over the cord."""
    picks: list[int] = []
    if lesion.any():
        picks.append(int(lesion.sum(axis=(0, 1)).argmax()))
    ks = np.nonzero(cord.any(axis=(0, 1)))[0]
    if ks.size:
        picks.append(int(cord.sum(axis=(0, 1)).argmax()))
        picks += [int(ks[int(round(q * (ks.size - 1)))]) for q in (0.25, 0.75)]
    else:
        picks.append(cord.shape[2] // 2)
    return list(dict.fromkeys(picks))[:n]


def patient_orientation(ds: pydicom.Dataset) -> tuple[str, str]:
    """Dominant patient direction of the rows and columns (LPS letters), e.g. ('P', 'F') for a sagittal."""
    iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
    letters = (("R", "L"), ("A", "P"), ("F", "H"))

    def one(v: np.ndarray) -> str:
        axis = int(np.argmax(np.abs(v)))
        return letters[axis][int(v[axis] > 0)]

    return one(iop[:3]), one(iop[3:])


def _outline(mask: np.ndarray) -> np.ndarray:
    m = np.pad(mask, 1)
    inner = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    edge: np.ndarray = mask & ~inner
    return edge


def zoom_factor(rows: int, columns: int, target: int = 256, most: int = 8) -> int:
    """Integer upscale so the smaller side reaches ``target`` px: a label must not hide a small image."""
    return int(min(most, max(1, -(-target // max(1, min(rows, columns))))))


def burn_overlay(gray: np.ndarray, cord: np.ndarray, lesion: np.ndarray, label: str, zoom: int = 1) -> np.ndarray:
    """(Rows, Columns) frame + masks -> RGB uint8 (``zoom`` times larger, nearest neighbour) with
    fills, outlines and the warning label."""
    if zoom > 1:
        gray, cord, lesion = (np.repeat(np.repeat(a, zoom, axis=0), zoom, axis=1) for a in (gray, cord, lesion))
    body = gray[gray > 0]
    lo, hi = np.percentile(body if body.size > 100 else gray, [0.5, 99.5])
    g = np.clip((gray.astype(np.float32) - lo) / max(hi - lo, 1e-6), 0, 1) * 255
    rgb = np.repeat(g[..., None], 3, axis=2)
    c, les = cord > 0, lesion > 0
    rgb[c] = 0.7 * rgb[c] + 0.3 * CORD_RGB
    rgb[_outline(c)] = CORD_RGB
    rgb[les] = 0.45 * rgb[les] + 0.55 * LESION_RGB
    rgb[_outline(les)] = LESION_RGB
    img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, img.width, 12], fill=(0, 0, 0))
    draw.text((2, 1), f"{NOT_FOR_DIAGNOSIS} - {label}", fill=(255, 255, 0))
    return np.asarray(img)


def build_secondary_captures(
    source: Sequence[pydicom.Dataset],
    frames: list[FrameRef],
    analysis: Analysis,
    *,
    series_uid: str,
    sop_instance_uids: Sequence[str],
    series_number: int = SC_SERIES_NUMBER,
    manufacturer: str = DEFAULT_MANUFACTURER,
) -> list[pydicom.Dataset]:
    """One RGB Secondary Capture per key slice (as many as ``sop_instance_uids``, in order)."""
    if not sop_instance_uids:
        raise ResultBuildError("build_secondary_captures needs at least one SOP Instance UID")
    shape = analysis.cord_mask.shape
    order_source(source, frames, shape)  # same consistency checks as the SEG
    by_uid = {str(ds.SOPInstanceUID): ds for ds in source}
    lesion = analysis.lesion_labels > 0
    model = f"{analysis.model.name} v{analysis.model.version}"
    out: list[pydicom.Dataset] = []
    for n, k in enumerate(key_slices(analysis.cord_mask, lesion, len(sop_instance_uids))):
        ref = frames[k]
        src = by_uid[ref.sop_instance_uid]
        pixels = src.pixel_array
        if int(getattr(src, "NumberOfFrames", 1)) > 1:
            pixels = pixels[ref.frame_number - 1]
        zoom = zoom_factor(*pixels.shape)
        rgb = burn_overlay(pixels, analysis.cord_mask[:, :, k].T, lesion[:, :, k].T, model, zoom)
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=src, pixel_array=rgb, photometric_interpretation="RGB", bits_allocated=8,
            coordinate_system="PATIENT", series_instance_uid=series_uid, series_number=series_number,
            sop_instance_uid=sop_instance_uids[n], instance_number=n + 1, manufacturer=manufacturer,
            # highdicom annotates from_ref_dataset's pixel_spacing as tuple[int, int]; SCImage() itself
            # takes the floats (mm) it writes to PixelSpacing
            pixel_spacing=tuple(float(v) / zoom for v in src.PixelSpacing),  # type: ignore[arg-type]
            patient_orientation=patient_orientation(src),
            transfer_syntax_uid=pydicom.uid.ExplicitVRLittleEndian,
        )
        if "BodyPartExamined" in src:  # tells dciodvfy the part is unpaired (no Laterality needed)
            sc.BodyPartExamined = src.BodyPartExamined
        else:
            sc.Laterality = ""
        sc.BurnedInAnnotation = "YES"
        sc.ImageComments = (f"{NOT_FOR_DIAGNOSIS}: cord (green) and lesions (red) by {model} burned in "
                            f"on source slice {k + 1}, enlarged {zoom}x")
        sc.SeriesDescription = f"SC+lesion overlay ({model}) {NOT_FOR_DIAGNOSIS}"[:64]
        sc.DerivationDescription = "Segmentation overlay burned into a copy of the source image"
        item = pydicom.Dataset()
        item.ReferencedSOPClassUID = src.SOPClassUID
        item.ReferencedSOPInstanceUID = src.SOPInstanceUID
        if int(getattr(src, "NumberOfFrames", 1)) > 1:
            item.ReferencedFrameNumber = ref.frame_number
        sc.SourceImageSequence = [item]
        out.append(sc)
    return out


def render_seg_png(
    source_volume: Volume,
    seg_or_masks: pydicom.Dataset | str | Path | tuple[np.ndarray, np.ndarray],
    out_png: str | Path,
    *,
    title: str | None = None,
) -> Path:
    """PNG of the SEG decoded onto ``source_volume`` (or of (cord, lesion) masks in its grid).

    A FRACTIONAL cord is drawn where the probability is at least 0.5; all lesion segments in red.
    """
    shape = source_volume.array.shape
    if isinstance(seg_or_masks, tuple):
        cord, lesion = (np.asarray(m) > 0 for m in seg_or_masks)
    else:
        if len(source_volume.frames) != shape[2]:
            raise ResultBuildError("render_seg_png needs a Volume read from DICOM (frames per slice)")
        masks = seg_masks_on_source(seg_or_masks, source_volume.frames, shape)
        cord = masks.get(CORD_SEGMENT, np.zeros(shape)) >= 0.5
        lesion = np.zeros(shape, dtype=bool)
        for number, mask in masks.items():
            if number != CORD_SEGMENT:
                lesion |= mask >= 0.5
    picture = render_overlay(source_volume.array, cord, lesion, source_volume.affine, title=title)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    picture.save(out_png)
    return out_png
