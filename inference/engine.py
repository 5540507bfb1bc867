"""Segmentation runtime: a Volume and a loaded model -> cord/lesion probabilities and masks.

Steps: input grid -> model space (RAS by flips/permutations, model spacing, z-score) ->
sliding-window inference over the body only (Gaussian-weighted tiles, overlap 0.5) ->
sigmoid -> back to the input grid (exact shape) -> thresholds -> cord = largest component of
(cord region or lesion region) -> lesion restricted to that cord.

Most of a spine field of view is air in front of and behind the body: tiles that hold no
body voxel are skipped and the image is cropped to the body's bounding box before tiling,
which on the sagittal whole-spine T2 errsm_11 (384x216x52) cuts the tiles from 15 to 12 at
patch 64x128x128 (44 -> 36 at 64x64x96). Tiles are batched on CUDA (fp16 autocast); on CPU
one at a time (batching, channels-last and torch.compile each gained <= 15 % there).
"""
from __future__ import annotations

import itertools
import time

import numpy as np
import torch
from scipy import ndimage

from inference import heap, preprocess
from inference.models.registry import LoadedModel, ModelError, mirror_axes
from inference.segmentation import Progress, Segmentation, all_channels, mirror_combos  # noqa: F401 (re-exported)
from inference.volume import Volume

BODY_FRACTION = 0.02  # voxels brighter than this fraction of the 99th percentile are "body"
CROP_MARGIN_MM = 16.0  # context kept around the body's bounding box
TILE_OVERLAP = 0.5


def _noop(stage: str, done: int, total: int) -> None:
    pass


def check_model(model: LoadedModel) -> None:
    """The engine understands region-based sigmoid models with cord and lesion channels."""
    meta = model.meta
    if meta.activation != "sigmoid":
        raise ModelError(f"model {meta.name}: activation {meta.activation!r} unsupported (sigmoid)")
    if tuple(meta.regions[:2]) != ("cord", "lesion"):
        raise ModelError(f"model {meta.name}: regions {list(meta.regions)} must start with cord, lesion")
    if len(meta.thresholds) < 2:
        raise ModelError(f"model {meta.name}: thresholds needs [t_cord, t_lesion]")
    mirror_axes(meta)
    factor = total_stride(meta.architecture)
    if any(p % f for p, f in zip(meta.patch_size, factor)):
        raise ModelError(f"model {meta.name}: patch_size {list(meta.patch_size)} must be a multiple of the "
                         f"network's total stride {list(factor)} per axis")


def total_stride(architecture: dict) -> tuple[int, int, int]:
    """Product of the DynUNet strides per axis: tiles must be multiples of it (skip connections)."""
    factor = [1, 1, 1]
    for s in architecture.get("strides", []):
        s3 = [s] * 3 if isinstance(s, (int, float)) else list(s)
        factor = [f * int(v) for f, v in zip(factor, s3)]
    return tuple(factor)  # type: ignore[return-value]


# ---------------------------------------------------------------- tiling helpers

def gaussian_importance(patch: tuple[int, ...], sigma_scale: float = 0.125) -> np.ndarray:
    """Weights that trust a tile's centre more than its border (where context is missing)."""
    g = np.ones((), np.float64)
    for p in patch:
        x = (np.arange(p) - (p - 1) / 2.0) / max(p * sigma_scale, 1e-6)
        g = np.multiply.outer(g, np.exp(-0.5 * x * x))
    g = g / g.max()
    return np.maximum(g, 1e-4).astype(np.float32)


def tile_starts(size: int, patch: int, overlap: float = TILE_OVERLAP) -> list[int]:
    """Evenly spread tile origins covering [0, size) with at least `overlap` between tiles."""
    if size <= patch:
        return [0]
    n = int(np.ceil((size - patch) / (patch * (1.0 - overlap)))) + 1
    return sorted({int(round(i * (size - patch) / (n - 1))) for i in range(n)})


def body_mask(raw: np.ndarray) -> np.ndarray:
    """Voxels that are not air: above a small fraction of the bright end of the histogram."""
    hi = float(np.percentile(raw, 99))
    if hi <= 0:
        return np.ones(raw.shape, bool)
    return raw > BODY_FRACTION * hi


def body_bbox(body: np.ndarray, margin: tuple[int, ...]) -> tuple[slice, ...]:
    """Bounding box of the body, ignoring planes with only a few bright noise voxels."""
    slices = []
    for ax in range(body.ndim):
        other = tuple(i for i in range(body.ndim) if i != ax)
        counts = body.sum(axis=other)
        plane = body.size // body.shape[ax]
        idx = np.nonzero(counts >= max(5, int(0.002 * plane)))[0]
        if idx.size == 0:
            slices.append(slice(0, body.shape[ax]))
            continue
        lo = max(0, int(idx[0]) - margin[ax])
        hi = min(body.shape[ax], int(idx[-1]) + 1 + margin[ax])
        slices.append(slice(lo, hi))
    return tuple(slices)


