"""Pick the lesion threshold on TRAINING subjects with freshly painted lesions (never on validation).

    python -m inference.train.calibrate --model var/train/run2/model [--write]

Why: after a short CPU training the lesion probabilities are well ranked but not yet
calibrated around 0.5 (the threshold with the best pooled Dice is taken among those that keep
false lesions on the unpainted training cords within the card's 20 mm³); choosing the threshold
on validation data would make the model
card's numbers optimistic, so it is chosen here on training cords with new lesions (a seed
the training never used) and only then evaluated on the validation subjects.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from inference import heap
from inference.train.data import build_cache, load_split
from inference.train.sampling import paint_cached

CANDIDATES = (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8)
CALIBRATION_KEYS = ("errsm_11", "errsm_18", "t2s_10062Ses1", "t2s_9418")
SEED = 777
MAX_FALSE_LESION_MM3 = 20.0  # the model card's target for lesion-free volumes


def collect(model_spec: str, keys: tuple[str, ...], copies: int = 2, lesion_free: bool = False,
            families: tuple[str, ...] = ("painter",)) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(probabilities (2, ...), true cord, true lesion) for painted crops around each cord,
    `copies` per volume and family (the families the model was trained on: a held-out one stays out).

    With ``lesion_free`` one unpainted crop per volume is added (empty true lesion): what the
    false-lesion limit is checked on.
    """
    from inference.engine import predict_model_space
    from inference.models.registry import load_model

    model = load_model(model_spec)
    spacing = model.meta.spacing_mm
    train = set(load_split()["train"])
    bad = [k for k in keys if k not in train]
    if bad:
        raise ValueError(f"calibration must use training volumes only; {bad} are not in the training split")
    rng = np.random.default_rng(SEED)
    out = []
    for vol in build_cache(list(keys), spacing):
        idx = vol.cord_idx
        lo = np.maximum(idx.min(0) - 24, 0)
        hi = np.minimum(idx.max(0) + 25, vol.image.shape)
        sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        if lesion_free:
            prob = predict_model_space(vol.image[sl], model, normalized=True)
            out.append((prob, vol.cord[sl] > 0, np.zeros(prob.shape[1:], bool)))
        for _ in range(copies):
            for name in families:
                img, cord, les = paint_cached(vol, vol.image[sl], vol.cord[sl], spacing, rng,
                                              n_lesions=3 if name == "painter" else None, family_name=name)
                prob = predict_model_space(img, model, normalized=True)
                out.append((prob, (cord > 0) | (les > 0), les > 0))
    return out


def trained_families(model_spec: str) -> tuple[str, ...]:
    """The lesion families a model was trained on (its model.json), the painter for older models."""
    from inference.models.registry import read_meta

    sampler = read_meta(model_spec).extra.get("training", {}).get("sampler", {})
    return tuple(sampler.get("families", ("painter",)))


def best_lesion_threshold(cases: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
                          cord_threshold: float = 0.5, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
                          max_false_mm3: float = MAX_FALSE_LESION_MM3,
                          ) -> tuple[float, dict[float, float], dict[float, float]]:
    """Threshold maximising the pooled lesion Dice, with the engine's own post-processing, among
    those whose largest false lesion on the lesion-free cases stays within ``max_false_mm3``.

    Returns (threshold, pooled Dice by threshold, largest false lesion mm³ by threshold).
    Why the limit: a healthy cord reported with a lesion is the error a radiologist notices
    first; the model card's target is the same number, but it is checked here on training
    cords only.
    """
    from inference.engine import postprocess
    from inference.train.evaluate import largest_component_mm3

    painted = [c for c in cases if c[2].any()]
    free = [c for c in cases if not c[2].any()]
    scores: dict[float, float] = {}
    false_mm3: dict[float, float] = {}
    for t in CANDIDATES:
        inter = total = 0
        for prob, _, les in painted:
            pred = postprocess(prob[0], prob[1], (cord_threshold, t))[1] > 0
            inter += int((pred & les).sum())
            total += int(pred.sum()) + int(les.sum())
        scores[t] = 2.0 * inter / max(total, 1)
        false_mm3[t] = max((largest_component_mm3(postprocess(prob[0], prob[1], (cord_threshold, t))[1], spacing)
                            for prob, _, _ in free), default=0.0)
    allowed = [t for t in CANDIDATES if false_mm3[t] <= max_false_mm3] or [max(CANDIDATES)]
    best = max(allowed, key=lambda k: scores[k])
    return best, scores, false_mm3


def main(argv: list[str] | None = None) -> int:
    heap.configure()  # before threads start, as the console script does
    p = argparse.ArgumentParser(prog="python -m inference.train.calibrate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model folder (its model.json is updated with --write)")
    p.add_argument("--write", action="store_true", help="write the chosen lesion threshold into model.json")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from inference.models.registry import read_meta

    families = trained_families(args.model)
    cases = collect(args.model, CALIBRATION_KEYS, lesion_free=True, families=families)
    best, scores, false_mm3 = best_lesion_threshold(cases, spacing=read_meta(args.model).spacing_mm)
    print(json.dumps({"lesion_threshold": best, "pooled_lesion_dice_by_threshold": scores,
                      "largest_false_lesion_mm3_by_threshold": false_mm3}))
    if args.write:
        path = Path(args.model) / "model.json"
        meta = json.loads(path.read_text(encoding="utf-8"))
        meta["thresholds"] = [float(meta["thresholds"][0]), float(best)]
        meta.setdefault("training", {})["threshold_calibration"] = {
            "volumes": list(CALIBRATION_KEYS), "seed": SEED, "families": list(families),
            "pooled_lesion_dice_by_threshold": {str(k): round(v, 4) for k, v in scores.items()},
            "largest_false_lesion_mm3_by_threshold": {str(k): round(v, 1) for k, v in false_mm3.items()},
            "max_false_lesion_mm3": MAX_FALSE_LESION_MM3, "lesions_as_acquired": True}
        path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        print(f"wrote thresholds {meta['thresholds']} to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
