"""Our nnU-Net runtime vs nnunetv2's nnUNetPredictor: same folder, same volume, CPU.

    python bench/nnunet.py                      # SCIseg-sized network (PlainConvUNet 32->320, 30.8 M
                                                # parameters, patch 64x160x192) on errsm_11 at 1 mm
    python bench/nnunet.py --size small         # same shape, 1/4 of the channels (quick)
    options: --threads N (2), --repeat N (alternating runs, fastest counts), --folds N, --mirror,
             --spacing MM (0.8: 24 tiles), --compile (our side with torch.compile)

Each side runs in its own process (fresh interpreter, so peak RSS is its own) with the same
number of torch threads; the folder is a random-weight trained-model folder written by
nnunetv2 itself (tests/nnunet_folder.py). Prints wall time (load, predict), peak RSS, label
agreement and the largest probability difference, and the speed ratio nnU-Net / ours.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DEFAULT_IMAGE = REPO.parent / "shared" / "data" / "spine-t2-sag" / "errsm_11" / "t2.nii.gz"
SIZES = {  # features per stage; strides and patch as SCIseg's 3d_fullres
    "sciseg": [32, 64, 128, 256, 320, 320],
    "small": [8, 16, 32, 64, 80, 80],
}
STRIDES = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]]
PATCH = [64, 160, 192]


def make_bench_folder(root: Path, size: str, spacing: float, folds: int, mirror: bool) -> Path:
    from tests.nnunet_folder import dataset_dict, make_folder, plans_dict

    plans = plans_dict([spacing] * 3, PATCH, SIZES[size], STRIDES, use_mask=False)
    folder = root / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    return make_folder(folder, plans, dataset_dict(True, None), [str(f) for f in range(folds)],
                       (0, 1, 2) if mirror else None)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _cpu_s() -> float:
    """User + system CPU seconds of this process: less sensitive than wall time to other load."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def worker(side: str, folder: Path, image: Path, out: Path, threads: int, folds: int, compile_net: bool) -> None:
    """One side, in its own process: load, predict, save labels + probabilities, print timings."""
    import torch

    torch.set_num_threads(threads)
    from inference.volume import load_nifti

    vol = load_nifti(image)
    c0 = _cpu_s()
    t0 = time.perf_counter()
    if side == "ours":
        from inference.models.nnunet import load_nnunet
        from inference.nnunet_runtime import segment_nnunet

        model = load_nnunet(folder, device="cpu", compile=compile_net)
        t1 = time.perf_counter()
        seg = segment_nnunet(vol, model)
        labels, probs = seg.info["labels"], np.stack([seg.cord_prob, seg.lesion_prob])
        extra = {"tiles": seg.info.get("tiles"), "stages_s": seg.timings}
    else:
        os.environ.setdefault("nnUNet_raw", str(folder))
        os.environ.setdefault("nnUNet_preprocessed", str(folder))
        os.environ.setdefault("nnUNet_results", str(folder))
        from tests.nnunet_folder import nnunet_predict  # builds nnUNetPredictor from the folder

        t1 = t0  # nnunet_predict loads and predicts in one call; load time is measured inside it
        data = vol.array.transpose(2, 1, 0)
        seg_zyx, probs_zyx = nnunet_predict(folder, data, vol.spacing[::-1], [str(f) for f in range(folds)])
        labels, probs = seg_zyx.transpose(2, 1, 0), probs_zyx.transpose(0, 3, 2, 1)
        extra = {}
    t2 = time.perf_counter()
    np.savez(out, labels=labels.astype(np.uint8), probs=probs.astype(np.float32))
    print(json.dumps({"side": side, "load_s": t1 - t0, "predict_s": t2 - t1, "total_s": t2 - t0,
                      "cpu_s": _cpu_s() - c0, "peak_rss_mb": _peak_rss_mb(), **extra}))


def run_side(side: str, folder: Path, image: Path, out: Path, threads: int, folds: int, compile_net: bool) -> dict:
    cmd = [sys.executable, __file__, "--worker", side, "--folder", str(folder), "--image", str(image),
           "--out", str(out), "--threads", str(threads), "--folds", str(folds)] + (["--compile"] if compile_net else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"{side} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="sciseg")
    ap.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    ap.add_argument("--spacing", type=float, default=1.0, help="configuration spacing, mm (0.8: 24 tiles)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--folds", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=1, help="runs per side, alternating; the fastest counts")
    ap.add_argument("--mirror", action="store_true", help="mirroring TTA on 3 axes (8x the network work)")
    ap.add_argument("--compile", action="store_true",
                    help="our side with torch.compile (paid at load; measured no gain at the SCIseg patch on CPU)")
    ap.add_argument("--worker", choices=["ours", "nnunet"], help=argparse.SUPPRESS)
    ap.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.folder, args.image, args.out, args.threads, args.folds, args.compile)
        return
    if not args.image.is_file():
        raise SystemExit(f"{args.image}: not found (pass --image)")
    with tempfile.TemporaryDirectory(prefix="bench-nnunet-") as tmp:
        tmpdir = Path(tmp)
        folder = make_bench_folder(tmpdir, args.size, args.spacing, args.folds, args.mirror)
        print(f"network {args.size} ({SIZES[args.size]}), patch {PATCH}, spacing {args.spacing} mm, "
              f"folds {args.folds}, mirroring {args.mirror}, {args.threads} threads, image {args.image}")
        res: dict[str, dict] = {}
        for r in range(args.repeat):  # alternate the order; keep each side's fastest run (shared machines)
            for side in (("nnunet", "ours") if r % 2 == 0 else ("ours", "nnunet")):
                run = run_side(side, folder, args.image, tmpdir / f"{side}.npz", args.threads, args.folds,
                               side == "ours" and args.compile)
                if side not in res or run["total_s"] < res[side]["total_s"]:
                    res[side] = run
        a, b = np.load(tmpdir / "ours.npz"), np.load(tmpdir / "nnunet.npz")
        agree = float((a["labels"] == b["labels"]).mean())
        diff = np.abs(a["probs"] - b["probs"])
        dprob, over = float(diff.max()), float((diff > 1e-3).mean())
    for side in ("nnunet", "ours"):
        r = res[side]
        print(f"  {side:7s} total {r['total_s']:7.1f} s  (load {r['load_s']:.1f} s, predict {r['predict_s']:.1f} s)"
              f"  CPU {r['cpu_s']:7.1f} s  peak RSS {r['peak_rss_mb']:7.0f} MB")
    ratio_case = res["nnunet"]["total_s"] / res["ours"]["predict_s"]
    print(f"  tiles {res['ours'].get('tiles')}, our stages {json.dumps({k: round(v, 2) for k, v in res['ours'].get('stages_s', {}).items()})}")
    print(f"  labels agree on {agree:.5%} of voxels, max |p_ours - p_nnunet| = {dprob:.2e} "
          f"({over:.4%} of probabilities differ by more than 1e-3)")
    print(f"  per case (our weights resident{', compiled at load' if args.compile else ''}): nnU-Net/ours "
          f"{ratio_case:.2f}x; including our load: {res['nnunet']['total_s'] / res['ours']['total_s']:.2f}x; "
          f"CPU time: {res['nnunet']['cpu_s'] / res['ours']['cpu_s']:.2f}x; "
          f"peak memory ratio nnU-Net/ours: {res['nnunet']['peak_rss_mb'] / res['ours']['peak_rss_mb']:.2f}x")


if __name__ == "__main__":
    main()
