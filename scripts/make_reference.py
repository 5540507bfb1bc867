"""Build the two small reference files the vertebral levels and per-level CSA rely on.

Run from the repository root (the data lies beside it, in ../shared/data):

    python scripts/make_reference.py [--data ../shared/data]

It writes, in inference/reference/:
- ``pam50_t2_straight.npz``: the cropped PAM50 T2 intensity template (sct_testing_data, MIT), already
  straight, reduced to a mid-sagittal slab (5 mm thick) in the straightened frame of inference.straighten
  (rows along the cord, columns = depth from the centreline) with the template's disc positions.
- ``csa_normative.json``: cord CSA per vertebral level in 203 healthy adults (PAM50-normalized-metrics,
  spine-generic multi-subject, MIT), per level the mean, SD and count for all adults, per sex, per age band
  and per sex and age band.

Both are derived, never edited by hand: a change to either is a change to this script.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "inference" / "reference"
TEMPLATE_DIR = "sct-testing/pam50-small"
METRICS_DIR = "pam50-normalized-metrics/spinal_cord/spine-generic_multi-subject"
AGE_BANDS = ((18, 29), (30, 39), (40, 120))  # the cohort is 19-52 years old: 40+ holds 11 people
DEPTH = np.arange(-25.0, 46.0, 1.0)  # must equal inference.straighten.DEPTH_MM at 1 mm steps
SLAB_HALF = 2  # voxels either side of the mid-sagittal plane (1 mm voxels), as LATERAL_HALF_MM


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_template(data: Path) -> Path:
    """Straight template slab: rows = template slices (inferior first), columns = DEPTH (anterior positive)."""
    import nibabel as nib
    from scipy import ndimage

    folder = data / TEMPLATE_DIR
    t2_img = nib.load(str(folder / "PAM50_small_t2.nii.gz"))
    t2 = np.asanyarray(t2_img.dataobj).astype(np.float64)
    cord = np.asanyarray(nib.load(str(folder / "PAM50_small_cord.nii.gz")).dataobj) > 0.5
    discs = np.asanyarray(nib.load(str(folder / "PAM50_small_label_disc.nii.gz")).dataobj)
    if nib.aff2axcodes(t2_img.affine) != ("L", "A", "S"):
        raise SystemExit(f"expected the template in LAS, got {nib.aff2axcodes(t2_img.affine)}")
    zooms = [float(v) for v in t2_img.header.get_zooms()[:3]]
    if abs(zooms[0] - 1) > 1e-3 or abs(zooms[1] - 1) > 1e-3:
        raise SystemExit(f"expected 1 mm in-plane voxels, got {zooms}")
    # the template cord is straight: its centre is one (x, y) for every slice
    xs, ys, _ = np.nonzero(cord)
    cx, cy = float(xs.mean()), float(ys.mean())
    rows = t2.shape[2]
    grid_y = np.broadcast_to(cy + DEPTH[None, :], (rows, DEPTH.size))  # LAS: +y is anterior
    grid_z = np.broadcast_to(np.arange(rows, dtype=np.float64)[:, None], (rows, DEPTH.size))
    slab = np.zeros((rows, DEPTH.size))
    xs_slab = np.arange(round(cx) - SLAB_HALF, round(cx) + SLAB_HALF + 1)
    for x in xs_slab:
        slab += ndimage.map_coordinates(t2[int(x)], [grid_y, grid_z], order=1, mode="constant", cval=0.0)
    slab /= xs_slab.size
    disc_mm = {}
    for value in np.unique(discs[discs > 0]):
        z = np.argwhere(discs == value)[:, 2].mean()
        disc_mm[int(round(float(value)))] = float(z * zooms[2])
    labels = np.array(sorted(disc_mm), dtype=np.int16)
    out = OUT / "pam50_t2_straight.npz"
    np.savez_compressed(
        out,
        image=slab.astype(np.float32),
        row_mm=np.float32(zooms[2]),
        depth_mm=DEPTH.astype(np.float32),
        disc_labels=labels,
        disc_mm=np.array([disc_mm[int(v)] for v in labels], dtype=np.float32),
        source=np.array(f"{TEMPLATE_DIR}/PAM50_small_t2.nii.gz sha256 {_sha256(folder / 'PAM50_small_t2.nii.gz')}"),
    )
    return out


C2C3 = "2:3"  # the C2-C3 CSA: the mean over the slices of levels 2 and 3 together (sct_process_segmentation -vert 2:3)


def _level_means(path: Path) -> dict[str, float]:
    """One subject's mean CSA per vertebral level over the PAM50 slices of that level (empty slices skipped),
    and over levels 2 and 3 together."""
    sums: dict[str, list[float]] = defaultdict(list)
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            level, area = row.get("VertLevel", ""), row.get("MEAN(area)", "")
            if level and area:
                value = float(area)
                if math.isfinite(value):
                    number = int(float(level))
                    sums[str(number)].append(value)
                    if number in (2, 3):
                        sums[C2C3].append(value)
    return {level: float(np.mean(v)) for level, v in sums.items() if v}


def _level_order(key: str) -> tuple[int, int]:
    first = key.split(":")[0]
    return int(first), len(key)


def _band(age: float) -> str:
    for lo, hi in AGE_BANDS:
        if lo <= age <= hi:
            return f"{lo}-{hi}" if hi < 120 else f"{lo}+"
    return "other"


def build_csa(data: Path) -> Path:
    folder = data / METRICS_DIR
    groups: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    with (folder / "participants.tsv").open(newline="") as fh:
        people = list(csv.DictReader(fh, delimiter="\t"))
    used = 0
    for person in people:
        path = folder / f"{person['participant_id']}_T2w_PAM50.csv"
        if not path.exists():
            continue
        per_level = _level_means(path)
        if not per_level:
            continue
        used += 1
        sex = person["sex"].strip().upper()
        band = _band(float(person["age"]))
        for key in ("all", f"sex={sex}", f"age={band}", f"sex={sex},age={band}"):
            for level, value in per_level.items():
                groups[key][level].append(value)
    table = {
        key: {level: {"mean": round(float(np.mean(v)), 3), "sd": round(float(np.std(v, ddof=1)), 3), "n": len(v)}
              for level, v in sorted(levels.items(), key=lambda kv: _level_order(kv[0])) if len(v) >= 2}
        for key, levels in sorted(groups.items())
    }
    out = OUT / "csa_normative.json"
    out.write_text(json.dumps({
        "what": "spinal cord cross-sectional area (mm^2) per vertebral level: mean over the level's PAM50 slices "
                "per subject, then mean, sample SD and count over subjects",
        "levels": "1 = C1 ... 7 = C7, 8 = T1, ... (Spinal Cord Toolbox numbering); '2:3' = C2-C3, the mean over "
                  "the slices of levels 2 and 3 together",
        "age_bands": [list(b) for b in AGE_BANDS],
        "subjects": used,
        "source": "PAM50-normalized-metrics, spinal_cord/spine-generic_multi-subject (MIT): Valosek, Bedard et al., "
                  "A database of the healthy human spinal cord morphometry in the PAM50 template space, "
                  "Imaging Neuroscience 2 (2024) 1-15, doi:10.1162/imag_a_00075",
        "participants_sha256": _sha256(folder / "participants.tsv"),
        "groups": table,
    }, indent=1, sort_keys=False) + "\n")
    return out


PAM50_DISCS = "pam50/template/PAM50_label_disc.nii.gz"
PROFILE_MIN_FRACTION = 0.5  # a profile bin needs CSA from at least half the cohort (fewer at the FOV ends)


def build_csa_profile(data: Path) -> Path:
    """Mean CSA per 1 mm of PAM50 cord, offsets in mm from the C2-C3 disc (positive = superior)."""
    import nibabel as nib

    disc_img = nib.Nifti1Image.from_filename(str(data / PAM50_DISCS))
    if nib.aff2axcodes(disc_img.affine)[2] != "S":
        raise SystemExit(f"expected PAM50 slices inferior to superior, got {nib.aff2axcodes(disc_img.affine)}")
    slice_mm = float(disc_img.header.get_zooms()[2])
    discs = np.asanyarray(disc_img.dataobj)
    c2c3_slice = float(np.argwhere(np.rint(discs) == 3)[:, 2].mean())
    per_bin: dict[int, list[float]] = defaultdict(list)
    folder = data / METRICS_DIR
    subjects = sorted(folder.glob("*_T2w_PAM50.csv"))
    for path in subjects:
        bins: dict[int, list[float]] = defaultdict(list)
        with path.open(newline="") as fh:
            for row in csv.DictReader(fh):
                area = row.get("MEAN(area)", "")
                if area and math.isfinite(float(area)):
                    offset = (int(row["Slice (I->S)"]) - c2c3_slice) * slice_mm
                    bins[int(math.floor(offset + 0.5))].append(float(area))
        for key, values in bins.items():  # one value per subject and bin: each adult counts once
            per_bin[key].append(float(np.mean(values)))
    keep = sorted(k for k, v in per_bin.items() if len(v) >= PROFILE_MIN_FRACTION * len(subjects))
    offsets = np.arange(keep[0], keep[-1] + 1)
    if len(offsets) != len(keep):
        raise SystemExit("the CSA profile has gaps inside its range")
    out = OUT / "pam50_csa_profile.npz"
    np.savez_compressed(
        out,
        offset_mm=offsets.astype(np.float32),
        csa_mm2=np.array([np.mean(per_bin[int(k)]) for k in offsets], dtype=np.float32),
        n=np.array([len(per_bin[int(k)]) for k in offsets], dtype=np.int16),
        source=np.array(f"{METRICS_DIR} ({len(subjects)} csv), "
                        f"C2-C3 disc at PAM50 slice {c2c3_slice:g} of {PAM50_DISCS}"),
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    for path in (build_template(args.data), build_csa(args.data), build_csa_profile(args.data)):
        print(f"wrote {path.relative_to(REPO)} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
