"""Train the shipped spinecord-t2 model (CPU-friendly, resumable, time-budgeted).

    python -m inference.train.train --out var/train/run1 --minutes 60 [--resume]

Why time-budgeted: the node's model is trained on a shared 2-core CPU, so the schedule
(polynomial learning-rate decay) runs over wall-clock minutes, not epochs, and a run can
be stopped and resumed from the last checkpoint (written every few minutes) without
changing the schedule. Region-based outputs as SCIseg (sigmoid: cord incl. lesion, lesion),
Dice + BCE per region. Uses CUDA + AMP when present.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from inference import heap
from inference.files import atomic_write
from inference.models.registry import LoadedModel, ModelMeta, build_network, read_meta, save_model
from inference.train.appearance import AppearanceConfig
from inference.train.data import CachedVolume, build_cache, load_split
from inference.train.families import FAMILY_NAMES, check_families
from inference.train.lesions import LesionConfig
from inference.train.sampling import PatchSampler, SamplerConfig

MODEL_NAME = "spinecord-t2"


def architecture(filters: list[int]) -> dict[str, Any]:
    """A small DynUNet: 3x3x3 kernels, stride 2 per level, instance norm (nnU-Net-like)."""
    n = len(filters)
    return {"type": "DynUNet", "in_channels": 1, "out_channels": 2, "kernel_size": [3] * n,
            "strides": [1] + [2] * (n - 1), "upsample_kernel_size": [2] * (n - 1),
            "filters": list(filters), "norm_name": "instance", "res_block": False}


DICE_WEIGHTS = (1.0, 2.0)  # the lesion region is ~1 % of the cord's voxels: weigh its Dice up
LESION_POS_WEIGHT = 5.0  # lesion BCE: a lesion voxel counts 5x (they are ~0.1 % of a patch)
LESION_ROI_DILATION = 2  # voxels: the lesion Dice is computed inside the (dilated) true cord


def region_loss(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """BCE + soft Dice per region.

    Why the lesion terms differ from the cord's: with the lesion Dice taken over the whole
    patch, the sum of small background probabilities swamps the few lesion voxels and the
    lesion channel did not start learning within a CPU budget. The engine keeps lesions only
    inside the predicted cord, so the lesion Dice is computed inside the (slightly dilated)
    true cord, and lesion voxels weigh more in the BCE (which still covers every voxel, so
    the lesion map stays clean outside the cord).
    """
    logits = logits.float()
    pos_weight = torch.tensor([1.0, LESION_POS_WEIGHT], device=logits.device).view(1, 2, 1, 1, 1)
    bce = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight)
    prob = torch.sigmoid(logits)
    k = 2 * LESION_ROI_DILATION + 1
    roi = F.max_pool3d(target[:, :1], kernel_size=k, stride=1, padding=LESION_ROI_DILATION)
    dims = (0, 2, 3, 4)
    p_les = prob[:, 1:] * roi
    inter = torch.cat([(prob[:, :1] * target[:, :1]).sum(dims), (p_les * target[:, 1:]).sum(dims)])
    denom = torch.cat([(prob[:, :1].sum(dims) + target[:, :1].sum(dims)),
                       (p_les.sum(dims) + target[:, 1:].sum(dims))])
    dice = (2 * inter + 1.0) / (denom + 1.0)
    w = torch.tensor(DICE_WEIGHTS, device=dice.device)
    loss = bce + ((1 - dice) * w).sum() / w.sum()
    return loss, {"bce": float(bce.detach()), "dice_cord": float(dice[0].detach()),
                  "dice_lesion": float(dice[1].detach())}


class _Stream(torch.utils.data.IterableDataset):
    """Endless patch stream (runs in a worker process so augmentation overlaps the network)."""

    def __init__(self, volumes: list[CachedVolume], cfg: SamplerConfig, seed: int, batch: int) -> None:
        self.volumes, self.cfg, self.seed, self.batch = volumes, cfg, seed, batch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        torch.set_num_threads(1)
        sampler = PatchSampler(self.volumes, self.cfg, self.seed)
        while True:
            yield sampler.batch(self.batch)


def patch_stream(volumes: list[CachedVolume], cfg: SamplerConfig, seed: int, batch: int,
                 workers: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    ds = _Stream(volumes, cfg, seed, batch)
    if workers <= 0:
        return iter(ds)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers,
                                         prefetch_factor=4, persistent_workers=False)
    return iter(loader)


def model_meta(args: argparse.Namespace, arch: dict[str, Any], training: dict[str, Any]) -> dict[str, Any]:
    """model.json contents for the registry (trained weights, identity, geometry, thresholds)."""
    return {
        "name": MODEL_NAME, "version": args.version, "architecture": arch,
        "spacing_mm": list(args.spacing), "orientation": "RAS", "normalization": "zscore",
        "patch_size": list(args.infer_patch or args.patch), "regions": ["cord", "lesion"],
        "activation": "sigmoid", "thresholds": [0.5, 0.5], "weights": "weights.pt", "trained": True,
        # left-right test-time mirroring is valid because training flipped left-right
        "test_time_mirroring": [0] if training.get("sampler", {}).get("augment", {}).get("p_mirror_lr", 0) > 0 else [],
        "description": ("Spinal cord + intramedullary lesion segmentation (region-based, SCIseg-like) "
                        "trained on CPU from real cords with synthetic lesions; see MODEL_CARD.md."),
        "training": training,
    }


def init_record(folder: str | Path) -> dict[str, Any]:
    """What a fine-tune started from: the parent model's identity and its own training record.

    Why: a fine-tuned model's card must say how the starting weights came about, and the
    parent's model.json may be overwritten when the fine-tune is shipped in its place.
    """
    meta = read_meta(folder)
    tr = meta.extra.get("training", {})
    keep = ("iterations", "patches", "minutes", "batch", "train_patch", "optimizer", "loss", "seed", "device",
            "history", "sampler", "lr", "init_from")  # init_from: a fine-tune of a fine-tune keeps the chain
    return {"name": meta.name, "version": meta.version, "folder": str(folder),
            "training": {k: tr[k] for k in keep if k in tr}}


def loaded(network: torch.nn.Module, arch: dict[str, Any], args: argparse.Namespace,
           device: torch.device) -> LoadedModel:
    """Wrap the training network so the engine's sliding window can run on it."""
    meta = ModelMeta(folder=Path(args.out), name=MODEL_NAME, version=args.version, architecture=arch,
                     spacing_mm=tuple(args.spacing), orientation="RAS", normalization="zscore",
                     patch_size=tuple(args.infer_patch or args.patch), regions=("cord", "lesion"),
                     activation="sigmoid", thresholds=(0.5, 0.5), weights="weights.pt", trained=True)
    return LoadedModel(meta=meta, network=network, device=device)


