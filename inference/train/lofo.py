"""Leave-one-family-out: for each lesion family F, a model trained without F, scored on F.

    python -m inference.train.lofo --out var/lofo --minutes 15 [--init inference/models/spinecord-t2]
                                   [--families contusion cyst demyelination] [--card-folder FOLDER]

Why: a model scored on lesions drawn by the generator it was trained on proves little (issue
17: 0.72 on its own painter, 0.45 on an independent one). Each run here fine-tunes `--init`
on every family but F (`train --exclude-family F`), calibrates its lesion threshold on
training subjects with those same families, and is evaluated on the validation subjects
with F only. Every step is resumable: a finished step (its output exists) is skipped, a
stopped training resumes from its checkpoint. The table of all runs is written to
OUT/lofo.json, and beside the model card (`--card-folder`) as lofo.json, which
`evaluate --card` puts in the card.

A family the `--init` model was trained on is not held out by fine-tuning; the table says
which families the starting weights had seen.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from inference import heap
from inference.train.families import FAMILY_NAMES, check_families

KEEP = ("lesion_dice", "lesion_dice_min", "lesion_sensitivity", "lesion_ppv", "lesion_f1", "lesions_true",
        "lesions_pred", "volume_error_median", "volume_error_worst", "volume_within_25pct", "lesions_20mm3",
        "length_mm_mean_abs_error", "length_mm_worst_abs_error", "length_mm_mean_true",
        "max_axial_damage_ratio_mean_abs_error", "max_axial_damage_ratio_worst_abs_error", "copies")


def seen_by(model_folder: str) -> list[str]:
    """Families a model's weights have seen, through its whole fine-tune chain."""
    from inference.models.registry import read_meta
    from inference.train.model_card import families_seen

    return families_seen(read_meta(model_folder).extra.get("training", {}))


def run_one(held_out: str, args: argparse.Namespace, log=print) -> dict[str, Any]:
    """Train (or resume), calibrate and evaluate the model without `held_out`; its table row."""
    from inference.train import calibrate
    from inference.train import train as train_mod
    from inference.train.evaluate import evaluate

    folder = Path(args.out) / f"without-{held_out}"
    model = folder / "model_last"
    done_train = (folder / "log.jsonl").is_file() and '"event": "end"' in (folder / "log.jsonl").read_text()
    if not done_train:
        argv = ["--out", str(folder), "--minutes", str(args.minutes), "--init", str(args.init),
                "--exclude-family", held_out, "--seed", str(args.seed), "--lr", str(args.lr),
                "--filters", *map(str, args.filters), "--patch", *map(str, args.patch),
                "--infer-patch", *map(str, args.infer_patch), "--batch", "2", "--p-foreground", "0.9",
                "--p-lesion-free", str(args.p_lesion_free),
                "--val-minutes", str(args.minutes / 2.0), "--threads", str(args.threads),
                "--version", f"lofo-without-{held_out}"]
        if (folder / "checkpoint.pt").is_file():
            argv.append("--resume")
        log(f"lofo: training without {held_out} ({args.minutes} min)")
        train_mod.train(train_mod.parse_args(argv))
    cal = json.loads((model / "model.json").read_text()).get("training", {}).get("threshold_calibration")
    if not cal:
        log(f"lofo: calibrating the lesion threshold without {held_out}")
        calibrate.main(["--model", str(model), "--write"] + (["--threads", str(args.threads)] if args.threads else []))
    result_path = folder / f"evaluation-{held_out}.json"
    if not result_path.is_file():
        log(f"lofo: evaluating on {held_out}")
        result = evaluate(str(model), list(args.seeds), 3, log=lambda m: None, families=(held_out,))
        result_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    result = json.loads(result_path.read_text())
    s = result["summary"]
    fam = s.get("by_family", {}).get(held_out, {})
    return {"held_out": held_out, "trained_on": [f for f in FAMILY_NAMES if f != held_out],
            "init": str(args.init), "init_saw": seen_by(str(args.init)), "model": str(model),
            "pooled": {k: fam[k] for k in KEEP if k in fam},
            "by_group": {g.split("/")[1]: {k: v[k] for k in KEEP if k in v}
                         for g, v in s.get("by_family_group", {}).items() if g.startswith(held_out + "/")},
            "command": (f".venv/bin/python -m inference.train.lofo --out {args.out} --minutes {args.minutes} "
                        f"--init {args.init} --p-lesion-free {args.p_lesion_free} --families {held_out}")}


def main(argv: list[str] | None = None) -> int:
    heap.configure()
    p = argparse.ArgumentParser(prog="python -m inference.train.lofo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--minutes", type=float, default=15.0, help="training budget per held-out family")
    p.add_argument("--init", default="inference/models/spinecord-t2", help="starting weights (a model folder)")
    p.add_argument("--families", nargs="+", default=["contusion", "cyst", "demyelination"],
                   help="families to hold out, one run each")
    p.add_argument("--seeds", type=int, nargs="+", default=[101, 202])
    p.add_argument("--seed", type=int, default=21)
    p.add_argument("--lr", type=float, default=0.001)
    p.add_argument("--p-lesion-free", type=float, default=0.35)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--filters", type=int, nargs="+", default=[6, 12, 24, 48, 96])
    p.add_argument("--patch", type=int, nargs=3, default=[32, 48, 64])
    p.add_argument("--infer-patch", type=int, nargs=3, default=[64, 128, 160])
    p.add_argument("--card-folder", type=Path, default=None, help="also write lofo.json here (the model's folder)")
    p.add_argument("--baseline", type=Path, default=None, metavar="EVALUATION_JSON",
                   help="`evaluate --json` of the --init model on every family: its row per held-out family is "
                        "shown beside the run's (what the starting weights did on that family)")
    args = p.parse_args(argv)
    try:
        held = check_families(args.families, "--families")
    except ValueError as exc:
        print(f"lofo: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    table_path = args.out / "lofo.json"
    table = json.loads(table_path.read_text()) if table_path.is_file() else {"runs": {}}
    baseline = json.loads(args.baseline.read_text())["summary"] if args.baseline else None
    for fam in held:
        table["runs"][fam] = run_one(fam, args, log=lambda m: print(m, flush=True))
        if baseline is not None and fam in baseline.get("by_family", {}):
            table["runs"][fam]["baseline"] = {k: v for k, v in baseline["by_family"][fam].items() if k in KEEP}
        table_path.write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")
        print(json.dumps(table["runs"][fam]["pooled"]), flush=True)
    if args.card_folder is not None:
        (Path(args.card_folder) / "lofo.json").write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
