"""Seconds per volume of SCT's MS lesion pipeline (inference.sct) next to our model, same image, 2 cores.

Runs, in one process with the same torch thread count, alternating (--repeat rounds):
  sct   inference.sct.pipeline.run: SCT's t2_ax_lesion (or --sct-model) with its centerline network,
        from the native volume to the lesion mask in the native grid (steps timed apart);
  ours  inference.engine.segment with the shipped model: cord and lesion masks in the native grid.
The first round includes one-off costs (oneDNN kernels, first page faults); the medians of the later
rounds are what a running node sees. Model loading is timed apart (the node loads once). Prints wall
and CPU seconds per side, the step split of SCT's pipeline, the lesions each found, and SCT / ours.
In the node both run on a series routed to an SCT pipeline (our cord, SCT's lesions), so the sum is
its network cost.

    .venv/bin/python bench/sct_lesion.py [--image NIFTI] [--sct-data-dir DIR] [--threads 2] [--repeat 3]
                                         [--cores 2]   (pin the process to 2 CPUs: for many-core hosts)
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, TypeVar

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data"
T = TypeVar("T")


def timed(fn: Callable[[], T]) -> tuple[T, float, float]:
    """(result, wall seconds, CPU seconds of this process: all threads)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", default=str(SHARED / "unlabelled" / "t2_ms_axial.nii.gz"))
    ap.add_argument("--sct-data-dir", default=str(SHARED / "sct-models"))
    ap.add_argument("--sct-model", default="sct:t2_ax_lesion")
    ap.add_argument("--model", default="builtin:spinecord-t2", help="our model")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (both sides)")
    ap.add_argument("--cores", type=int, default=0, help="pin the process to this many CPUs (0 = leave as is)")
    ap.add_argument("--repeat", type=int, default=3, help="rounds (each runs both sides once)")
    args = ap.parse_args()

    if args.cores:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.cores])
    import numpy as np
    import torch

    from inference import heap
    from inference.engine import segment
    from inference.lesion_filter import label_lesions
    from inference.pipeline import resolve_model
    from inference.sct.models import load_sct_model
    from inference.sct.pipeline import run
    from inference.volume import load_volume

    heap.configure()
    torch.set_num_threads(args.threads)
    volume = load_volume(args.image)
    print(f"image {args.image}: {'x'.join(map(str, volume.array.shape))} voxels of "
          f"{'x'.join(f'{s:.2f}' for s in volume.spacing)} mm; torch threads {torch.get_num_threads()}, "
          f"CPUs {len(os.sched_getaffinity(0))} of {os.cpu_count()}")
    sct_model, sct_load, _ = timed(lambda: load_sct_model(args.sct_model, [args.sct_data_dir]))
    ours_model, ours_load, _ = timed(lambda: resolve_model(args.model, device="cpu"))
    print(f"load: sct {sct_load:.1f} s ({sct_model.identity.name} {sct_model.identity.version}), "
          f"ours {ours_load:.1f} s ({args.model})")

    rows: dict[str, list[tuple[float, float]]] = {"sct": [], "ours": []}
    steps: list[dict[str, float]] = []
    lesions: dict[str, np.ndarray] = {}
    for i in range(args.repeat):
        res, wall, cpu = timed(lambda: run(volume, sct_model))
        rows["sct"].append((wall, cpu))
        steps.append(res.timings)
        lesions["sct"] = res.mask
        seg, wall2, cpu2 = timed(lambda: segment(volume, ours_model))
        rows["ours"].append((wall2, cpu2))
        lesions["ours"] = seg.lesion_mask
        print(f"round {i + 1}: sct {wall:.1f} s wall {cpu:.1f} s CPU | ours {wall2:.1f} s wall {cpu2:.1f} s CPU")

    warm = slice(1, None) if args.repeat > 1 else slice(None)
    med = {k: (statistics.median(w for w, _ in v[warm]), statistics.median(c for _, c in v[warm]))
           for k, v in rows.items()}
    split = {k: statistics.median(s[k] for s in steps[warm]) for k in steps[0]}
    print(f"median of rounds {'2..' + str(args.repeat) if args.repeat > 1 else '1'}:")
    print(f"  sct  {med['sct'][0]:6.1f} s wall {med['sct'][1]:6.1f} s CPU   ("
          + ", ".join(f"{k} {v:.1f}" for k, v in split.items()) + ")")
    print(f"  ours {med['ours'][0]:6.1f} s wall {med['ours'][1]:6.1f} s CPU")
    print(f"  sct / ours: {med['sct'][0] / med['ours'][0]:.2f} wall, {med['sct'][1] / med['ours'][1]:.2f} CPU; "
          f"both (a series routed to an SCT pipeline): {med['sct'][0] + med['ours'][0]:.1f} s wall")
    for name, mask in lesions.items():
        print(f"  lesions {name}: {label_lesions(mask)[1]} components, {int(mask.sum())} voxels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