class QuickVal:
    """Fast validation in model space: cord Dice on the real masks (cropped around the cord) and
    lesion Dice on lesions painted once with a fixed seed. The full evaluation is evaluate.py."""

    def __init__(self, volumes: list[CachedVolume], spacing: tuple[float, float, float], seed: int = 1234,
                 families: tuple[str, ...] = ("painter",)) -> None:
        """One painted copy of each volume per family trained on: the held-out family of a
        leave-one-family-out run plays no part in choosing its weights."""
        from inference.train.sampling import paint_cached

        rng = np.random.default_rng(seed)
        self.items = []
        for v in volumes:
            idx = v.cord_idx
            lo = np.maximum(idx.min(0) - 24, 0)
            hi = np.minimum(idx.max(0) + 25, v.image.shape)
            sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
            img, cord = v.image[sl], v.cord[sl]
            for name in families:
                painted, cord_p, les = paint_cached(v, img, cord, spacing, rng,
                                                    n_lesions=3 if name == "painter" else None, family_name=name)
                self.items.append((f"{v.key}+{name}", painted, np.maximum(cord_p, les), les))

    def __call__(self, model: LoadedModel) -> dict[str, float]:
        from inference.engine import postprocess, predict_model_space

        model.network.eval()
        out: dict[str, float] = {}
        for key, img, cord, les in self.items:
            prob = predict_model_space(img, model, normalized=True)
            cord_pred, les_pred = postprocess(prob[0], prob[1], (0.5, 0.5))  # the engine's rule
            out[f"{key}/cord_dice"] = _dice(cord_pred > 0, cord > 0)
            if les.any():
                out[f"{key}/lesion_dice"] = _dice(les_pred > 0, les > 0)
            else:
                out[f"{key}/false_lesion_vox"] = float(les_pred.sum())
        model.network.train()
        cords = [v for k, v in out.items() if k.endswith("cord_dice")]
        lesions = [v for k, v in out.items() if k.endswith("lesion_dice")]
        out["score"] = float(np.mean(cords) + np.mean(lesions)) / 2.0
        return out


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * float((a & b).sum()) / s


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m inference.train.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="run folder (log, checkpoints, model/)")
    p.add_argument("--minutes", type=float, required=True, help="wall-clock training budget (schedule length)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--init", type=str, default=None, help="start from this model folder's weights (fine-tune)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--filters", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    p.add_argument("--patch", type=int, nargs=3, default=[64, 64, 96], help="training patch (RAS X Y Z)")
    p.add_argument("--infer-patch", type=int, nargs=3, default=None, help="sliding-window tile written to model.json")
    p.add_argument("--spacing", type=float, nargs=3, default=[1.0, 1.0, 1.0])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=1, help="augmentation worker processes (0: in-process)")
    p.add_argument("--val-minutes", type=float, default=8.0)
    p.add_argument("--ckpt-minutes", type=float, default=3.0)
    p.add_argument("--max-iters", type=int, default=0, help="stop after this many iterations (tests)")
    p.add_argument("--version", type=str, default="1.0.0")
    p.add_argument("--cache", type=Path, default=Path("var/cache"))
    p.add_argument("--p-foreground", type=float, default=SamplerConfig.p_foreground,
                   help="share of patches centred on the cord")
    p.add_argument("--p-lesion-free", type=float, default=LesionConfig.p_lesion_free,
                   help="share of cord patches left without painted lesions (a lesion-focused fine-tune lowers it)")
    p.add_argument("--families", nargs="+", default=list(FAMILY_NAMES), metavar="FAMILY",
                   help=f"lesion families painted into patches (default all: {' '.join(FAMILY_NAMES)})")
    p.add_argument("--appearance-ratio", type=float, nargs=2, default=list(AppearanceConfig.ratio),
                   metavar=("LO", "HI"),
                   help="lesion / cord signal range of the appearance randomisation")
    p.add_argument("--no-appearance", action="store_true",
                   help="keep each family's own look (no appearance randomisation), as models before 1.3 trained")
    p.add_argument("--exclude-family", default=None, metavar="FAMILY",
                   help="leave this family out (leave-one-family-out: evaluate the model on it with "
                        "`evaluate --families FAMILY`)")
    return p.parse_args(argv)


