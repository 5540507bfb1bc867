"""The real MS scan t2_ms_axial cropped for tests of SCT's lesion models (a crop keeps them short)."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from tests.helpers.env import require_shared

CROP = (slice(96, 224), slice(64, 192), slice(None))  # 88 x 88 mm around the cord, every slice


def cropped_ms_scan(out: Path) -> Path:
    """t2_ms_axial cut to CROP, its affine moved with it (the same voxels in the same place), as ``out``."""
    img = nib.load(require_shared("unlabelled/t2_ms_axial.nii.gz"))
    affine = img.affine.copy()
    affine[:3, 3] = img.affine[:3, :3] @ np.array([CROP[0].start, CROP[1].start, 0]) + img.affine[:3, 3]
    out.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj)[CROP], affine), str(out))
    return out
