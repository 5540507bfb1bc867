"""Our nnU-Net runtime vs nnunetv2's nnUNetPredictor: same folder, same volume, CPU.

    python bench/nnunet.py                      # SCIseg-sized network (PlainConvUNet 32->320, 30.8 M
                                                # parameters, patch 64x160x192) on errsm_11 at 1 mm
    python bench/nnunet.py --size small         # same shape, 1/4 of the channels (quick)
    python bench/nnunet.py --cli --repeat 3     # per-case commands, start to exit (below)
    options: --threads N (2), --repeat N (alternating runs, fastest counts), --cases N (cases per
             process, 2: the first case and one with everything resident), --folds N, --mirror,
             --spacing MM (0.8: 24 tiles), --crop ZxYxX (a corner of the volume, quicker),
             --sides nnunet,ours,fast (which to run), --env KEY=VALUE (every side's process),
             ours only: --tile-batch N, --compile

Sides: nnunet = nnUNetPredictor; ours = our runtime as configured by default (nnU-Net's own
arithmetic: output identical to the bit); fast = ours with fast_cpu (channels-last, fused norms,
two passes per forward: same labels, probabilities within float16 steps of nnU-Net's).

Each side runs in its own process (fresh interpreter, so peak RSS is its own) with the same
number of torch threads. Ours sets its heap up as `dicom-node` does at start (inference.heap);
nnU-Net's runs with glibc's defaults unless given the same settings, which separates what memory
handling gains from what our code gains:
    --env MALLOC_ARENA_MAX=1 --env MALLOC_MMAP_THRESHOLD_=2147483647
    --env MALLOC_TRIM_THRESHOLD_=18446744073709551615
The folder is a random-weight trained-model folder written by nnunetv2 itself
(testbed/nnunet_folder.py). Each process loads once, then predicts the same
volume --cases times: the first case includes one-off costs (oneDNN kernel generation, first
page faults), later cases are what a running node sees (our weights stay resident in the node;
nnU-Net's predictor object is reused likewise, so both sides get the same treatment).
Prints wall time (load, first case, steady case), CPU seconds, peak RSS, label agreement, the
largest probability difference, and the ratios nnU-Net / ours.

--cli measures instead what a site pays when it runs one command per case, because that is how
SCIseg is run: every case pays interpreter start, imports, model load, and nnU-Net's worker
processes, while the node keeps the weights resident. Both sides read one file,
IN_DIR/case_0000.nii.gz (nnU-Net's channel naming; cropped if asked); wall clock runs from
process start to exit:
    nnunet  nnUNetv2_predict_from_modelfolder -i IN_DIR -o OUT -m FOLDER -f 0 -device cpu --disable_tta
    ours    dicom-node segment IN_DIR/case_0000.nii.gz --model "FOLDER?folds=0&use_mirroring=false"
            --out OUT --device cpu --threads N             (fast: &fast_cpu=true in the spec)
(--mirror drops --disable_tta and sets use_mirroring=true.) Left at nnU-Net's defaults: -chk
(checkpoint_final.pth), -npp 3 and -nps 3 (for one case: one preprocessing process and a pool
of three export processes, each a spawned interpreter that imports torch, beside a forked
Manager server and multiprocessing's resource tracker), -step_size 0.5, no --save_probabilities,
progress bar on, --not_on_device off. Threads: on -device cpu nnU-Net's command calls
torch.set_num_threads(cpu_count()) itself (so OMP_NUM_THREADS alone does not bind it), then runs
the network with min(that, nnUNet_def_n_proc) threads and sets nnUNet_def_n_proc in its export
workers (default 8); so both commands get OMP_NUM_THREADS = nnUNet_def_n_proc = N and ours
--threads N, N = --threads or min(8, cores), nnU-Net's own default. Ours does more per case
(probability map, measurements.json). Prints per
side the fastest wall time of --repeat alternating runs, CPU seconds and the largest process's
peak RSS of the tree (wait4, as /usr/bin/time -v), the tree's peak summed PSS (sampled from
/proc), the share of voxels where nnU-Net's label image and our cord/lesion masks agree, and
nnU-Net / ours. --tile-batch and --compile do not apply.

--cli --cases N: a cohort in one command per side instead (N copies of the image, IN_DIR/
caseK_0000.nii.gz): nnU-Net predicts the folder (its preprocessing and export workers overlap
the network), ours gets the N files as inputs (`dicom-node segment` loads the model once, writes
OUT/caseK_0000/ per case plus cohort.csv and lesions.csv). Wall per case = wall / N.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
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
    from testbed.nnunet_folder import dataset_dict, make_folder, plans_dict

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


def _volume(image: Path, crop: str | None):
    from inference.volume import Volume, load_nifti

    vol = load_nifti(image)
    if crop:
        z, y, x = (int(v) for v in crop.lower().split("x"))  # sizes in (z, y, x) = nnU-Net's order
        vol = Volume(array=vol.array[:x, :y, :z].copy(), affine=vol.affine)
    return vol


def worker(args: argparse.Namespace) -> None:
    """One side, in its own process: load once, predict --cases times, save the first result."""
    if args.worker in ("ours", "fast"):  # as `dicom-node` does at start, before any thread exists
        from inference import heap
        heap.configure()
    import torch

    torch.set_num_threads(args.threads)
    vol = _volume(args.image, args.crop)
    folds = [str(f) for f in range(args.folds)]
    c0, t0 = _cpu_s(), time.perf_counter()
    if args.worker in ("ours", "fast"):
        from inference.engine import segment
        from inference.models.nnunet import load_nnunet

        model = load_nnunet(args.folder, device="cpu", folds=folds, use_mirroring=args.mirror,
                            compile=args.compile, fast_cpu=args.fast)

        def predict():
            seg = segment(vol, model, tile_batch=args.tile_batch or None)
            return seg.info["labels"], np.stack([seg.cord_prob, seg.lesion_prob]), seg
    else:
        from testbed.nnunet_folder import nnunet_predictor, predictor_predict

        pred = nnunet_predictor(args.folder, folds, args.mirror)
        data, spacing = vol.array.transpose(2, 1, 0), vol.spacing[::-1]

        def predict():
            seg_zyx, probs_zyx = predictor_predict(pred, data, spacing)
            return seg_zyx.transpose(2, 1, 0), probs_zyx.transpose(0, 3, 2, 1), None
    load_s, load_cpu = time.perf_counter() - t0, _cpu_s() - c0
    cases = []
    for i in range(args.cases):
        c, t = _cpu_s(), time.perf_counter()
        labels, probs, seg = predict()
        cases.append({"wall_s": time.perf_counter() - t, "cpu_s": _cpu_s() - c,
                      **({"stages_s": seg.timings, "tiles": seg.info.get("tiles"), "batch": seg.info.get("batch")}
                         if seg is not None else {})})
        if i == 0:
            np.savez(args.out, labels=labels.astype(np.uint8), probs=probs.astype(np.float32))
    print(json.dumps({"side": args.worker, "load_s": load_s, "load_cpu_s": load_cpu, "cases": cases,
                      "peak_rss_mb": _peak_rss_mb()}))


def alternating(sides: list[str], repeat: int):
    """(run, side) for `repeat` rounds, each round starting one side later: a machine that drifts
    (other jobs, thermal) then does not always favour the same side."""
    for r in range(repeat):
        for side in sides[r % len(sides):] + sides[:r % len(sides)]:
            yield r, side


def run_side(side: str, folder: Path, out: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", "nnunet" if side == "nnunet" else "ours",
           "--folder", str(folder), "--image", str(args.image),
           "--out", str(out), "--threads", str(args.threads), "--folds", str(args.folds),
           "--cases", str(args.cases), "--tile-batch", str(args.tile_batch)]
    cmd += (["--crop", args.crop] if args.crop else []) + (["--mirror"] if args.mirror else [])
    if side != "nnunet":
        cmd += (["--compile"] if args.compile else []) + (["--fast"] if side == "fast" else [])
    env = {**os.environ, **dict(e.split("=", 1) for e in args.env)}  # the same for every side
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{side} failed:\n{proc.stderr[-4000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["first_s"] = res["load_s"] + res["cases"][0]["wall_s"]  # a fresh process's first answer
    res["first_cpu_s"] = res["load_cpu_s"] + res["cases"][0]["cpu_s"]
    steady = min(res["cases"][1:] or res["cases"], key=lambda c: c["wall_s"])
    res["steady_s"], res["steady_cpu_s"] = steady["wall_s"], steady["cpu_s"]
    return res


# --- --cli: each side as the separate command a site runs per case ---------------------------

NNUNET_CLI = "nnUNetv2_predict_from_modelfolder"
NNUNET_DEFAULT_THREADS = 8  # nnunetv2.configuration.default_num_processes without nnUNet_def_n_proc


def cli_threads(requested: int | None) -> int:
    """Torch threads for both commands: nnU-Net's own CPU default, min(8, cores), unless asked;
    more than the cores is refused, since nnU-Net's command would quietly use fewer."""
    cores = os.cpu_count() or 1
    if requested is None:
        return min(NNUNET_DEFAULT_THREADS, cores)
    if not 0 < requested <= cores:
        raise SystemExit(f"--threads {requested}: --cli needs 1..{cores} (nnU-Net's command caps at the cores)")
    return requested