def training_families(args: argparse.Namespace) -> tuple[str, ...]:
    """--families less --exclude-family, validated; SystemExit naming the option otherwise."""
    try:
        families = check_families(args.families, "--families")
        if args.exclude_family is not None:
            check_families([args.exclude_family], "--exclude-family")
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    left = tuple(f for f in families if f != args.exclude_family)
    if not left:
        raise SystemExit("--families/--exclude-family: no lesion family left to train on")
    return left


def run_history(log_path: Path) -> list[str]:
    """One line per (re)start of the run, from its log: the card must say how the weights came about."""
    lines: list[str] = []
    if not Path(log_path).is_file():
        return lines
    for raw in Path(log_path).read_text(encoding="utf-8").splitlines():
        rec = json.loads(raw)
        if rec.get("event") != "start":
            continue
        a = rec.get("args", {})
        lines.append(f"{'resume' if rec.get('resume') else 'start'} at iteration {rec.get('iteration')}: "
                     f"budget {a.get('minutes')} min, threads {a.get('threads')}, val tile {a.get('infer_patch')}")
    return lines


def _log(path: Path, record: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def _restore(args: argparse.Namespace, arch: dict[str, Any], net: torch.nn.Module,
             opt: torch.optim.Optimizer, ckpt_path: Path) -> dict[str, Any]:
    """The run's state: from the checkpoint (--resume), else fresh; --init loads a model's weights."""
    if args.resume:
        if not ckpt_path.is_file():
            raise SystemExit(f"--resume: no checkpoint at {ckpt_path}; run without --resume first")
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if ck["arch"] != arch:
            raise SystemExit(f"--resume: checkpoint architecture differs ({ck['arch']['filters']}); "
                             "use the same --filters")
        net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        return dict(ck["state"])
    if args.init:
        meta = read_meta(args.init)
        if meta.architecture != arch:
            raise SystemExit(f"--init {args.init}: architecture differs from --filters {args.filters}")
        net.load_state_dict(torch.load(meta.folder / meta.weights, map_location="cpu", weights_only=True))
    return {"iteration": 0, "elapsed_s": 0.0, "best_score": -1.0, "patches": 0}


def _sampler_config(args: argparse.Namespace, spacing: tuple[float, float, float],
                    families: tuple[str, ...]) -> SamplerConfig:
    appearance = None if args.no_appearance else replace(AppearanceConfig(), ratio=tuple(args.appearance_ratio))
    return SamplerConfig(patch=tuple(args.patch), spacing=spacing, p_foreground=args.p_foreground,
                         lesions=replace(LesionConfig(), p_lesion_free=args.p_lesion_free), families=families,
                         appearance=appearance)


def _step(net: torch.nn.Module, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
          x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """One optimiser step (mixed precision on CUDA, gradient norm clipped at 12); (loss, its parts)."""
    with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=x.device.type == "cuda"):
        logits = net(x)
    loss, parts = region_loss(logits, y)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    torch.nn.utils.clip_grad_norm_(net.parameters(), 12.0)
    scaler.step(opt)
    scaler.update()
    return loss, parts


def _training_record(args: argparse.Namespace, state: dict[str, Any], device: str, split: dict[str, Any],
                     log_path: Path, metrics: dict[str, float], cfg: SamplerConfig) -> dict[str, Any]:
    """model.json's "training" block: how this model was made, enough to make it again."""
    command = None
    if sys.argv and sys.argv[0].endswith("train.py"):
        command = " ".join([".venv/bin/python -m inference.train.train", *sys.argv[1:]])
    return {
        "iterations": state["iteration"], "patches": state["patches"],
        "minutes": round(state["elapsed_s"] / 60.0, 1), "batch": args.batch,
        "train_patch": list(args.patch), "optimizer": f"AdamW lr {args.lr} poly(0.9) over {args.minutes} min",
        "loss": (f"BCE (lesion pos_weight {LESION_POS_WEIGHT}) + soft Dice per region (weights cord/lesion "
                 f"{DICE_WEIGHTS}; lesion Dice inside the true cord dilated {LESION_ROI_DILATION} vox)"),
        "seed": args.seed, "device": device, "command": command,
        "train_volumes": split["train"], "val_volumes": split["val"],
        "history": run_history(log_path),
        "quick_val": {k: round(v, 4) for k, v in metrics.items()},
        "sampler": {"p_foreground": cfg.p_foreground, "lesions": asdict(cfg.lesions),
                    "families": list(cfg.families),
                    "appearance": asdict(cfg.appearance) if cfg.appearance is not None else None,
                    "augment": asdict(cfg.augment)},
        "lr": args.lr,
    }


def train(args: argparse.Namespace,
          volumes: tuple[list[CachedVolume], list[CachedVolume]] | None = None) -> Path:
    """Run (or resume) training; returns the exported model folder (OUT/model).

    `volumes` (train, val) replaces the split/cache (tests use tiny synthetic volumes).
    """
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log_path, ckpt_path = out / "log.jsonl", out / "checkpoint.pt"
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    arch = architecture(args.filters)
    net = build_network(arch, trainable=True).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    state = _restore(args, arch, net, opt, ckpt_path)
    parent = init_record(args.init) if args.init else None
    split = load_split()
    spacing = tuple(args.spacing)
    if volumes is None:
        train_vols = build_cache(split["train"], spacing, args.cache)
        val_vols = build_cache(split["val"], spacing, args.cache)
    else:
        train_vols, val_vols = volumes
    families = training_families(args)
    cfg = _sampler_config(args, spacing, families)
    # a resumed run reseeds from (seed, iteration): reproducible, never repeats the same patches
    stream = patch_stream(train_vols, cfg, args.seed * 100003 + state["iteration"], args.batch, args.workers)
    quick_val = QuickVal(val_vols, spacing, families=families)
    budget = args.minutes * 60.0
    _log(log_path, {"event": "start", "resume": bool(args.resume), "iteration": state["iteration"],
                    "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                    "device": str(device), "train": split["train"], "val": split["val"]})

    def save_checkpoint() -> None:
        checkpoint = {"model": net.state_dict(), "optimizer": opt.state_dict(), "state": state, "arch": arch}
        atomic_write(ckpt_path, lambda tmp: torch.save(checkpoint, tmp))

    def export(folder: Path, metrics: dict[str, float]) -> None:
        training = _training_record(args, state, str(device), split, log_path, metrics, cfg)
        if parent is not None:
            training["init_from"] = parent
        save_model(folder, model_meta(args, arch, training), net)

    net.train()
    t_last = time.time()
    last_ckpt = last_val = state["elapsed_s"]
    window: list[dict[str, float]] = []
    while state["elapsed_s"] < budget and (args.max_iters <= 0 or state["iteration"] < args.max_iters):
        frac = min(state["elapsed_s"] / budget, 0.999)
        lr = args.lr * (1.0 - frac) ** 0.9
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = next(stream)
        loss, parts = _step(net, opt, scaler, x.to(device, non_blocking=True), y.to(device, non_blocking=True))
        now = time.time()
        state["elapsed_s"] += now - t_last
        t_last = now
        state["iteration"] += 1
        state["patches"] += x.shape[0]
        window.append({"loss": float(loss.detach()), **parts})
        if state["iteration"] % 20 == 0:
            avg = {k: round(float(np.mean([w[k] for w in window])), 4) for k in window[0]}
            _log(log_path, {"event": "train", "iteration": state["iteration"],
                            "minutes": round(state["elapsed_s"] / 60, 2), "lr": round(lr, 6), **avg})
            window = []
        done = state["elapsed_s"] >= budget or (args.max_iters > 0 and state["iteration"] >= args.max_iters)
        if done or state["elapsed_s"] - last_val >= args.val_minutes * 60:
            t0 = time.time()
            metrics = quick_val(loaded(net, arch, args, device))
            _log(log_path, {"event": "val", "iteration": state["iteration"],
                            "minutes": round(state["elapsed_s"] / 60, 2), "val_s": round(time.time() - t0, 1),
                            **{k: round(v, 4) for k, v in metrics.items()}})
            export(out / "model_last", metrics)
            if metrics["score"] > state["best_score"]:
                state["best_score"] = metrics["score"]
                export(out / "model", metrics)
            last_val = state["elapsed_s"]
            t_last = time.time()  # validation time does not eat the training schedule
        if done or state["elapsed_s"] - last_ckpt >= args.ckpt_minutes * 60:
            save_checkpoint()
            last_ckpt = state["elapsed_s"]
    _log(log_path, {"event": "end", "iteration": state["iteration"], "minutes": round(state["elapsed_s"] / 60, 2),
                    "best_score": state["best_score"]})
    return out / "model"


def main(argv: list[str] | None = None) -> int:
    heap.configure()  # before threads start (data loader threads, if any)
    args = parse_args(argv)
    train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
