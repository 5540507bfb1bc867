"""Real-data cases for the SEG/SR tests: a source DICOM series plus an ``Analysis`` in its grid.

Built from ``lesion-example/`` (real T2 crop, 0.8 mm, real cord mask, painted lesion) with a
second lesion painted in, written as sagittal, axial or 15-degree oblique series by
``testbed.series.write_series`` and read back by ``volume_from_datasets``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from scipy import ndimage

from inference.biomarkers import analyze_lesions
from inference.measurements import Measurements
from inference.pipeline import Analysis, ModelIdentity
from inference.volume import FrameRef, Volume, align_array, volume_from_datasets
from testbed.series import rotated_affine, write_series

MODEL = ModelIdentity(name="spinecord-t2", version="0.1.0", description="test model identity")


@dataclass
class Case:
    """Source series + analysis in the source's own grid."""

    source: list[pydicom.Dataset]
    frames: list[FrameRef]
    image: np.ndarray  # [i, j, k] stored pixel values of the source
    analysis: Analysis
    paths: list[Path]


def _load(shared: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    base = shared / "lesion-example"
    img = nib.load(str(base / "t2_fake_lesion.nii.gz"))
    image = np.asarray(img.dataobj).astype(np.int16)
    cord = (np.asarray(nib.load(str(base / "t2_fake_lesion_sc_seg.nii.gz")).dataobj) > 0).astype(np.uint8)
    lesion = (np.asarray(nib.load(str(base / "t2_fake_lesion_lesion_seg.nii.gz")).dataobj) > 0).astype(np.uint8)
    return image, cord, lesion, np.asarray(img.affine, dtype=np.float64)


def _paint_second_lesion(cord: np.ndarray, lesion: np.ndarray) -> np.ndarray:
    """A small second lesion inside the cord, well away (along S, axis 1) from the first."""
    out = lesion.copy()
    first_s = np.argwhere(lesion > 0)[:, 1]
    s = int(first_s.max()) + 8  # separate component, and both fit in the 40-slice axial crop
    pts = np.argwhere(cord[:, s - 2:s + 3, :] > 0)
    ci, ck = np.round(pts[:, 0].mean()).astype(int), np.round(pts[:, 2].mean()).astype(int)
    out[ci - 1:ci + 2, s - 2:s + 2, ck - 1:ck + 2] = 1
    return out * cord


def make_case(
    shared: Path,
    out_dir: Path,
    orientation: str = "sagittal",
    *,
    lesions: int = 2,
    empty_cord: bool = False,
) -> Case:
    """orientation: 'sagittal' | 'axial' (40 slices) | 'oblique' (sagittal rotated 15 degrees).

    The series is written by ``write_series`` and read back by ``volume_from_datasets`` (the
    worker's path); the masks are laid onto the reader's grid with ``align_array`` (no
    resampling), so the analysis is in the grid the node would really have.
    """
    image, cord, lesion, affine = _load(shared)
    if lesions == 2:
        lesion = _paint_second_lesion(cord, lesion)
    elif lesions == 0:
        lesion = np.zeros_like(lesion)
    if empty_cord:
        cord, lesion = np.zeros_like(cord), np.zeros_like(lesion)
    slice_axis = 2
    if orientation == "axial":  # slices along S (array axis 1), cropped to 40 around the lesions
        lo = 10
        image, cord, lesion = (a[:, lo:lo + 40, :] for a in (image, cord, lesion))
        affine = affine.copy()
        affine[:3, 3] = affine[:3, 3] + lo * affine[:3, 1]
        slice_axis = 1
    elif orientation == "oblique":
        affine = rotated_affine(affine, image.shape, 15.0, "row", 2)
    elif orientation != "sagittal":
        raise ValueError(orientation)

    paths = write_series(
        Volume(array=image.astype(np.float32), affine=affine), out_dir, slice_axis=slice_axis,
        uid_seed=f"results-{orientation}", series_description=f"T2 {orientation}",
    )
    datasets = [pydicom.dcmread(p) for p in paths]
    volume = volume_from_datasets(datasets)
    grid = volume.array.shape
    cord, lesion = (align_array(a, affine, volume.affine, grid).astype(np.uint8) for a in (cord, lesion))
    expected_image = align_array(image, affine, volume.affine, grid).astype(np.float32)
    assert np.array_equal(volume.array, expected_image), "reader and writer disagree on the image"
    by_uid = {str(ds.SOPInstanceUID): ds for ds in datasets}
    source = [by_uid[f.sop_instance_uid] for f in dict.fromkeys(volume.frames)]
    source = source[1::2] + source[0::2]  # build_seg must order by frames, not by list order

    report = analyze_lesions(lesion, cord, volume.affine)
    labels = report.label_map.astype(np.int32)
    vox = float(abs(np.linalg.det(volume.affine[:3, :3])))
    per_slice = [float(cord[:, :, k].sum()) * vox for k in range(grid[2])]  # test values only
    measurements = report.to_json() | {
        "cord_csa_mm2_mean": float(np.mean([v for v in per_slice if v > 0])) if cord.any() else None,
        "cord_csa_mm2_per_slice": per_slice,
        "cord_volume_mm3": float(cord.sum()) * vox,
        "lesion_count": len(report.lesions),
    }
    prob = np.clip(ndimage.gaussian_filter(cord.astype(np.float32), 0.8), 0, 1).astype(np.float32)
    analysis = Analysis(
        cord_mask=cord, lesion_mask=(labels > 0).astype(np.uint8), lesion_labels=labels,
        cord_prob=prob, affine=volume.affine, metrics=Measurements.from_json(measurements), model=MODEL,
    )
    return Case(source=source, frames=list(volume.frames), image=volume.array, analysis=analysis, paths=paths)


def frame_pixels(case: Case, k: int) -> np.ndarray:
    """Stored pixels of the source frame that volume slice k came from."""
    ref = case.frames[k]
    ds = next(d for d in case.source if str(d.SOPInstanceUID) == ref.sop_instance_uid)
    return ds.pixel_array if int(getattr(ds, "NumberOfFrames", 1)) == 1 else ds.pixel_array[ref.frame_number - 1]


def private_codes(ds: pydicom.Dataset, scheme: str = "99SPINE") -> set[str]:
    """Every code value of our private coding scheme anywhere in ``ds`` (SR content, nested)."""
    used: set[str] = set()

    def walk(node: pydicom.Dataset) -> None:
        for elem in node:
            if elem.VR == "SQ":
                for item in elem.value:
                    if getattr(item, "CodingSchemeDesignator", None) == scheme and "CodeValue" in item:
                        used.add(str(item.CodeValue))
                    walk(item)

    walk(ds)
    return used


def multiframe_case(case: Case) -> tuple[Case, pydicom.Dataset]:
    """``case`` as one enhanced multi-frame MR instance whose frames are stored in reverse, so that a
    result must name (instance, frame number), not just the instance: the case on it, and the instance."""
    import io

    from highdicom.legacy import LegacyConvertedEnhancedMRImage
    from pydicom.uid import generate_uid

    multi = LegacyConvertedEnhancedMRImage(
        [pydicom.dcmread(p) for p in case.paths][::-1], series_instance_uid=generate_uid(), series_number=98,
        sop_instance_uid=generate_uid(), instance_number=1)
    buf = io.BytesIO()
    multi.save_as(buf, enforce_file_format=True)
    multi = pydicom.dcmread(io.BytesIO(buf.getvalue()))
    volume = volume_from_datasets([multi])
    return Case(source=[multi] * len(volume.frames), frames=list(volume.frames), image=volume.array,
                analysis=case.analysis, paths=[]), multi
