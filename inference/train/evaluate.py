"""Evaluate a model on the validation subjects and write its model card.

    python -m inference.train.evaluate [--model builtin:spinecord-t2] [--card]
    dicom-node evaluate ...

Why this shape: the numbers in the model card must be what the node would produce, so every
case goes through the engine (`inference.engine.segment`) on the volume in its own acquisition
grid, exactly as a DICOM series would, and is compared there with the real manual cord masks.
Lesions have no real labels (see /work/shared/data/README.md): they are painted into the
validation cords with a fixed seed, in the acquisition grid, and the metrics say so.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from inference import heap, preprocess
from inference.lesion_agreement import lesion_f1 as lesion_f1  # re-exported: reports and tests read it here
from inference.lesion_filter import label_lesions
from inference.train.data import BY_KEY, load_labelled, load_split
from inference.train.families import FAMILY_NAMES, check_families

GROUP_LABEL = {"sag_t2": "sagittal T2w (1 mm iso)", "ax_t2star": "axial T2*w (0.4 mm, 3 mm slices)",
               "ax_t2": "axial T2w, 5 mm slices (simulated from the sagittal validation volume)"}
TARGETS = {"cord_dice_sag_t2": 0.92, "cord_dice_ax_t2star": 0.94, "lesion_dice": 0.75,
           "lesion_f1": 0.85, "volume_within_25pct": 0.80, "largest_false_lesion_mm3": 20.0, "inference_s": 20.0}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * float((a & b).sum()) / s


def components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Lesions as the measurements count them: 18-connected (faces and edges, LESION_METRICS.md)."""
    return label_lesions(mask)