def cli_input(image: Path, crop: str | None, in_dir: Path, cases: int = 1) -> list[Path]:
    """IN_DIR/case_0000.nii.gz (nnU-Net's name for channel 0 of case "case"), or case1_0000 ..
    caseN_0000 for a cohort; both sides read these files. A crop keeps the file's dtype and
    affine (a corner at index 0 does not move the grid)."""
    import nibabel as nib

    in_dir.mkdir(parents=True, exist_ok=True)
    paths = [in_dir / (f"case{k}_0000.nii.gz" if cases > 1 else "case_0000.nii.gz") for k in range(1, cases + 1)]
    if crop:
        z, y, x = (int(v) for v in crop.lower().split("x"))  # (z, y, x) = nnU-Net's order, as in-process
        nib.save(nib.load(str(image)).slicer[:x, :y, :z], str(paths[0]))
    else:
        shutil.copyfile(image, paths[0])
    for path in paths[1:]:  # the cohort's other cases: the same bytes
        shutil.copyfile(paths[0], path)
    return paths


def cli_command(side: str, folder: Path, in_files: list[Path], out_dir: Path, threads: int,
                args: argparse.Namespace) -> list[str]:
    """The command line of one side; nnU-Net's flags not named here stay at its defaults."""
    bin_dir = Path(sys.executable).parent
    folds = [str(f) for f in range(args.folds)]
    if side == "nnunet":
        return ([str(bin_dir / NNUNET_CLI), "-i", str(in_files[0].parent), "-o", str(out_dir), "-m", str(folder),
                 "-f", *folds, "-device", "cpu"] + ([] if args.mirror else ["--disable_tta"]))
    spec = f"{folder}?folds={','.join(folds)}&use_mirroring={'true' if args.mirror else 'false'}"
    spec += "&fast_cpu=true" if side == "fast" else ""
    return [str(bin_dir / "dicom-node"), "segment", *map(str, in_files), "--model", spec, "--out", str(out_dir),
            "--device", "cpu", "--threads", str(threads)]


