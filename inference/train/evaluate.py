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
from inference.lesion_filter import label_lesions
from inference.train.data import BY_KEY, load_labelled, load_split
from inference.train.lesions import paint_lesions

GROUP_LABEL = {"sag_t2": "sagittal T2w (1 mm iso)", "ax_t2star": "axial T2*w (0.4 mm, 3 mm slices)"}
TARGETS = {"cord_dice_sag_t2": 0.90, "cord_dice_ax_t2star": 0.85, "lesion_dice": 0.70,
           "lesion_f1": 0.80, "largest_false_lesion_mm3": 20.0, "inference_s": 20.0}


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


def painted_case(key: str, seed: int, n_lesions: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(image, cord incl. lesion, lesion, affine) with lesions painted in the acquisition grid."""
    image, cord, _, affine = load_labelled(BY_KEY[key])
    reo = preprocess.reorient_to_ras(affine, image.shape)
    spacing = preprocess.voxel_sizes(reo.affine_ras)
    rng = np.random.default_rng(seed)
    img_r, les_r, _ = paint_lesions(reo.forward(image), reo.forward(cord.astype(np.uint8)) > 0, spacing, rng,
                                    n_lesions=n_lesions, sign=BY_KEY[key].lesion_sign)
    lesion = reo.backward(les_r) > 0
    return reo.backward(img_r), cord | lesion, lesion, affine


def _metrics_of(report: Any) -> dict[str, float]:
    return {"volume_mm3": report.total_volume_mm3, "length_mm": report.total_length_mm,
            "max_axial_damage_ratio": report.max_axial_damage_ratio}


def evaluate(model_spec: str, seeds: list[int], n_lesions: int, log=print,
             cases: list[str] | None = None, min_lesion_volume_mm3: float = 0.0) -> dict[str, Any]:
    """Run every validation case through the engine; returns per-case rows and a summary.
    `min_lesion_volume_mm3`: drop smaller lesion components first, as a pipeline with that setting does."""
    from inference.engine import segment as run_engine
    from inference.lesion_filter import drop_small_lesions
    from inference.models.registry import load_model
    from inference.volume import Volume

    def segment(volume: Volume, model: Any) -> Any:
        seg = run_engine(volume, model)
        seg.lesion_mask = drop_small_lesions(seg.lesion_mask, volume.affine, min_lesion_volume_mm3)[0]
        return seg

    try:
        from inference.biomarkers import analyze_lesions
    except ImportError:  # measured agreement is skipped, not faked, when biomarkers is absent
        analyze_lesions = None  # type: ignore[assignment]
    model = load_model(model_spec)
    split = load_split()
    rows: list[dict[str, Any]] = []
    keys = split["val"] if not cases else cases
    outside = [k for k in keys if k not in split["val"]]
    if outside:
        raise ValueError(f"cases {outside} are not validation volumes; choose from {split['val']}")
    for key in keys:
        sub = BY_KEY[key]
        image, cord, _, affine = load_labelled(sub)
        spacing = preprocess.voxel_sizes(affine)
        t0 = time.perf_counter()
        seg = segment(Volume(array=image, affine=affine), model)
        secs = time.perf_counter() - t0
        vol_true = float(cord.sum())
        row = {"case": key, "group": sub.group, "shape": list(image.shape), "lesions_painted": 0,
               "seconds": round(secs, 2), "cord_dice": dice(seg.cord_mask, cord),
               "cord_rve": (float(seg.cord_mask.sum()) - vol_true) / vol_true,
               "largest_false_lesion_mm3": largest_component_mm3(seg.lesion_mask, spacing)}
        rows.append(row)
        log(json.dumps(row))
        for seed in seeds:
            img_p, cord_p, les_p, _ = painted_case(key, seed, n_lesions)
            t0 = time.perf_counter()
            seg = segment(Volume(array=img_p, affine=affine), model)
            secs = time.perf_counter() - t0
            row = {"case": f"{key}+lesions(seed {seed})", "group": sub.group, "shape": list(image.shape),
                   "seconds": round(secs, 2), "cord_dice": dice(seg.cord_mask, cord_p),
                   "lesion_dice": dice(seg.lesion_mask, les_p),
                   "lesion_true_mm3": float(les_p.sum() * np.prod(spacing)),
                   "lesion_pred_mm3": float(seg.lesion_mask.sum() * np.prod(spacing)),
                   **lesion_wise(seg.lesion_mask > 0, les_p)}
            row["lesions_painted"] = row["n_true"]
            if analyze_lesions is not None:
                truth = analyze_lesions(les_p.astype(np.uint8), cord_p.astype(np.uint8), affine)
                pred = analyze_lesions(seg.lesion_mask.astype(np.uint8), seg.cord_mask, affine)
                row["measures_true"] = _metrics_of(truth)
                row["measures_pred"] = _metrics_of(pred)
            rows.append(row)
            log(json.dumps(row))
    return {"model": model_spec, "version": model.meta.version, "seeds": seeds, "n_lesions": n_lesions,
            **({"min_lesion_volume_mm3": min_lesion_volume_mm3} if min_lesion_volume_mm3 else {}),
            "rows": rows, "summary": summarize(rows)}


def lesion_f1(found: int, n_true: int, right: int, n_pred: int) -> float:
    """Harmonic mean of sensitivity found/n_true and PPV right/n_pred, from the counts.

    Why from counts: 2*s*p/(s+p) in floats can land a hair under a round target (8/9 and 8/11
    give 0.7999999999999999, not 0.8); the same value as one integer ratio is exact.
    """
    den = found * n_pred + right * n_true
    return 0.0 if n_true == 0 or n_pred == 0 or den == 0 else 2 * found * right / den


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-group cord Dice, pooled lesion metrics and measurement agreement, with targets."""
    s: dict[str, Any] = {}
    for group in ("sag_t2", "ax_t2star"):
        real = [r for r in rows if r["group"] == group and r["lesions_painted"] == 0 and "lesion_dice" not in r]
        if real:
            s[f"cord_dice_{group}"] = float(np.mean([r["cord_dice"] for r in real]))
            s[f"cord_rve_{group}"] = float(np.mean([r["cord_rve"] for r in real]))
    painted = [r for r in rows if "lesion_dice" in r]
    if painted:
        s["lesion_dice"] = float(np.mean([r["lesion_dice"] for r in painted]))
        n_true = sum(r["n_true"] for r in painted)
        n_pred = sum(r["n_pred"] for r in painted)
        found = sum(r["tp_true"] for r in painted)  # painted lesions hit by a prediction
        right = sum(r["tp_pred"] for r in painted)  # predicted components that hit a painted lesion
        sens = found / max(n_true, 1)
        ppv = right / n_pred if n_pred else 0.0
        s.update(lesion_sensitivity=sens, lesion_ppv=ppv, lesion_f1=lesion_f1(found, n_true, right, n_pred),
                 lesions_true=n_true, lesions_pred=n_pred)
        s["cord_dice_with_lesions"] = float(np.mean([r["cord_dice"] for r in painted]))
        measured = [r for r in painted if "measures_true" in r]
        for m in ("volume_mm3", "length_mm", "max_axial_damage_ratio"):
            if measured:
                t = np.array([r["measures_true"][m] for r in measured])
                p = np.array([r["measures_pred"][m] for r in measured])
                s[f"{m}_mean_abs_error"] = float(np.mean(np.abs(p - t)))
                s[f"{m}_mean_true"] = float(np.mean(t))
                s[f"{m}_corr"] = float(np.corrcoef(t, p)[0, 1]) if len(t) > 2 and p.std() > 0 else None
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
    parser.add_argument("--cases", nargs="+", default=None, help="subset of the validation volumes (quick checks)")
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
    try:
        result = evaluate(args.model, list(args.seeds), int(args.lesions), log=lambda m: print(m, flush=True),
                          cases=args.cases, min_lesion_volume_mm3=args.min_lesion_volume)
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
