"""Print the vertebral-level validation numbers on the shared real data (what the issue 22 report quotes).

    python scripts/validate_levels.py [--data ../shared/data] [--node-model]

- SCT's landmarks (errsm_11/18/21: C2 and T2 body centres, projected on the cord): the level each
  landmark falls in and its distance to the centre of the predicted body of that level; where the anchor
  is ambiguous (levels unknown), what each of the two tied C2-C3 candidates would have given, to show
  whether the refusal was needed (a diagnostic: the node itself answers "unknown");
- SCT's labelled crop (sct-testing/t2): agreement with sct_label_vertebrae's levels on cord voxels,
  from SCT's own C2-C3 initialisation (the crop is too short for an automatic count);
- with --crops: each landmark scan cut to nine fields of view along its length (top, bottom or both cut
  away), each labelled afresh and judged by the landmarks left in it (a safety check: a field of view
  without C2 must come out unknown, not counted from a lower disc);
- with --node-model: the shipped model's cord mask labelled the same way, and its C2-C3 CSA against the
  manual mask's on the same slices (slow: one segmentation per scan).
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from inference.vertebrae import VertebralLevels

REPO = Path(__file__).resolve().parents[1]
SCT_INITZ_C2C3 = 34  # sct_testing_data t2/init_label_vertebrae.txt: "-initz 34,3"
SUBJECTS = {
    "errsm_11": ("spine-t2-sag/errsm_11/t2.nii.gz", "spine-t2-sag/errsm_11/t2_seg-manual.nii.gz"),
    "errsm_18": ("spine-t2-sag/errsm_18/t2.nii.gz", "spine-t2-sag/errsm_18/t2_seg-manual.nii.gz"),
    "errsm_21": ("spine-t2-sag/errsm_21/t2.nii.gz", "spine-t2-sag/errsm_21/t2_seg-manual.nii.gz"),
    "sct_example": ("spine-t2-sag/sct_example/t2.nii.gz", "spine-t2-sag/sct_example/t2_seg-semiauto.nii.gz"),
    "sct-testing/t2": ("sct-testing/t2/t2.nii.gz", "sct-testing/t2/t2_seg-manual.nii.gz"),
}


def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    img = nib.load(str(path))
    return np.asanyarray(img.dataobj), np.asarray(img.affine, dtype=np.float64)


def _landmarks(levels, marks: np.ndarray) -> str:  # type: ignore[no-untyped-def]
    from inference.vertebrae import level_name

    out = []
    straight = levels.straight
    for value in (2, 9):
        voxel = np.argwhere(marks == value)[0]
        rpi = np.array(straight.frame.rpi_index_of_input(voxel)) * np.array(straight.frame.spacing)
        level = int(levels.level_at_arc(straight.arc_of_points(rpi[None]))[0])
        centre = levels.body_centre_arc(value)
        dist = float(np.linalg.norm(straight.point_of_arc(centre) - rpi)) if centre is not None else math.nan
        verdict = "hit" if level == value else "MISS"
        out.append(f"{level_name(value)} landmark in {level_name(level) if level else 'no level'} ({verdict}), "
                   f"{dist:.1f} mm from the predicted {level_name(value)} body centre")
    return "; ".join(out)


def _tied_candidates(levels: VertebralLevels, image: np.ndarray, mask: np.ndarray, affine: np.ndarray,
                     marks: np.ndarray) -> str:
    """For an ambiguous anchor: the landmark outcome had each of the two best candidates been taken."""
    from inference.vertebrae import label_levels, load_template

    if levels.straight is None or "ambiguous" not in levels.reason:
        return ""
    best = levels.evidence[0]
    apart = 0.5 * load_template().gap(2, 3) * best["scale"]  # as the anchor rule: another disc, not the same one
    rivals = [e for e in levels.evidence[1:] if abs(e["row"] - best["row"]) >= apart]
    out = ""
    for which, e in (("best", best), ("runner-up", rivals[0] if rivals else None)):
        if e is None:
            continue
        forced = label_levels(image, mask, affine, c2c3_slice=levels.straight.slice_of_arc(e["row"]))
        out += (f"\n    if the {which} candidate ({e['row']:.0f} mm, score {e['score']:.2f}) were taken: "
                + (_landmarks(forced, marks) if forced.known else f"unknown ({forced.reason})"))
    return out


CROPS_CUT_MM = ((0, 0), (80, None), (120, None), (0, 30), (0, 45), (40, 20), (0, 10), (0, 20), (20, 5))


def _crop_verdicts(image: np.ndarray, mask: np.ndarray, affine: np.ndarray, marks: np.ndarray) -> tuple[str, dict]:
    """Label crops along axis 1 (inferior-superior in these PSR volumes) and judge each by its landmarks.

    A crop (keep, cut_top): keep the top `keep` slices if cut_top is None, else cut `keep` slices from
    the bottom and `cut_top` from the top.
    """
    from inference.vertebrae import label_levels

    n = image.shape[1]
    verdicts, tally = [], {"right": 0, "WRONG": 0, "unknown": 0, "unchecked": 0}
    for a, b in CROPS_CUT_MM:
        lo, hi = (n - a, n) if b is None else (a, n - b)
        crop_affine = affine.copy()
        crop_affine[:3, 3] = affine[:3, 3] + affine[:3, 1] * lo
        levels = label_levels(image[:, lo:hi], mask[:, lo:hi], crop_affine)
        crop_marks = marks[:, lo:hi]
        if not levels.known or levels.straight is None:
            verdict = "unknown"
        else:
            straight, hits = levels.straight, []
            for value in (2, 9):
                found = np.argwhere(crop_marks == value)
                if found.size:
                    rpi = np.array(straight.frame.rpi_index_of_input(found[0])) * np.array(straight.frame.spacing)
                    hits.append(int(levels.level_at_arc(straight.arc_of_points(rpi[None]))[0]) == value)
            verdict = "unchecked" if not hits else ("right" if all(hits) else "WRONG")
        tally[verdict] += 1
        verdicts.append(f"S{lo}-{hi}: {verdict}")
    return ", ".join(verdicts), tally


def _slice_levels_from_labels(labelled: np.ndarray, affine: np.ndarray) -> list[int]:
    from inference.rpi import RpiFrame

    lab = RpiFrame.from_affine(affine, labelled.shape).to_rpi(np.rint(labelled))
    return [int(math.floor(lab[:, :, z][lab[:, :, z] > 0].mean() + 0.5)) if (lab[:, :, z] > 0).any() else 0
            for z in range(lab.shape[2])]


def _c2c3(mask: np.ndarray, affine: np.ndarray, slice_levels: list[int]) -> float:
    from inference.csa import cord_csa
    from inference.levels_csa import per_level_csa

    grouped = per_level_csa(cord_csa(mask, affine).per_slice_mm2, slice_levels)
    values = grouped.get(2, []) + grouped.get(3, [])
    return float(np.mean(values)) if values else math.nan


def main() -> None:
    from inference.vertebrae import label_levels

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--node-model", action="store_true", help="also segment with the shipped model")
    parser.add_argument("--crops", action="store_true", help="also label nine crops of each landmark scan")
    args = parser.parse_args()
    totals: dict[str, int] = {}
    for name, (image_rel, mask_rel) in SUBJECTS.items():
        image, affine = _load(args.data / image_rel)
        mask = (_load(args.data / mask_rel)[0] > 0.5).astype(np.uint8)
        levels = label_levels(image, mask, affine)
        line = f"{name}: levels {'known' if levels.known else 'unknown'} ({levels.reason})"
        if name.startswith("errsm"):
            marks, _ = _load(args.data / f"landmarks/{name}_t2_landmarks_C2_T2_center.nii.gz")
            if levels.known:
                line += "\n    " + _landmarks(levels, marks)
            else:
                line += _tied_candidates(levels, image, mask, affine, marks)
            if args.crops:
                verdicts, tally = _crop_verdicts(image, mask, affine, marks)
                line += f"\n    crops: {verdicts}"
                totals = {k: totals.get(k, 0) + v for k, v in tally.items()}
        if name == "sct-testing/t2":
            ref, _ = _load(args.data / "sct-testing/t2/t2_seg-manual_labeled.nii.gz")
            given = label_levels(image, mask, affine, c2c3_slice=SCT_INITZ_C2C3)
            ours, theirs, inside = given.label_cord(mask), np.rint(ref).astype(int), mask > 0
            both = inside & (ours > 0)
            line += (f"\n    from SCT's C2-C3 (slice {SCT_INITZ_C2C3}): agreement with SCT's levels "
                     f"{(ours[inside] == theirs[inside]).mean() * 100:.1f} % of cord voxels, "
                     f"{(ours[both] == theirs[both]).mean() * 100:.1f} % of those we label "
                     f"({inside.sum() - both.sum()} cord voxels left unlabelled)")
        if args.node_model:
            from inference.pipeline import analyze
            from inference.volume import Volume

            node = analyze(Volume(image.astype(np.float32), affine)).cord_mask
            node_levels = label_levels(image, node, affine)
            line += f"\n    node mask: levels {'known' if node_levels.known else 'unknown'} ({node_levels.reason})"
            if node_levels.known and name.startswith("errsm"):
                marks, _ = _load(args.data / f"landmarks/{name}_t2_landmarks_C2_T2_center.nii.gz")
                line += "\n    node mask: " + _landmarks(node_levels, marks)
            if name == "sct-testing/t2":
                ref, _ = _load(args.data / "sct-testing/t2/t2_seg-manual_labeled.nii.gz")
                slices, source = _slice_levels_from_labels(ref, affine), "SCT's levels"
            elif levels.known:
                slices, source = levels.slice_levels(mask), "levels of the manual mask"
            else:
                slices = []
            if slices:
                manual, ours = _c2c3(mask, affine, slices), _c2c3(node, affine, slices)
                line += (f"\n    C2-C3 CSA ({source}): manual {manual:.1f} mm2, node {ours:.1f} mm2, "
                         f"{(ours - manual) / manual * 100:+.1f} %")
        print(line, flush=True)
    if totals:
        print("crops, all landmark scans: " + ", ".join(f"{v} {k}" for k, v in totals.items()))


if __name__ == "__main__":
    main()
