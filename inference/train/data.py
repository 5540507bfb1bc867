"""Training data: the real labelled volumes, their subject-level split, and a model-space cache.

Why a cache: every volume goes once through exactly what inference does (RAS by
flips/permutations, resampling to the model spacing, z-score with whole-volume statistics)
and is kept as .npy in var/, so a training step only crops, paints and augments a patch.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import nibabel as nib
import numpy as np

from inference import preprocess

if TYPE_CHECKING:
    from nibabel.spatialimages import SpatialImage

DATA_ROOT = Path("/work/shared/data")
SPLIT_FILE = Path(__file__).resolve().parent / "split.json"
DEFAULT_CACHE = Path("var/cache")


@dataclass(frozen=True)
class Subject:
    """One labelled volume. `group` decides sampling weight; `subject` keeps people together."""

    key: str  # unique volume id
    subject: str  # person (volumes of one person never straddle the split)
    group: str  # "sag_t2" | "ax_t2star" | "crop"
    image: str  # relative to the data root
    cord: str
    lesion: str | None = None  # real (painted by SCT) lesion label, if any

    @property
    def lesion_sign(self) -> float:
        """Lesions are bright on T2/T2*, dark on T1."""
        return -1.0 if "t1w" in self.key.lower() else 1.0


SUBJECTS: tuple[Subject, ...] = (
    Subject("errsm_11", "errsm_11", "sag_t2", "spine-t2-sag/errsm_11/t2.nii.gz",
            "spine-t2-sag/errsm_11/t2_seg-manual.nii.gz"),
    Subject("errsm_18", "errsm_18", "sag_t2", "spine-t2-sag/errsm_18/t2.nii.gz",
            "spine-t2-sag/errsm_18/t2_seg-manual.nii.gz"),
    Subject("errsm_21", "errsm_21", "sag_t2", "spine-t2-sag/errsm_21/t2.nii.gz",
            "spine-t2-sag/errsm_21/t2_seg-manual.nii.gz"),
    Subject("sct_example", "sct_example", "sag_t2", "spine-t2-sag/sct_example/t2.nii.gz",
            "spine-t2-sag/sct_example/t2_seg-semiauto.nii.gz"),
    # same person as sct_example (SCT example data): always on the same side of the split
    Subject("lesion_example", "sct_example", "crop", "lesion-example/t2_fake_lesion.nii.gz",
            "lesion-example/t2_fake_lesion_sc_seg.nii.gz",
            "lesion-example/t2_fake_lesion_lesion_seg.nii.gz"),
    *(Subject(f"t2s_{s}", s.replace("Ses1", "").replace("Ses2", ""), "ax_t2star",
              f"t2star-axial/sub-{s}/T2starw.nii.gz", f"t2star-axial/sub-{s}/T2starw_seg-manual.nii.gz")
      for s in ("10062Ses1", "10062Ses2", "9418", "9584", "9669")),
    *(Subject(f"unf01_{c}", "unf01", "crop", f"multi-contrast/sub-unf01_{c}.nii.gz",
              f"multi-contrast/sub-unf01_{c}_seg-manual.nii.gz") for c in ("T2w", "T2star", "T1w")),
    Subject("sct_testing_t1w", "sct_testing", "crop", "multi-contrast/sct_testing_t1w.nii.gz",
            "multi-contrast/sct_testing_t1w_seg-manual.nii.gz"),
)
BY_KEY = {s.key: s for s in SUBJECTS}


def load_split(path: Path = SPLIT_FILE) -> dict[str, list[str]]:
    """{"train": [keys], "val": [keys]}; checks that no person is on both sides."""
    split = json.loads(Path(path).read_text(encoding="utf-8"))
    for side in ("train", "val"):
        unknown = [k for k in split.get(side, []) if k not in BY_KEY]
        if unknown:
            raise ValueError(f"{path}: unknown volume keys {unknown} in {side!r}; known: {sorted(BY_KEY)}")
    people = {side: {BY_KEY[k].subject for k in split[side]} for side in ("train", "val")}
    both = people["train"] & people["val"]
    if both:
        raise ValueError(
            f"{path}: subjects {sorted(both)} are in both train and val; move all their volumes to one side")
    return split


@dataclass
class CachedVolume:
    """A volume in model space: z-scored image, cord and lesion labels, and intensity levels."""

    key: str
    group: str
    image: np.ndarray  # float32, z-scored with whole-volume statistics (as the engine does)
    cord: np.ndarray  # uint8
    lesion: np.ndarray  # uint8 (all zero unless the source has a lesion label)
    air: float  # value raw 0 takes after z-scoring (the engine pads with it)
    cord_level: float
    csf_level: float
    cord_idx: np.ndarray  # (N, 3) int32 cord voxel indices, for foreground-biased sampling
    slab: tuple[float, float, float] = (1.0, 1.0, 1.0)  # source voxel size / model spacing per model axis


def load_labelled(sub: Subject, root: Path = DATA_ROOT) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """(image, cord, lesion or None, affine) in the source grid, labels binarised."""
    img = _load(root / sub.image)
    cord = np.asanyarray(_load(root / sub.cord).dataobj) > 0.5
    lesion = None
    if sub.lesion:
        lesion = np.asanyarray(_load(root / sub.lesion).dataobj) > 0.5
    return np.asanyarray(img.dataobj).astype(np.float32), cord, lesion, img.affine


def _load(path: Path) -> SpatialImage:
    """nib.load, typed: it is annotated for every format it reads; a NIfTI file loads as a SpatialImage."""
    return cast("SpatialImage", nib.load(str(path)))


def acquisition_slab(sub: Subject, spacing: tuple[float, float, float],
                     root: Path = DATA_ROOT) -> tuple[float, float, float]:
    """Source voxel size over model spacing along each model (RAS) axis, from the header only."""
    img = _load(root / sub.image)
    reo = preprocess.reorient_to_ras(img.affine, img.shape[:3])
    src = preprocess.voxel_sizes(reo.affine_ras)
    sx, sy, sz = (float(s / m) for s, m in zip(src, spacing))
    return sx, sy, sz


def to_model_space(sub: Subject, spacing: tuple[float, float, float],
                   root: Path = DATA_ROOT) -> CachedVolume:
    """Source files -> CachedVolume, through inference.preprocess so training sees what inference sees."""
    from inference.train.lesions import intensity_levels

    image, cord, lesion, affine = load_labelled(sub, root)
    img_m, _ = preprocess.to_model_space(image, affine, spacing, order=1)
    cord_m, _ = preprocess.to_model_space(cord.astype(np.float32), affine, spacing, order=1)
    les_m = (preprocess.to_model_space(lesion.astype(np.float32), affine, spacing, order=1)[0] > 0.5
             if lesion is not None else np.zeros(img_m.shape, bool))
    mean, std = preprocess.zscore_params(img_m)
    z = ((img_m - mean) / std).astype(np.float32)
    cord_b = (cord_m > 0.5) | les_m
    cord_level, csf_level = intensity_levels(z, cord_b, spacing, sub.lesion_sign)
    return CachedVolume(key=sub.key, group=sub.group, image=z, cord=cord_b.astype(np.uint8),
                        lesion=les_m.astype(np.uint8), air=float((0.0 - mean) / std),
                        cord_level=cord_level, csf_level=csf_level,
                        cord_idx=np.argwhere(cord_b).astype(np.int32),
                        slab=acquisition_slab(sub, spacing, root))


def build_cache(keys: list[str], spacing: tuple[float, float, float], cache: Path = DEFAULT_CACHE,
                root: Path = DATA_ROOT) -> list[CachedVolume]:
    """Load (or create) the model-space cache for `keys`; the folder name encodes the spacing."""
    folder = Path(cache) / ("sp_" + "_".join(f"{s:g}" for s in spacing))
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for key in keys:
        meta_path = folder / f"{key}.json"
        if meta_path.is_file():
            meta = json.loads(meta_path.read_text())
            arrays = {n: np.load(folder / f"{key}.{n}.npy") for n in ("image", "cord", "lesion")}
            out.append(CachedVolume(key=key, group=meta["group"], air=meta["air"],
                                    cord_level=meta["cord_level"], csf_level=meta["csf_level"],
                                    cord_idx=np.argwhere(arrays["cord"] > 0).astype(np.int32),
                                    slab=acquisition_slab(BY_KEY[key], spacing, root), **arrays))
            continue
        vol = to_model_space(BY_KEY[key], spacing, root)
        for n in ("image", "cord", "lesion"):
            np.save(folder / f"{key}.{n}.npy", getattr(vol, n))
        meta_path.write_text(json.dumps({"group": vol.group, "air": vol.air, "cord_level": vol.cord_level,
                                         "csf_level": vol.csf_level, "shape": list(vol.image.shape)}))
        out.append(vol)
    return out