# ---------------------------------------------------------------- model space

def _autocast(device: torch.device):
    """Mixed precision on CUDA (fp16 tensor cores); plain fp32 on CPU where bf16 is rarely faster."""
    return torch.autocast(device_type="cuda", dtype=torch.float16, enabled=device.type == "cuda")


def default_tile_batch(device: torch.device) -> int:
    return 4 if device.type == "cuda" else 1


def _forward(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    y = net(x)
    if isinstance(y, (list, tuple)):  # deep-supervision outputs: full resolution first
        y = y[0]
    return y.float()


def forward_mirrored(net: torch.nn.Module, x: torch.Tensor, axes: tuple[int, ...]) -> torch.Tensor:
    """Logits of `x` (N, 1, X, Y, Z) averaged over the plain pass and every mirror along `axes`."""
    total = _forward(net, x)
    combos = mirror_combos(axes)
    for dims in combos:
        total = total + torch.flip(_forward(net, torch.flip(x, dims)), dims)
    return total / (len(combos) + 1)


def predict_model_space(array: np.ndarray, model: LoadedModel, *, normalized: bool = False,
                        progress: Progress | None = None, tile_batch: int | None = None,
                        skip_background: bool = True, info: dict | None = None) -> np.ndarray:
    """Sigmoid probabilities (C, X, Y, Z) for a model-space image (RAS, model spacing).

    `array` holds raw intensities (z-scored here) unless `normalized`; with `normalized` the
    air cannot be recognised, so no tile is skipped. Voxels no tile covered get probability 0.
    """
    check_model(model)
    progress = progress or _noop
    info = info if info is not None else {}
    arr = np.asarray(array, dtype=np.float32)
    if arr.ndim != 3:
        raise ValueError(f"predict_model_space: expected a 3D array, got shape {arr.shape}")
    patch = tuple(int(p) for p in model.meta.patch_size)
    spacing = model.meta.spacing_mm
    if normalized or not skip_background:
        body = np.ones(arr.shape, bool)
        mean, std = (0.0, 1.0) if normalized else preprocess.zscore_params(arr)
    else:
        body = body_mask(arr)
        mean, std = preprocess.zscore_params(arr)
    margin = tuple(int(np.ceil(CROP_MARGIN_MM / s)) for s in spacing)
    crop = body_bbox(body, margin) if not normalized and skip_background else tuple(slice(0, n) for n in arr.shape)
    air = (0.0 - mean) / std if not normalized else float(arr.min())
    sub = (arr[crop] - mean) / std if not normalized else arr[crop]
    sub_body = body[crop]

    # pad to at least one patch, centred, with the value air takes after normalisation
    pads = [(max(0, p - n) // 2, max(0, p - n) - max(0, p - n) // 2) for n, p in zip(sub.shape, patch)]
    padded = np.pad(sub, pads, mode="constant", constant_values=air).astype(np.float32)
    padded_body = np.pad(sub_body, pads, mode="constant", constant_values=False)
    starts = [tile_starts(n, p) for n, p in zip(padded.shape, patch)]
    tiles = list(itertools.product(*starts))
    if skip_background and not normalized:
        tiles_run = [t for t in tiles
                     if padded_body[tuple(slice(s, s + p) for s, p in zip(t, patch))].any()]
    else:
        tiles_run = tiles
    info.update(tiles=len(tiles), tiles_skipped=len(tiles) - len(tiles_run),
                crop_shape=tuple(sub.shape), model_shape=tuple(arr.shape))

    dev = model.device
    net = model.network
    n_out = len(model.meta.regions)
    axes = mirror_axes(model.meta)
    info.update(mirror_axes=list(axes))
    batch = max(1, tile_batch or default_tile_batch(dev))
    weight = torch.from_numpy(gaussian_importance(patch)).to(dev)
    image = torch.from_numpy(padded).to(dev)
    acc = torch.zeros((n_out, *padded.shape), dtype=torch.float32, device=dev)
    norm = torch.zeros(padded.shape, dtype=torch.float32, device=dev)
    progress("sliding window", 0, len(tiles_run))
    with torch.inference_mode(), _autocast(dev):
        for b0 in range(0, len(tiles_run), batch):
            chunk = tiles_run[b0:b0 + batch]
            regions = [tuple(slice(s, s + p) for s, p in zip(t, patch)) for t in chunk]
            x = torch.stack([image[r] for r in regions])[:, None]
            y = forward_mirrored(net, x, axes)
            if y.shape[1] != n_out:
                raise ModelError(f"model {model.meta.name}: network gives {y.shape[1]} channels, "
                                 f"model.json lists {n_out} regions")
            for r, yi in zip(regions, y):
                acc[all_channels(r)] += yi * weight
                norm[r] += weight
            progress("sliding window", min(b0 + batch, len(tiles_run)), len(tiles_run))
    covered = norm > 0
    probs_pad = torch.where(covered, torch.sigmoid(acc / norm.clamp_min(1e-12)), torch.zeros_like(acc))
    probs_pad_np = probs_pad.cpu().numpy()
    unpad = tuple(slice(lo, lo + n) for (lo, _), n in zip(pads, sub.shape))
    out = np.zeros((n_out, *arr.shape), np.float32)
    out[all_channels(crop)] = probs_pad_np[all_channels(unpad)]
    return out


# ---------------------------------------------------------------- post-processing

def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 26-connected component: the cord is one object, specks elsewhere are not."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if n <= 1:
        return mask.astype(np.uint8)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return (labels == int(sizes.argmax())).astype(np.uint8)


def postprocess(cord_prob: np.ndarray, lesion_prob: np.ndarray,
                thresholds: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Region semantics as nnU-Net/SCIseg: cord = cord region OR lesion region, then its largest
    component; lesion = lesion region inside that cord.

    Why the union: the lesion region is a sub-region of the cord, and a bright T2 lesion looks
    like CSF to the cord channel, which often stays below its threshold there. nnU-Net's
    region-to-label conversion labels such voxels lesion (hence cord) whatever the cord
    channel says; intersecting with the cord channel instead erased 60-75 % of true lesion
    voxels (pooled lesion Dice on painted training cords, shipped 1.0.0 weights: 0.16 -> 0.69). The
    largest-component step still drops lesion specks that do not touch the cord.
    """
    lesion_region = lesion_prob >= thresholds[1]
    cord = largest_component((cord_prob >= thresholds[0]) | lesion_region)
    lesion = (lesion_region & (cord > 0)).astype(np.uint8)
    return cord, lesion


# ---------------------------------------------------------------- entry point

def segment(volume: Volume, model: LoadedModel, progress: Progress | None = None,
            tile_batch: int | None = None, skip_background: bool = True) -> Segmentation:
    """Segment cord and lesions; every output array has the shape of ``volume.array``. Freed
    working memory stays on the heap for the next case and goes back once idle (inference.heap)."""
    with heap.busy():
        return _segment(volume, model, progress, tile_batch, skip_background)


def _segment(volume: Volume, model: LoadedModel, progress: Progress | None,
             tile_batch: int | None, skip_background: bool) -> Segmentation:
    if model.meta.extra.get("format") == "nnunetv2":  # nnU-Net folder: its own semantics (nnunet_runtime)
        from inference.nnunet_runtime import segment_nnunet
        return segment_nnunet(volume, model, progress=progress, tile_batch=tile_batch)  # type: ignore[arg-type]
    check_model(model)
    progress = progress or _noop
    if volume.array.ndim != 3:
        raise ValueError(f"segment: expected a 3D volume, got shape {volume.array.shape}")
    t0 = time.perf_counter()
    progress("preprocessing", 0, 1)
    model_img, grid = preprocess.to_model_space(volume.array, volume.affine, model.meta.spacing_mm)
    t1 = time.perf_counter()
    info: dict[str, object] = {"device": str(model.device)}
    try:
        probs = predict_model_space(model_img, model, progress=progress, tile_batch=tile_batch,
                                    skip_background=skip_background, info=info)
    except torch.cuda.OutOfMemoryError:
        if (tile_batch or default_tile_batch(model.device)) <= 1:
            raise
        torch.cuda.empty_cache()  # a smaller batch of tiles usually fits; the result is the same
        progress("out of GPU memory: retrying one tile at a time", 0, 1)
        probs = predict_model_space(model_img, model, progress=progress, tile_batch=1,
                                    skip_background=skip_background, info=info)
    t2 = time.perf_counter()
    progress("postprocessing", 0, 1)
    back = preprocess.from_model_space(probs[:2], grid, order=1)
    cord_prob = np.clip(back[0], 0.0, 1.0).astype(np.float32)
    lesion_prob = np.clip(back[1], 0.0, 1.0).astype(np.float32)
    cord, lesion = postprocess(cord_prob, lesion_prob, model.meta.thresholds)
    t3 = time.perf_counter()
    info["model_grid_spacing_mm"] = grid.spacing
    return Segmentation(cord_prob=cord_prob, lesion_prob=lesion_prob, cord_mask=cord,
                        lesion_mask=lesion, info=info,
                        timings={"preprocess": t1 - t0, "network": t2 - t1, "postprocess": t3 - t2})
