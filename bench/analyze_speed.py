"""Seconds per volume and peak memory of `analyze()` on a real whole-spine sagittal T2.

Prints the split (preprocessing, network, postprocessing, metrics), the tile counts and peak
RSS, for the shipped model when it is trained, else for random weights of the shipped
architecture (or, before any model.json exists, a candidate architecture; it says which).
With --compare-skip it also runs without the body crop / air-tile skipping, to show what
that saves; with --compare-roi it times the network stage with and without the ROI (tiles
only around the cord, engine.segment's default) in alternating runs (1 + --repeat of each) and
prints the medians, the tiles each ran and the ROI's decision. Peer: nnU-Net's predictor with a
SCIseg-sized network took ~70 s on this volume at 1 mm (../shared/NOTES.md); the target here is <= 20 s on 2 CPU cores.

    .venv/bin/python bench/analyze_speed.py [--input NIFTI] [--model builtin:spinecord-t2] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from inference import heap  # noqa: E402  (needs the repository on the path)

DEFAULT_INPUT = REPO.parent / "shared" / "data" / "spine-t2-sag" / "errsm_11" / "t2.nii.gz"
NNUNET_PEER_S = 70.0  # ../shared/NOTES.md: nnU-Net predictor, SCIseg-sized net, 1 mm, 2 threads

# used only while no model.json exists for the shipped model: what inference/train/train.py
# writes by default (filters 8..128, 1 mm) with the sliding-window tile it is run with
CANDIDATE_META = {
    "name": "candidate", "version": "bench",
    "architecture": {"type": "DynUNet", "in_channels": 1, "out_channels": 2, "kernel_size": [3] * 5,
                     "strides": [1, 2, 2, 2, 2], "upsample_kernel_size": [2] * 4,
                     "filters": [8, 16, 32, 64, 128], "norm_name": "instance", "res_block": False},
    "spacing_mm": [1.0, 1.0, 1.0], "orientation": "RAS", "normalization": "zscore",
    "patch_size": [64, 128, 128], "regions": ["cord", "lesion"], "activation": "sigmoid",
    "thresholds": [0.5, 0.5], "weights": "weights.pt", "trained": False,
}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def pick_model(spec: str, device: str, tmp: Path):
    """(LoadedModel, what it is): trained shipped weights, else random weights of its architecture."""
    import torch

    from inference.models.registry import ModelError, build_network, load_model, read_meta, save_model

    try:
        meta = read_meta(spec)
        if meta.trained and (meta.folder / meta.weights).is_file():
            return load_model(spec, device=device), f"{meta.name} {meta.version} (trained weights)"
        raw = meta.to_json()
        what = f"random weights, architecture of {meta.folder / 'model.json'} (model not trained yet)"
    except ModelError as exc:
        raw = dict(CANDIDATE_META)
        what = f"random weights, CANDIDATE architecture in bench/analyze_speed.py ({exc})"
    raw["trained"] = True  # only in this temporary folder, so the run is allowed
    torch.manual_seed(0)
    save_model(tmp, raw, build_network(raw["architecture"]))
    return load_model(tmp, device=device), what


def compare_roi(engine, volume, model, n: int) -> dict:
    """Network seconds (wall and process CPU) of n alternating runs with and without the ROI; medians."""
    import statistics

    rows: dict[str, list[dict]] = {"full": [], "roi": []}
    for i in range(n):
        for mode in (("roi", "full") if i % 2 else ("full", "roi")):  # alternate who goes first
            cpu0 = time.process_time()
            seg = engine.segment(volume, model, roi=mode == "roi")
            rows[mode].append({"network_s": seg.timings["network"], "segment_cpu_s": time.process_time() - cpu0,
                               "tiles": seg.info["tiles"], "tiles_run": seg.info["tiles_run"],
                               "localiser_s": seg.info.get("localiser_s"), "roi": seg.info["roi"]})
            print(f"{mode:>4} run {i}: network {seg.timings['network']:.2f} s, "
                  f"segment CPU {rows[mode][-1]['segment_cpu_s']:.1f} s, "
                  f"tiles {seg.info['tiles_run']}/{seg.info['tiles']} run, roi {seg.info['roi']}")
    out = {}
    for mode, rs in rows.items():
        out[mode] = {"network_s_median": round(statistics.median(r["network_s"] for r in rs), 3),
                     "segment_cpu_s_median": round(statistics.median(r["segment_cpu_s"] for r in rs), 3),
                     "tiles_run": rs[-1]["tiles_run"], "tiles": rs[-1]["tiles"], "roi": rs[-1]["roi"],
                     "runs": rs}
        print(f"{mode:>4}: median network {out[mode]['network_s_median']:.2f} s, median segment CPU "
              f"{out[mode]['segment_cpu_s_median']:.1f} s over {len(rs)} runs; tiles {out[mode]['tiles_run']}"
              f"/{out[mode]['tiles']} run ({out[mode]['roi']})")
    return out


def main(argv: list[str] | None = None) -> int:
    heap.configure()  # as `dicom-node` does at start
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", default=str(DEFAULT_INPUT))
    ap.add_argument("--model", default="builtin:spinecord-t2")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    ap.add_argument("--repeat", type=int, default=1, help="runs after the first (warm timings)")
    ap.add_argument("--compare-skip", action="store_true", help="also run without body crop / tile skipping")
    ap.add_argument("--compare-roi", action="store_true",
                    help="time the network stage with and without the ROI (alternating, medians)")
    ap.add_argument("--json", help="also write the numbers here")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from inference import engine, pipeline
    from inference.volume import load_volume

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    volume = load_volume(args.input)
    t_read = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        model, what = pick_model(args.model, args.device, Path(tmp))
        t_load = time.perf_counter() - t0
        n_params = sum(p.numel() for p in model.network.parameters())
        print(f"input   {args.input}  {volume.array.shape}  spacing {tuple(round(s, 3) for s in volume.spacing)}")
        print(f"model   {what}")
        print(f"        {n_params / 1e6:.2f} M parameters, patch {model.meta.patch_size}, "
              f"spacing {model.meta.spacing_mm} mm, device {model.device}, torch threads {torch.get_num_threads()}")
        print(f"read {t_read:.2f} s, model load {t_load:.2f} s")

        runs = []
        load_before = os.getloadavg()[0]
        for i in range(1 + max(0, args.repeat)):
            cpu0 = time.process_time()
            seg = engine.segment(volume, model)
            cpu_seg = time.process_time() - cpu0
            t0 = time.perf_counter()
            cord, lesion, source = seg.cord_mask, seg.lesion_mask, "model output"
            if "random" in what:  # random masks would time the metrics on noise: use the manual cord
                manual = Path(args.input).with_name("t2_seg-manual.nii.gz")
                if manual.is_file():
                    cord = (load_volume(manual).array > 0.5).astype(np.uint8)
                    lesion, source = np.zeros_like(cord), "manual cord mask"
            pipeline.measure(cord, lesion, volume.affine)
            t_metrics = time.perf_counter() - t0
            timing = {**seg.timings, "metrics": t_metrics}
            total = sum(timing.values())
            runs.append({"run": i, **{k: round(v, 3) for k, v in timing.items()}, "total": round(total, 3),
                         "segment_cpu_s": round(cpu_seg, 3),
                         **{k: seg.info[k] for k in ("tiles", "tiles_skipped")}})
            print(f"run {i} ({'cold' if i == 0 else 'warm'}): "
                  + ", ".join(f"{k} {v:.2f} s" for k, v in timing.items())
                  + f" | total {total:.2f} s | tiles {seg.info['tiles'] - seg.info['tiles_skipped']}"
                  f"/{seg.info['tiles']} run (crop {seg.info['crop_shape']} of {seg.info['model_shape']};"
                  f" roi {seg.info.get('roi')})"
                  f" | segment CPU time {cpu_seg:.1f} s | metrics on {source}")
        result = {"input": args.input, "model": what, "params_m": round(n_params / 1e6, 3),
                  "device": str(model.device), "threads": torch.get_num_threads(), "runs": runs}
        if args.compare_skip:
            cpu0 = time.process_time()
            seg = engine.segment(volume, model, skip_background=False)
            cpu_seg = time.process_time() - cpu0
            total = sum(seg.timings.values())
            result["no_skip"] = {**{k: round(v, 3) for k, v in seg.timings.items()}, "tiles": seg.info["tiles"],
                                 "segment_cpu_s": round(cpu_seg, 3)}
            print(f"without crop/skip: network {seg.timings['network']:.2f} s, {seg.info['tiles']} tiles, "
                  f"total (no metrics) {total:.2f} s, segment CPU time {cpu_seg:.1f} s")
        if args.compare_roi:
            result["roi"] = compare_roi(engine, volume, model, 1 + max(0, args.repeat))
        best = min(r["total"] for r in runs)
        result["peak_rss_mb"] = round(peak_rss_mb(), 1)
        result["loadavg_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        print(f"peak RSS {result['peak_rss_mb']:.0f} MB")
        cores = os.cpu_count() or 1
        print(f"load average before/after {load_before:.1f}/{os.getloadavg()[0]:.1f} on {cores} cores: "
              "above ~1 the wall times include waiting for other processes; segment CPU time / threads "
              "estimates the wall time on an idle machine")
        print(f"best total {best:.2f} s per volume; target 20 s: {'met' if best <= 20 else 'NOT met'}; "
              f"nnU-Net peer (NOTES.md, SCIseg-sized, same volume) ~{NNUNET_PEER_S:.0f} s "
              f"-> ratio {NNUNET_PEER_S / best:.1f}x")
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