def cli_env(threads: int, extra: list[str]) -> dict[str, str]:
    """The same environment for both commands. nnU-Net's command sets torch to every core itself
    and then caps the network (and its export workers) at nnUNet_def_n_proc; OMP_NUM_THREADS
    reaches its preprocessing worker, which sets nothing."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "nnUNet_def_n_proc": str(threads)}
    return {**env, **dict(e.split("=", 1) for e in extra)}


def _children_map() -> dict[int, list[int]]:
    """Parent pid -> child pids, from /proc/PID/stat (Linux)."""
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:  # gone meanwhile
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            kids.setdefault(ppid, []).append(int(entry))
    return kids


def _tree(root: int) -> list[int]:
    kids, todo, found = _children_map(), [root], []
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += kids.get(pid, [])
    return found


def _pss_kb(pid: int) -> int:
    """Proportional set size: shared pages (torch's libraries in every worker) counted once in all."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _sample_tree(root: int, stop: threading.Event, peak: dict[str, int], every_s: float = 0.2) -> None:
    """Peak summed PSS and most processes at once of root's tree, until stop."""
    while not stop.wait(every_s):
        pids = _tree(root)
        peak["pss_kb"] = max(peak["pss_kb"], sum(_pss_kb(p) for p in pids))
        peak["procs"] = max(peak["procs"], len(pids))


def run_command(cmd: list[str], env: dict[str, str], log: Path) -> dict:
    """Wall clock from start to exit; CPU time and largest-process peak RSS of the whole tree from
    wait4 (what /usr/bin/time -v reports); summed PSS of the tree sampled from /proc."""
    peak, stop = {"pss_kb": 0, "procs": 0}, threading.Event()
    with open(log, "w") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        sampler = threading.Thread(target=_sample_tree, args=(proc.pid, stop, peak), daemon=True)
        sampler.start()
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {shlex.join(cmd)}\n{log.read_text()[-4000:]}")
    return {"wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "max_rss_mb": ru.ru_maxrss / 1024.0,
            "tree_pss_mb": peak["pss_kb"] / 1024.0, "procs": peak["procs"]}


def cli_agreement(nnunet_out: Path, ours_out: Path, folder: Path, folds: list[str], case: str = "case",
                  ours_case: str = "") -> tuple[float, float, float]:
    """Shares of voxels where (label in cord labels) == our cord mask, (label in lesion labels) ==
    our lesion mask, and both; labels as our runtime reads them from the folder's dataset.json.
    `case`: nnU-Net's output name; `ours_case`: our case folder under ours_out ("" = ours_out)."""
    import nibabel as nib

    from inference.models.nnunet_folder import resolve_settings

    choice = resolve_settings(folder, folds=folds)
    label = np.asarray(nib.load(str(nnunet_out / f"{case}.nii.gz")).dataobj)
    ours = ours_out / ours_case if ours_case else ours_out
    cord = np.asarray(nib.load(str(ours / "cord.nii.gz")).dataobj) > 0
    lesion = np.asarray(nib.load(str(ours / "lesion.nii.gz")).dataobj) > 0
    if label.shape != cord.shape or label.shape != lesion.shape:
        raise SystemExit(f"grids differ: nnU-Net {label.shape}, ours {cord.shape} / {lesion.shape}")
    cord_ok = np.isin(label, sorted(choice.cord_labels)) == cord
    lesion_ok = np.isin(label, sorted(choice.lesion_labels)) == lesion
    return float(cord_ok.mean()), float(lesion_ok.mean()), float((cord_ok & lesion_ok).mean())


def main_cli(args: argparse.Namespace, sides: list[str]) -> None:
    """--cli: alternate the sides' commands --repeat times, then timings, memory and agreement."""
    if args.compile or args.tile_batch:
        raise SystemExit("--cli: --compile and --tile-batch are not settings of `dicom-node segment`")
    threads = cli_threads(args.threads)
    env = cli_env(threads, args.env)
    with tempfile.TemporaryDirectory(prefix="bench-nnunet-cli-") as tmp:
        tmpdir = Path(tmp)
        folder = make_bench_folder(tmpdir, args.size, args.spacing, args.folds, args.mirror)
        cases = args.cases or 1
        in_files = cli_input(args.image, args.crop, tmpdir / "in", cases)
        cmds = {s: cli_command(s, folder, in_files, tmpdir / s, threads, args) for s in sides}
        print(f"--cli: network {args.size} ({SIZES[args.size]}), patch {PATCH}, spacing {args.spacing} mm, "
              f"folds {args.folds}, mirroring {args.mirror}, {threads} threads (OMP_NUM_THREADS, "
              f"nnUNet_def_n_proc, --threads), {cases} case(s) per command, image {args.image}"
              f"{' crop ' + args.crop if args.crop else ''}"
              f"{'; env ' + ' '.join(args.env) if args.env else ''}", flush=True)
        for side, cmd in cmds.items():
            print(f"  {side:6s} $ {shlex.join(cmd)}")
        runs: dict[str, list[dict]] = {side: [] for side in sides}
        for r, side in alternating(sides, args.repeat):
            shutil.rmtree(tmpdir / side, ignore_errors=True)  # no stale output can pass the check
            runs[side].append(run_command(cmds[side], env, tmpdir / f"{side}.log"))
            print(f"  run {r + 1} {side:6s} {runs[side][-1]['wall_s']:7.1f} s", flush=True)
        folds = [str(f) for f in range(args.folds)]
        names = [(f"case{k}", f"case{k}_0000") for k in range(1, cases + 1)] if cases > 1 else [("case", "")]
        parity = {side: tuple(min(v) for v in zip(*(cli_agreement(tmpdir / "nnunet", tmpdir / side, folder, folds,
                                                                  n, o) for n, o in names)))
                  for side in sides if side != "nnunet"}
    print_cli(runs, parity, cases)


def print_cli(runs: dict[str, list[dict]], parity: dict[str, tuple[float, float, float]], cases: int = 1) -> None:
    best = {side: {k: min(r[k] for r in rs) for k in rs[0]} for side, rs in runs.items()}
    for side, b in best.items():
        print(f"  {side:7s} wall {b['wall_s']:7.1f} s, {b['wall_s'] / cases:.1f} s per case  "
              f"CPU {b['cpu_s']:7.1f} s  peak RSS of the largest "
              f"process {b['max_rss_mb']:6.0f} MB  peak PSS of the tree {b['tree_pss_mb']:6.0f} MB "
              f"({b['procs']} processes at most)")
    n = best["nnunet"]
    for side, (cord, lesion, both) in parity.items():
        o = best[side]
        verdict = "labels agree" if both >= 0.999 else "LABELS DIFFER"
        print(f"  {side}: {verdict} on {both:.5%} of voxels (cord {cord:.5%}, lesion {lesion:.5%})")
        print(f"  {side}: nnU-Net / {side}: wall {n['wall_s'] / o['wall_s']:.2f}x, CPU {n['cpu_s'] / o['cpu_s']:.2f}x, "
              f"peak RSS {n['max_rss_mb'] / o['max_rss_mb']:.2f}x, tree PSS {n['tree_pss_mb'] / o['tree_pss_mb']:.2f}x")
    print("  (wall: start to exit, fastest of --repeat runs; CPU and peak RSS from wait4 over the process tree; "
          "PSS sampled every 0.2 s; check what else runs on the machine)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="sciseg")
    ap.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    ap.add_argument("--crop", help="ZxYxX: predict only this corner of the volume (nnU-Net axis order)")
    ap.add_argument("--spacing", type=float, default=1.0, help="configuration spacing, mm (0.8: 24 tiles)")
    ap.add_argument("--threads", type=int, help="torch threads per side (2; --cli: min(8, cores), nnU-Net's)")
    ap.add_argument("--cli", action="store_true",
                    help="time the per-case commands (nnU-Net's console script, dicom-node segment)")
    ap.add_argument("--folds", type=int, default=1)
    ap.add_argument("--cases", type=int, help="cases per process: the first, then steady state (2); "
                                               "--cli: a cohort of N copies per command (1)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per side, alternating; the fastest counts")
    ap.add_argument("--mirror", action="store_true", help="mirroring TTA on 3 axes (8x the network work)")
    ap.add_argument("--tile-batch", type=int, default=0, help="ours: network passes per forward (0: default)")
    ap.add_argument("--sides", default="nnunet,ours,fast", help="comma-separated: nnunet, ours, fast")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                    help="environment for every side's process (e.g. glibc malloc or THP settings)")
    ap.add_argument("--fast", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--compile", action="store_true", help="ours: torch.compile at load (paid in load time)")
    ap.add_argument("--worker", choices=["ours", "nnunet"], help=argparse.SUPPRESS)
    ap.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    if not args.image.is_file():
        raise SystemExit(f"{args.image}: not found (pass --image)")
    sides = [x.strip() for x in args.sides.split(",") if x.strip()]
    if "nnunet" not in sides or not set(sides) <= {"nnunet", "ours", "fast"} or len(sides) < 2:
        raise SystemExit("--sides: nnunet and at least one of ours, fast")
    if args.cli:
        main_cli(args, sides)
        return
    if args.threads is None:
        args.threads = 2
    args.cases = args.cases or 2
    with tempfile.TemporaryDirectory(prefix="bench-nnunet-") as tmp:
        tmpdir = Path(tmp)
        folder = make_bench_folder(tmpdir, args.size, args.spacing, args.folds, args.mirror)
        print(f"network {args.size} ({SIZES[args.size]}), patch {PATCH}, spacing {args.spacing} mm, "
              f"folds {args.folds}, mirroring {args.mirror}, {args.threads} threads, cases/process {args.cases}, "
              f"image {args.image}{' crop ' + args.crop if args.crop else ''}"
              f"{'; ours compiled' if args.compile else ''}"
              f"{f'; tile batch {args.tile_batch}' if args.tile_batch else ''}"
              f"{'; env ' + ' '.join(args.env) if args.env else ''}", flush=True)
        runs: dict[str, list[dict]] = {side: [] for side in sides}
        for r, side in alternating(sides, args.repeat):
            runs[side].append(run_side(side, folder, tmpdir / f"{side}.npz", args))
            print(f"  run {r + 1} {side:6s} first {runs[side][-1]['first_s']:7.1f} s  steady "
                  f"{runs[side][-1]['steady_s']:7.1f} s", flush=True)
        ref = np.load(tmpdir / "nnunet.npz")
        parity = {}
        for side in [x for x in sides if x != "nnunet"]:
            out = np.load(tmpdir / f"{side}.npz")
            diff = np.abs(out["probs"] - ref["probs"])
            parity[side] = (float((out["labels"] == ref["labels"]).mean()), float(diff.max()),
                            float((diff > 1e-3).mean()))
    best = {side: {k: min(r[k] for r in rs) for k in ("first_s", "steady_s", "first_cpu_s", "steady_cpu_s",
                                                       "load_s", "peak_rss_mb")} for side, rs in runs.items()}
    for side in sides:
        r = best[side]
        print(f"  {side:7s} first case {r['first_s']:7.1f} s (load {r['load_s']:.1f} s)  steady case "
              f"{r['steady_s']:7.1f} s  CPU first/steady {r['first_cpu_s']:7.1f}/{r['steady_cpu_s']:7.1f} s  "
              f"peak RSS {r['peak_rss_mb']:7.0f} MB")
    n = best["nnunet"]
    for side, (agree, dprob, over) in parity.items():
        o, last = best[side], runs[side][-1]["cases"][-1]
        print(f"  {side}: tiles {last.get('tiles')}, passes per forward {last.get('batch')}, stages "
              f"{json.dumps({k: round(v, 2) for k, v in last.get('stages_s', {}).items()})}")
        print(f"  {side}: labels agree on {agree:.5%} of voxels, max |p - p_nnunet| = {dprob:.2e} "
              f"({over:.4%} of probabilities differ by more than 1e-3)")
        print(f"  {side}: nnU-Net / {side}: first case {n['first_s'] / o['first_s']:.2f}x, steady case "
              f"{n['steady_s'] / o['steady_s']:.2f}x (CPU time {n['first_cpu_s'] / o['first_cpu_s']:.2f}x / "
              f"{n['steady_cpu_s'] / o['steady_cpu_s']:.2f}x); peak memory {side} / nnU-Net "
              f"{o['peak_rss_mb'] / n['peak_rss_mb']:.2f}x")
    print("  (wall times are the fastest of --repeat runs; check what else runs on the machine)")


if __name__ == "__main__":
    main()