def lesion_wise(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Detection counts: a true lesion is found, and a predicted one is right, if they overlap."""
    pl, pn = components(pred)
    tl, tn = components(truth)
    tp_truth = sum(1 for i in range(1, tn + 1) if pred[tl == i].any())
    tp_pred = sum(1 for i in range(1, pn + 1) if truth[pl == i].any())
    return {"n_true": tn, "n_pred": pn, "tp_true": tp_truth, "tp_pred": tp_pred}


def largest_component_mm3(mask: np.ndarray, spacing: tuple[float, float, float]) -> float:
    lab, n = components(mask)
    if n == 0:
        return 0.0
    return float(np.bincount(lab.ravel())[1:].max() * np.prod(spacing))


AXIAL_SIMULATED = {"errsm_21@ax5mm": ("errsm_21", 5)}  # case -> (sagittal source, axial slab in mm)
SPECK_RULES = (0.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0)  # minimum lesion volumes [mm³] compared


def validation_cases(split_val: list[str]) -> list[str]:
    """The validation volumes, and the axial thick-slice cases made from them."""
    return list(split_val) + [k for k, (src, _) in AXIAL_SIMULATED.items() if src in split_val]


def case_group(key: str) -> str:
    return "ax_t2" if key in AXIAL_SIMULATED else BY_KEY[key].group


def _slab_axial(arr: np.ndarray, n: int) -> np.ndarray:
    """Average `n` consecutive RAS axial (axis 2) slices into one: a thick axial acquisition."""
    m = arr.shape[2] // n
    return arr[:, :, : m * n].reshape(arr.shape[0], arr.shape[1], m, n).mean(axis=3)


def load_case(key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, cord, affine) of a validation case in its acquisition grid."""
    if key not in AXIAL_SIMULATED:
        image, cord, _, affine = load_labelled(BY_KEY[key])
        return image, cord, affine
    image, cord, _, affine = load_labelled(BY_KEY[AXIAL_SIMULATED[key][0]])
    reo = preprocess.reorient_to_ras(affine, image.shape)
    n, aff = _slab_geometry(key, reo.affine_ras)
    return (_slab_axial(reo.forward(image).astype(np.float32), n),
            _slab_axial(reo.forward(cord.astype(np.float32)), n) > 0.5, aff)


def _slab_geometry(key: str, affine_ras: np.ndarray) -> tuple[int, np.ndarray]:
    """(source slices per slab, the slab grid's affine) of a simulated axial case."""
    n = int(round(AXIAL_SIMULATED[key][1] / preprocess.voxel_sizes(affine_ras)[2]))
    aff = np.array(affine_ras, dtype=float, copy=True)
    aff[:3, 2] *= n
    aff[:3, 3] += affine_ras[:3, 2] * (n - 1) / 2.0  # the slab's centre
    return n, aff


def painted_case(key: str, seed: int, n_lesions: int | None,
                 family_name: str = "painter") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(image, cord incl. lesion, lesion, affine) with one family's lesions painted in the acquisition
    grid (their own look: no appearance randomisation); for a simulated axial case they are painted
    in its 1 mm source and then seen through the thick slices, image and labels alike."""
    from inference.train.families import family
    from inference.train.lesions import intensity_levels

    src = AXIAL_SIMULATED.get(key, (key, 0))[0]
    image, cord, _, affine = load_labelled(BY_KEY[src])
    reo = preprocess.reorient_to_ras(affine, image.shape)
    spacing = preprocess.voxel_sizes(reo.affine_ras)
    rng = np.random.default_rng(seed)
    sign = BY_KEY[src].lesion_sign
    img_r, cord_r = reo.forward(image).astype(np.float32), reo.forward(cord.astype(np.uint8)) > 0
    levels = intensity_levels(img_r, cord_r, spacing, sign)
    painted = family(family_name)(img_r, cord_r, spacing, rng, levels, sign=sign, n_lesions=n_lesions)
    img_p, les_r, cord_p = painted.image, painted.lesion, painted.cord
    if key in AXIAL_SIMULATED:
        n, aff = _slab_geometry(key, reo.affine_ras)
        lesion = _slab_axial(les_r.astype(np.float32), n) > 0.5
        return (_slab_axial(img_p, n), (_slab_axial(cord_p.astype(np.float32), n) > 0.5) | lesion, lesion, aff)
    lesion = reo.backward(les_r) > 0
    return reo.backward(img_p), (reo.backward(cord_p.astype(np.uint8)) > 0) | lesion, lesion, affine


def per_lesion(pred: np.ndarray, truth: np.ndarray, voxel_mm3: float) -> list[dict[str, float]]:
    """Each true lesion's volume and the volume of the predicted components that touch it."""
    tl, tn = components(truth)
    pl, _ = components(pred)
    out = []
    for i in range(1, tn + 1):
        mine = tl == i
        hit = np.unique(pl[mine & (pl > 0)])
        pred_vox = int(np.isin(pl, hit).sum()) if len(hit) else 0
        out.append({"true_mm3": float(mine.sum() * voxel_mm3), "pred_mm3": float(pred_vox * voxel_mm3)})
    return out


def speck_sweep(pred: np.ndarray, truth: np.ndarray, affine: np.ndarray) -> dict[str, dict[str, float]]:
    """Lesion-wise counts and Dice after dropping components under each of SPECK_RULES."""
    from inference.lesion_filter import drop_small_lesions

    out = {}
    for mm3 in SPECK_RULES:
        kept = drop_small_lesions(pred, affine, mm3)[0] > 0
        row: dict[str, float] = dict(lesion_wise(kept, truth)) if truth.any() else {"n_pred": components(kept)[1]}
        if truth.any():
            row["dice"] = dice(kept, truth)
        else:
            row["largest_mm3"] = largest_component_mm3(kept, preprocess.voxel_sizes(affine))
        out[f"{mm3:g}"] = row
    return out


def _metrics_of(report: Any) -> dict[str, float]:
    return {"volume_mm3": report.total_volume_mm3, "length_mm": report.total_length_mm,
            "max_axial_damage_ratio": report.max_axial_damage_ratio}


def evaluate(model_spec: str, seeds: list[int], n_lesions: int, log=print,
             cases: list[str] | None = None, min_lesion_volume_mm3: float = 0.0,
             families: tuple[str, ...] = ("painter",)) -> dict[str, Any]:
    """Run every validation case through the engine; returns per-case rows and a summary.

    Each validation case is run once as it is (cord Dice on the manual mask, false lesions) and
    once per family and seed with that family's lesions painted in (`n_lesions` for the painter,
    the family's own count otherwise). `min_lesion_volume_mm3`: drop smaller lesion components
    first, as a pipeline with that setting does; every row also records the speck sweep."""
    from inference.engine import segment as run_engine
    from inference.lesion_filter import drop_small_lesions
    from inference.models.registry import load_model
    from inference.volume import Volume

    def segment(volume: Volume, model: Any) -> tuple[Any, np.ndarray]:
        seg = run_engine(volume, model)
        raw = np.asarray(seg.lesion_mask) > 0
        seg.lesion_mask = drop_small_lesions(seg.lesion_mask, volume.affine, min_lesion_volume_mm3)[0]
        return seg, raw

    try:
        from inference.biomarkers import analyze_lesions
    except ImportError:  # measured agreement is skipped, not faked, when biomarkers is absent
        analyze_lesions = None  # type: ignore[assignment]
    model = load_model(model_spec)
    split = load_split()
    rows: list[dict[str, Any]] = []
    known = validation_cases(split["val"])
    keys = known if not cases else cases
    outside = [k for k in keys if k not in known]
    if outside:
        raise ValueError(f"cases {outside} are not validation volumes; choose from {known}")
    for key in keys:
        group = case_group(key)
        image, cord, affine = load_case(key)
        spacing = preprocess.voxel_sizes(affine)
        voxel_mm3 = float(np.prod(spacing))
        t0 = time.perf_counter()
        seg, raw = segment(Volume(array=image, affine=affine), model)
        secs = time.perf_counter() - t0
        vol_true = float(cord.sum())
        row = {"case": key, "group": group, "shape": list(image.shape), "lesions_painted": 0,
               "seconds": round(secs, 2), "cord_dice": dice(seg.cord_mask, cord),
               "cord_rve": (float(seg.cord_mask.sum()) - vol_true) / vol_true,
               "largest_false_lesion_mm3": largest_component_mm3(seg.lesion_mask, spacing),
               "speck_sweep": speck_sweep(raw, np.zeros(raw.shape, bool), affine)}
        rows.append(row)
        log(json.dumps(row))
        for fam in families:
            for seed in seeds:
                img_p, cord_p, les_p, _ = painted_case(key, seed, n_lesions if fam == "painter" else None, fam)
                t0 = time.perf_counter()
                seg, raw = segment(Volume(array=img_p, affine=affine), model)
                secs = time.perf_counter() - t0
                row = {"case": f"{key}+{fam}(seed {seed})", "family": fam, "group": group,
                       "shape": list(image.shape), "seconds": round(secs, 2), "cord_dice": dice(seg.cord_mask, cord_p),
                       "lesion_dice": dice(seg.lesion_mask, les_p),
                       "lesion_true_mm3": float(les_p.sum() * voxel_mm3),
                       "lesion_pred_mm3": float(seg.lesion_mask.sum() * voxel_mm3),
                       **lesion_wise(seg.lesion_mask > 0, les_p),
                       "per_lesion": per_lesion(seg.lesion_mask > 0, les_p, voxel_mm3),
                       "speck_sweep": speck_sweep(raw, les_p, affine)}
                row["lesions_painted"] = row["n_true"]
                if analyze_lesions is not None:
                    truth = analyze_lesions(les_p.astype(np.uint8), cord_p.astype(np.uint8), affine)
                    pred = analyze_lesions(seg.lesion_mask.astype(np.uint8), seg.cord_mask, affine)
                    row["measures_true"] = _metrics_of(truth)
                    row["measures_pred"] = _metrics_of(pred)
                rows.append(row)
                log(json.dumps({k: v for k, v in row.items() if k not in ("per_lesion", "speck_sweep")}))
    return {"model": model_spec, "version": model.meta.version, "seeds": seeds, "n_lesions": n_lesions,
            "families": list(families),
            **({"min_lesion_volume_mm3": min_lesion_volume_mm3} if min_lesion_volume_mm3 else {}),
            "rows": rows, "summary": summarize(rows)}


def lesion_summary(painted: list[dict[str, Any]]) -> dict[str, Any]:
    """Pooled lesion metrics of painted rows: Dice, lesion-wise counts, per-lesion volume error,
    and per-case length and damage-ratio errors."""
    s: dict[str, Any] = {"copies": len(painted)}
    if not painted:
        return s
    s["lesion_dice"] = float(np.mean([r["lesion_dice"] for r in painted]))
    s["lesion_dice_min"] = float(np.min([r["lesion_dice"] for r in painted]))
    n_true = sum(r["n_true"] for r in painted)
    n_pred = sum(r["n_pred"] for r in painted)
    found = sum(r["tp_true"] for r in painted)  # painted lesions hit by a prediction
    right = sum(r["tp_pred"] for r in painted)  # predicted components that hit a painted lesion
    s.update(lesion_sensitivity=found / max(n_true, 1), lesion_ppv=right / n_pred if n_pred else 0.0,
             lesion_f1=lesion_f1(found, n_true, right, n_pred), lesions_true=n_true, lesions_pred=n_pred)
    s["cord_dice_with_lesions"] = float(np.mean([r["cord_dice"] for r in painted]))
    lesions = [les for r in painted for les in r.get("per_lesion", [])]
    big = [les for les in lesions if les["true_mm3"] >= 20.0]
    if big:
        err = np.array([(les["pred_mm3"] - les["true_mm3"]) / les["true_mm3"] for les in big])
        s["volume_error_median"] = float(np.median(np.abs(err)))
        s["volume_error_worst"] = float(err[np.argmax(np.abs(err))])
        s["volume_within_25pct"] = float(np.mean(np.abs(err) <= 0.25))
        s["lesions_20mm3"] = len(big)
    measured = [r for r in painted if "measures_true" in r]
    for m in ("volume_mm3", "length_mm", "max_axial_damage_ratio"):
        if measured:
            t = np.array([r["measures_true"][m] for r in measured])
            p = np.array([r["measures_pred"][m] for r in measured])
            s[f"{m}_mean_abs_error"] = float(np.mean(np.abs(p - t)))
            s[f"{m}_worst_abs_error"] = float(np.max(np.abs(p - t)))
            s[f"{m}_mean_true"] = float(np.mean(t))
            s[f"{m}_corr"] = float(np.corrcoef(t, p)[0, 1]) if len(t) > 2 and p.std() > 0 and t.std() > 0 else None
    return s


def speck_summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per minimum lesion volume: pooled lesion-wise F1, mean Dice, and false lesions on unpainted cases."""
    out: dict[str, dict[str, float]] = {}
    swept = [r for r in rows if "speck_sweep" in r]
    for key in (f"{m:g}" for m in SPECK_RULES):
        painted = [r["speck_sweep"][key] for r in swept if "lesion_dice" in r and key in r["speck_sweep"]]
        free = [r["speck_sweep"][key] for r in swept if "lesion_dice" not in r and key in r["speck_sweep"]]
        if not painted and not free:
            continue
        row: dict[str, float] = {}
        if painted:
            n_true = sum(p["n_true"] for p in painted)
            n_pred = sum(p["n_pred"] for p in painted)
            found, right = sum(p["tp_true"] for p in painted), sum(p["tp_pred"] for p in painted)
            row.update(lesion_f1=lesion_f1(found, n_true, right, n_pred), lesion_sensitivity=found / max(n_true, 1),
                       lesion_ppv=right / n_pred if n_pred else 0.0,
                       lesion_dice=float(np.mean([p["dice"] for p in painted])))
        if free:
            row["false_lesions_unpainted"] = int(sum(f["n_pred"] for f in free))
            row["largest_false_lesion_mm3"] = float(max(f["largest_mm3"] for f in free))
        out[key] = row
    return out


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-group cord Dice, pooled lesion metrics (all, per family, per acquisition group), the
    speck-rule sweep and measurement agreement, with targets."""
    s: dict[str, Any] = {}
    for group in ("sag_t2", "ax_t2star", "ax_t2"):
        real = [r for r in rows if r["group"] == group and r["lesions_painted"] == 0 and "lesion_dice" not in r]
        if real:
            s[f"cord_dice_{group}"] = float(np.mean([r["cord_dice"] for r in real]))
            s[f"cord_rve_{group}"] = float(np.mean([r["cord_rve"] for r in real]))
    painted = [r for r in rows if "lesion_dice" in r]
    if painted:
        pooled = lesion_summary(painted)
        pooled.pop("copies")
        s.update(pooled)
        fams = sorted({r.get("family", "painter") for r in painted})
        s["by_family"] = {f: lesion_summary([r for r in painted if r.get("family", "painter") == f]) for f in fams}
        groups = sorted({r["group"] for r in painted})
        s["by_group"] = {g: lesion_summary([r for r in painted if r["group"] == g]) for g in groups}
        s["by_family_group"] = {f"{f}/{g}": lesion_summary([r for r in painted if r.get("family", "painter") == f
                                                              and r["group"] == g]) for f in fams for g in groups}
    sweep = speck_summary(rows)
    if sweep:
        s["speck_sweep"] = sweep
    free = [r for r in rows if "largest_false_lesion_mm3" in r]
    if free:
        s["largest_false_lesion_mm3"] = max(r["largest_false_lesion_mm3"] for r in free)
    sag = [r["seconds"] for r in rows if r["group"] == "sag_t2"]
    if sag:
        s["inference_s"] = float(np.median(sag))
    met = {}
    for k, target in TARGETS.items():
        if k in s:
            met[k] = bool(s[k] <= target) if k in ("largest_false_lesion_mm3", "inference_s") else bool(s[k] >= target)
    s["targets"] = TARGETS
    s["met"] = met
    return s


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="builtin:spinecord-t2", help="model folder or builtin:NAME")
    parser.add_argument("--seeds", type=int, nargs="+", default=[101, 202],
                        help="lesion-painting seeds (one painted copy of each validation volume per seed)")
    parser.add_argument("--lesions", type=int, default=3, help="lesions painted per copy")
    parser.add_argument("--json", type=Path, default=None, help="write all rows + summary here")
    parser.add_argument("--card", action="store_true", help="(re)write MODEL_CARD.md in the model folder")
    parser.add_argument("--from-json", type=Path, default=None, metavar="EVALUATION_JSON",
                        help="with --card: write the card from this earlier result instead of evaluating again "
                             "(e.g. after lofo.json was added to the model folder)")
    parser.add_argument("--cases", nargs="+", default=None, help="subset of the validation volumes (quick checks)")
    parser.add_argument("--families", nargs="+", default=list(FAMILY_NAMES), metavar="FAMILY",
                        help="lesion families painted into the validation copies (leave-one-family-out: the "
                             "family the model was trained without)")
    parser.add_argument("--min-lesion-volume", type=float, default=0.0, metavar="MM3",
                        help="drop lesion components under this first, as pipelines.NAME.min_lesion_volume_mm3")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: torch default); 1 is faster on an oversubscribed CPU")


