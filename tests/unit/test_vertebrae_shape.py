"""The cord-shape anchor cue: the normative CSA profile, the subject's profile from a mask, and the match."""
from __future__ import annotations

import numpy as np

from inference.rpi import RpiFrame
from inference.straighten import straighten
from inference.vertebrae import SCALES
from inference.vertebrae_shape import MIN_OVERLAP_MM, cord_profile, load_profile, shape_match
from tests.helpers.env import require_shared


def test_normative_profile_has_the_cervical_anatomy():
    """C2-C3 narrower than the cervical enlargement below it, the thoracic cord thinnest, the medulla wider."""
    p = load_profile()
    at = dict(zip(p.offset_mm.astype(int).tolist(), p.csa_mm2.tolist()))
    assert p.offset_mm[0] < -150 and p.offset_mm[-1] > 30  # T-spine up into the medulla, 1 mm bins
    assert np.all(np.diff(p.offset_mm) == 1)
    enlargement = max(at[k] for k in range(-45, -25))
    assert at[0] < enlargement - 4
    assert at[-150] < at[0] - 25
    assert at[35] > at[0] + 5


def _tube(radius_of_z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A straight synthetic cord along z (RPI, 1 mm voxels) whose radius follows radius_of_z."""
    n = radius_of_z.size
    yy, xx = np.mgrid[0:41, 0:41]
    cord = np.zeros((41, 41, n), dtype=np.uint8)
    for z, r in enumerate(radius_of_z):
        cord[:, :, z] = (xx - 20) ** 2 + (yy - 20) ** 2 <= r * r
    return cord, np.diag([1.0, 1.0, 1.0, 1.0])


def test_cord_profile_measures_area_per_mm():
    cord, affine = _tube(np.full(60, 5.0))
    straight = straighten(cord.astype(np.float32), cord, affine)
    prof = cord_profile(straight, RpiFrame.from_affine(affine, cord.shape).to_rpi(cord) > 0)
    inner = prof[np.isfinite(prof)]
    assert np.isnan(prof[0]) and np.isnan(prof[-1])  # the field of view cuts the first and last mm
    assert np.allclose(inner, cord[:, :, 30].sum(), rtol=0.02)


def test_shape_match_finds_a_synthetic_cord_made_from_the_profile():
    """A cord whose areas follow the normative profile (scaled by 0.8, ×1.05 spacing) puts C2-C3 where it is."""
    p = load_profile()
    c2c3 = 180
    z = np.arange(230)
    area = 0.8 * np.interp((z - c2c3) / 1.05, p.offset_mm, p.csa_mm2)
    cord, affine = _tube(np.sqrt(area / np.pi))
    straight = straighten(cord.astype(np.float32), cord, affine)
    prof = cord_profile(straight, RpiFrame.from_affine(affine, cord.shape).to_rpi(cord) > 0)
    scores = {r: shape_match(prof, r, SCALES) for r in range(60, 220)}
    best = max(scores, key=lambda r: scores[r])
    assert abs(best - c2c3) <= 3
    assert scores[best] > 0.95
    assert scores[100] < scores[best] - 0.2  # far-off rows are clearly worse


def test_shape_match_says_nothing_on_a_short_cord():
    prof = np.full(200, np.nan)
    prof[100:100 + int(MIN_OVERLAP_MM) // 2] = 70.0
    assert shape_match(prof, 110, SCALES) == 0.0


def test_real_cord_prefers_its_c2c3_region_over_the_thoracic_cord():
    """errsm_11 (C2-C3 about 195 mm along the cord): the cervical placement beats one 90 mm lower."""
    import nibabel as nib

    img = nib.load(require_shared("spine-t2-sag/errsm_11/t2.nii.gz"))
    cord = np.asanyarray(nib.load(require_shared("spine-t2-sag/errsm_11/t2_seg-manual.nii.gz")).dataobj) > 0.5
    straight = straighten(np.asanyarray(img.dataobj).astype(np.float32), cord, img.affine)
    prof = cord_profile(straight, straight.frame.to_rpi(cord) > 0.5)
    assert shape_match(prof, 195, SCALES) > shape_match(prof, 105, SCALES) + 0.2