def run(args: argparse.Namespace) -> int:
    from inference.models.registry import ModelError, read_meta
    from inference.train.model_card import write_card

    if getattr(args, "threads", 0):
        import torch

        torch.set_num_threads(int(args.threads))
    if args.min_lesion_volume and (args.card or not args.json):
        print("evaluate: --min-lesion-volume measures a pipeline setting, not the model: give --json OUT "
              "(without --card; the model's evaluation.json and card stay its own output)", file=sys.stderr)
        return 2
    try:
        meta = read_meta(args.model)
    except ModelError as exc:
        print(f"evaluate: {exc}", file=sys.stderr)
        return 2
    if getattr(args, "from_json", None) is not None:
        if not args.card:
            print("evaluate: --from-json only rewrites the card: add --card", file=sys.stderr)
            return 2
        result = json.loads(Path(args.from_json).read_text(encoding="utf-8"))
        print(f"wrote {write_card(meta, result)}")
        return 0
    try:
        families = check_families(args.families, "--families")
        result = evaluate(args.model, list(args.seeds), int(args.lesions), log=lambda m: print(m, flush=True),
                          cases=args.cases, min_lesion_volume_mm3=args.min_lesion_volume, families=families)
    except ValueError as exc:
        print(f"evaluate: {exc}", file=sys.stderr)
        return 2
    out_json = args.json or (meta.folder / "evaluation.json")
    Path(out_json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result["summary"], indent=2))
    if args.card:
        path = write_card(meta, result)
        print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    heap.configure()  # before threads start, as the console script does
    parser = argparse.ArgumentParser(prog="python -m inference.train.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
