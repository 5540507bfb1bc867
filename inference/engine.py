"""Segmentation runtime: a Volume and a loaded model -> cord/lesion probabilities and masks.

Steps: input grid -> model space (RAS by flips/permutations, model spacing, z-score) ->
sliding-window inference over the body only (Gaussian-weighted tiles, overlap 0.5), and by
default only around the cord (below) -> sigmoid -> back to the input grid (exact shape) ->
thresholds -> cord = largest component of (cord region or lesion region) -> lesion restricted
to that cord.

Most of a spine field of view is air in front of and behind the body: tiles that hold no
body voxel are skipped and the image is cropped to the body's bounding box before tiling,
which on the sagittal whole-spine T2 errsm_11 (384x216x52) cuts the tiles from 15 to 12 at
patch 64x128x128 (44 -> 36 at 64x64x96). Tiles are batched on CUDA (fp16 autocast); on CPU
one at a time (batching, channels-last and torch.compile each gained <= 15 % there).

Only where the cord is (``segment(roi=True)``, the default; inference.roi). Most of the body
is not cord either, and the network is most of a case's time. So a localiser runs first: the
model itself, one forward without mirroring on the image at twice the model's spacing. The
tiles of the SAME grid that touch its cord (components above 0.1, plus 4 mm) then run in the
grid's order; wherever every tile covering a voxel ran, the blended probabilities are the
full pass's bit for bit (same tiles, weights and summation order), elsewhere they are 0. The
masks made from that are checked in the input grid, and the remaining tiles run (nothing run
is lost; the result is then the full pass) when the cord touches a voxel left incomplete, lies
mostly outside the localiser's region, or a large component reaches the ROI's border. The full
pass runs from the start when the localiser finds no (confident) cord, when its confident cord
touches a right-left or anterior-posterior edge of the image (a T1w volume whose FOV edges it
took for cord while missing the cord), when there is one tile, or when the region touches all
but < 10 % of the tiles. A log line (this module's logger) says why; ``info["roi"]`` holds
"cord: N of M tiles" or "full: <why>", with tiles_run, tiles_skipped, tiles_air, localiser_s.

What it costs and gains, measured (CPU, 2 torch threads as the node runs, shipped model
spinecord-t2 1.2.1, patch 64x128x160, median of 3 alternating runs, bench/analyze_speed.py
--compare-roi at a quiet moment of the shared 2-core VM): sagittal demo sample errsm_21
(384x215x52): 6 of 8 tiles, network 7.2 -> 6.0 s wall (-16 %), 14.1 -> 11.2 s CPU (-21 %;
two sessions under other users' load gave 14.2 -> 11.3 and 15.8 -> 10.2 s CPU); validation
t2s_9584 (axial T2*): 2 of 4 tiles, 3.2 -> 1.9 s wall, 6.5 -> 3.7 s CPU; lesion demo sample
(99x99x29): one tile, the full pass, 0.82 vs 0.83 s. The localiser costs ~0.6 of one
unmirrored tile forward (~4 % of the sagittal full pass), the checks ~0.1-0.3 s. The gain is
bounded by the grid: with 50 % overlap a voxel lies in 2-3 tiles per axis, so the cord of a
sagittal volume, ~60 mm wide front to back over its length, still needs 3 of its 4
anterior-posterior tile columns (2 of 8 tiles, 4 of 16 forwards saved at best, less the
localiser's ~0.6 forward); finer grids gain more. On all 18 volumes of ../shared/data with a
cord (ROI on 11; the full pass on 7: one tile, a region over every tile, the T1w above) the
masks were the full pass's exactly. The ROI pass keeps each run tile's logits until the end
(C x patch floats, 10.5 MB here) to blend them in the grid's order. On CUDA tiles go 4 to a
batch and a batch's composition may change the last bits of a tile's logits, so there the
equality holds up to rounding (not measured: no GPU here).
"""
from __future__ import annotations

import itertools
import logging
import time
from typing import Any, Callable, Iterable

import numpy as np
import torch
from scipy import ndimage

from inference import heap, preprocess
from inference import roi as cord_roi
from inference.models.registry import LoadedModel, ModelError, mirror_axes
from inference.segmentation import Progress, Segmentation, all_channels, mirror_combos  # noqa: F401 (re-exported)
from inference.volume import Volume

BODY_FRACTION = 0.02  # voxels brighter than this fraction of the 99th percentile are "body"
CROP_MARGIN_MM = 16.0  # context kept around the body's bounding box
TILE_OVERLAP = 0.5
LOCALISER_FACTOR = 2  # the localiser sees the image at this many times the model's spacing

log = logging.getLogger(__name__)
# (probabilities, voxels left incomplete, the localiser's region with margin) in model space -> "" or why not
Accept = Callable[[np.ndarray, np.ndarray, np.ndarray], str]


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


def _run_tiles(net: torch.nn.Module, image: torch.Tensor, tiles: list[tuple[int, ...]],
               patch: tuple[int, ...], axes: tuple[int, ...], batch: int, n_out: int, name: str,
               on_output: Callable[[tuple[slice, ...], torch.Tensor], None],
               progress: Progress, stage: str = "sliding window") -> None:
    """Forward ``tiles`` (origins) of ``image`` in batches, mirrored over ``axes``; each tile's
    logits go to ``on_output(region, logits)`` in the order of ``tiles``."""
    progress(stage, 0, len(tiles))
    for b0 in range(0, len(tiles), batch):
        regions = [tuple(slice(s, s + p) for s, p in zip(t, patch)) for t in tiles[b0:b0 + batch]]
        x = torch.stack([image[r] for r in regions])[:, None]
        y = forward_mirrored(net, x, axes)
        if y.shape[1] != n_out:
            raise ModelError(f"model {name}: network gives {y.shape[1]} channels, "
                             f"model.json lists {n_out} regions")
        for r, yi in zip(regions, y):
            on_output(r, yi)
        progress(stage, min(b0 + batch, len(tiles)), len(tiles))


def _blend(outputs: Iterable[tuple[tuple[slice, ...], torch.Tensor]], shape: tuple[int, ...], n_out: int,
           weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian-weighted sums of tile logits and of the weights, in the order given."""
    acc = torch.zeros((n_out, *shape), dtype=torch.float32, device=weight.device)
    norm = torch.zeros(shape, dtype=torch.float32, device=weight.device)
    for r, y in outputs:
        acc[all_channels(r)] += y * weight
        norm[r] += weight
    return acc, norm


def _probabilities(acc: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    covered = norm > 0
    return torch.where(covered, torch.sigmoid(acc / norm.clamp_min(1e-12)), torch.zeros_like(acc))


def localise(image: np.ndarray, air: float, model: LoadedModel, batch: int) -> np.ndarray:
    """The model's own cord-or-lesion probability on ``image`` (a normalised model-space image)
    brought to LOCALISER_FACTOR times the model's spacing: one pass, no mirroring. Where the ROI goes.

    At half resolution the image has 1/8 of its voxels: on the sagittal demo sample the one
    forward costs ~0.6 of one unmirrored tile's, ~4 % of the full pass (CPU time). The network
    still finds the cord there (its training scaled patches by 0.8-1.25 and blurred them), and
    the ROI pass checks what it misses (inference.roi.spill)."""
    stride = total_stride(model.meta.architecture)
    patch = tuple(int(p) for p in model.meta.patch_size)
    low = ndimage.zoom(image, 1.0 / LOCALISER_FACTOR, order=1, mode="nearest", grid_mode=True)
    # pad to the network's stride; one forward of its own size unless it holds more voxels than
    # a patch (then tiles of the patch's size, no mirrors), which bounds the memory as a tile does
    size = [max(st, int(np.ceil(n / st)) * st) for n, st in zip(low.shape, stride)]
    pads = [((s - n) // 2, s - n - (s - n) // 2) for n, s in zip(low.shape, size)]
    low_pad = np.pad(low, pads, mode="constant", constant_values=air).astype(np.float32)
    tile = tuple(size) if np.prod(size) <= np.prod(patch) else tuple(min(p, s) for p, s in zip(patch, size))
    starts = [tile_starts(n, p) for n, p in zip(size, tile)]
    dev = model.device
    weight = torch.from_numpy(gaussian_importance(tile)).to(dev)
    outputs: list[tuple[tuple[slice, ...], torch.Tensor]] = []
    with torch.inference_mode(), _autocast(dev):
        _run_tiles(model.network, torch.from_numpy(low_pad).to(dev), list(itertools.product(*starts)), tile, (),
                   batch, len(model.meta.regions), model.meta.name, lambda r, y: outputs.append((r, y)), _noop)
        probs = _probabilities(*_blend(outputs, low_pad.shape, len(model.meta.regions), weight))
    return probs[:2].amax(0).cpu().numpy()[tuple(slice(lo, lo + n) for (lo, _), n in zip(pads, low.shape))]


def upsample_mask(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Nearest-neighbour ``mask`` on a grid of ``shape`` covering the same extent (grid_mode)."""
    index = [np.clip(np.floor((np.arange(n) + 0.5) * m / n).astype(int), 0, m - 1) for n, m in zip(shape, mask.shape)]
    return mask[np.ix_(*index)]


def predict_model_space(array: np.ndarray, model: LoadedModel, *, normalized: bool = False,
                        progress: Progress | None = None, tile_batch: int | None = None,
                        skip_background: bool = True, info: dict | None = None,
                        roi: bool = False, accept: Accept | None = None) -> np.ndarray:
    """Sigmoid probabilities (C, X, Y, Z) for a model-space image (RAS, model spacing).

    `array` holds raw intensities (z-scored here) unless `normalized`; with `normalized` the
    air cannot be recognised, so no tile is skipped. Voxels no tile covered get probability 0.
    With `roi`, only the tiles around the cord run (module docstring): the probabilities equal
    the full pass's where every tile covering a voxel ran and are 0 elsewhere; ``info["roi"]``
    says which (``"cord: ..."``) or why the full pass ran (``"full: ..."``). ``accept(probs,
    incomplete, localised)`` judges such a result (``incomplete``: the voxels the full pass covers
    and this one left incomplete; ``localised``: where the localiser saw the cord): "" keeps it,
    a reason runs the remaining tiles. By default the masks are judged in model space; ``segment``
    judges them in the input grid, where it keeps them.
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
        tiles_body = [t for t in tiles
                      if padded_body[tuple(slice(s, s + p) for s, p in zip(t, patch))].any()]
    else:
        tiles_body = tiles
    info.update(tiles=len(tiles), tiles_air=len(tiles) - len(tiles_body),
                crop_shape=tuple(sub.shape), model_shape=tuple(arr.shape))

    dev = model.device
    net = model.network
    n_out = len(model.meta.regions)
    axes = mirror_axes(model.meta)
    info.update(mirror_axes=list(axes))
    batch = max(1, tile_batch or default_tile_batch(dev))
    plan, decision, localised = (_plan_roi(sub, air, sub_body, pads, tiles_body, model, batch, progress, info)
                                 if roi else (tiles_body, "off", None))
    weight = torch.from_numpy(gaussian_importance(patch)).to(dev)
    image = torch.from_numpy(padded).to(dev)
    unpad = tuple(slice(lo, lo + n) for (lo, _), n in zip(pads, sub.shape))

    def output(padded_array: np.ndarray) -> np.ndarray:  # (..., padded) -> (..., model shape), 0 outside
        out = np.zeros((*padded_array.shape[:-3], *arr.shape), padded_array.dtype)
        out[(Ellipsis,) + crop] = padded_array[(Ellipsis,) + unpad]
        return out

    with torch.inference_mode(), _autocast(dev):
        if len(plan) == len(tiles_body):  # the full pass: blend each tile as it comes
            acc = torch.zeros((n_out, *padded.shape), dtype=torch.float32, device=dev)
            norm = torch.zeros(padded.shape, dtype=torch.float32, device=dev)

            def blend_now(r: tuple[slice, ...], y: torch.Tensor) -> None:
                acc[all_channels(r)] += y * weight
                norm[r] += weight

            _run_tiles(net, image, plan, patch, axes, batch, n_out, model.meta.name, blend_now, progress)
            probs = output(_probabilities(acc, norm).cpu().numpy())
            ran = len(plan)
        else:  # the ROI: keep each tile's logits, so that a spill can complete the full pass in its order
            logits: dict[tuple[int, ...], torch.Tensor] = {}

            def keep(r: tuple[slice, ...], y: torch.Tensor) -> None:
                logits[tuple(s.start for s in r)] = y

            def blend(todo: list[tuple[int, ...]]) -> torch.Tensor:
                outputs = ((tuple(slice(s, s + p) for s, p in zip(t, patch)), logits[t]) for t in todo)
                return _probabilities(*_blend(outputs, padded.shape, n_out, weight))

            _run_tiles(net, image, plan, patch, axes, batch, n_out, model.meta.name, keep, progress)
            # the grid's order: the full pass's summation order wherever every covering tile ran
            full_count = cord_roi.coverage(padded.shape, tiles_body, patch)
            complete = cord_roi.complete_region(full_count, cord_roi.coverage(padded.shape, plan, patch))
            probs = output(np.where(complete, blend(plan).cpu().numpy(), np.float32(0.0)))
            assert localised is not None  # a ROI plan comes with the localiser's region
            why = (accept or _accept_model_space(model))(probs, output((full_count > 0) & ~complete),
                                                         output(localised))
            if why:
                log.info("ROI inference: %s after %s; completing the full pass over %d tiles",
                         why, decision, len(tiles_body))
                _run_tiles(net, image, [t for t in tiles_body if t not in logits], patch, axes, batch, n_out,
                           model.meta.name, keep, progress, "sliding window (rest)")
                probs = output(blend(tiles_body).cpu().numpy())
                decision = f"full: {why} ({decision})"
            ran = len(logits)
    info.update(tiles_run=ran, tiles_skipped=len(tiles) - ran, roi=decision)
    return probs


def _accept_model_space(model: LoadedModel) -> Accept:
    """The ROI check where the caller has none: masks thresholded and kept in model space."""
    def accept(probs: np.ndarray, incomplete: np.ndarray, localised: np.ndarray) -> str:
        t = model.meta.thresholds
        union = (probs[0] >= t[0]) | (probs[1] >= t[1])
        return cord_roi.spill(union, largest_component(union) > 0, incomplete, localised)
    return accept


def _plan_roi(image: np.ndarray, air: float, body: np.ndarray, pads: list[tuple[int, int]],
              tiles: list[tuple[int, ...]], model: LoadedModel, batch: int, progress: Progress,
              info: dict) -> tuple[list[tuple[int, ...]], str, np.ndarray | None]:
    """The tiles to run (of ``tiles``, origins in ``image`` padded by ``pads``), the decision
    (``"cord: ..."`` or ``"full: <why>"``) and the localiser's region with its margin (padded grid;
    None for the full pass); ``image`` is the normalised crop, ``body`` its body mask."""
    def full(why: str) -> tuple[list[tuple[int, ...]], str, None]:
        log.info("ROI inference: full pass over %d tiles: %s", len(tiles), why)
        return tiles, f"full: {why}", None

    if len(tiles) < 2:
        return full(f"{len(tiles)} tile(s): nothing to skip")
    patch = tuple(int(p) for p in model.meta.patch_size)
    progress("locating the cord", 0, 1)
    t0 = time.perf_counter()
    prob = localise(image, air, model, batch)
    progress("locating the cord", 1, 1)
    cord, why = cord_roi.select(np.where(upsample_mask(body, prob.shape) if not body.all() else True, prob, 0.0))
    why = why if cord is None else cord_roi.at_side_edge(cord, prob)
    info["localiser_s"] = round(time.perf_counter() - t0, 3)
    if cord is None or why:
        return full(why)
    low_spacing = [s * LOCALISER_FACTOR for s in model.meta.spacing_mm]
    region = upsample_mask(cord_roi.dilate(cord, cord_roi.margin_voxels(cord_roi.MARGIN_MM, low_spacing)), image.shape)
    region = np.pad(region, pads, mode="constant", constant_values=False)
    plan = cord_roi.tiles_touching(region, tiles, patch)
    if len(tiles) - len(plan) < max(1.0, cord_roi.MIN_SKIP_FRACTION * len(tiles)):
        return full(f"the cord's region touches {len(plan)} of {len(tiles)} tiles")
    return plan, f"cord: {len(plan)} of {len(tiles)} tiles", region


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
            tile_batch: int | None = None, skip_background: bool = True, roi: bool = True) -> Segmentation:
    """Segment cord and lesions; every output array has the shape of ``volume.array``. Freed
    working memory stays on the heap for the next case and goes back once idle (inference.heap).

    `roi`: run full-resolution tiles only around the cord (module docstring; same masks as the
    full pass, ``info["roi"]`` records the decision); False runs every tile of the body."""
    with heap.busy():
        return _segment(volume, model, progress, tile_batch, skip_background, roi)


def _segment(volume: Volume, model: LoadedModel, progress: Progress | None,
             tile_batch: int | None, skip_background: bool, roi: bool) -> Segmentation:
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
    kept: dict[str, Any] = {"probs": None}  # the last probability map made into masks, and what it made

    def masks(probs: np.ndarray) -> tuple[np.ndarray, ...]:
        """(cord_prob, lesion_prob, cord, lesion) in the input grid, made once per probability map."""
        if kept["probs"] is not probs:
            start = time.perf_counter()
            back = preprocess.from_model_space(probs[:2], grid, order=1)
            cord_prob = np.clip(back[0], 0.0, 1.0).astype(np.float32)
            lesion_prob = np.clip(back[1], 0.0, 1.0).astype(np.float32)
            kept.update(probs=probs, secs=time.perf_counter() - start,
                        masks=(cord_prob, lesion_prob, *postprocess(cord_prob, lesion_prob, model.meta.thresholds)))
        return kept["masks"]

    def accept(probs: np.ndarray, incomplete: np.ndarray, localised: np.ndarray) -> str:
        """A ROI result is kept when its masks in the input grid are the full pass's (inference.roi.spill)."""
        cord_prob, lesion_prob, cord, _ = masks(probs)
        t = model.meta.thresholds
        differs = preprocess.from_model_space(incomplete.astype(np.float32), grid, order=1) > 0
        seen = preprocess.from_model_space(localised.astype(np.float32), grid, order=1) >= 0.5
        return cord_roi.spill((cord_prob >= t[0]) | (lesion_prob >= t[1]), cord > 0, differs, seen)

    try:
        probs = predict_model_space(model_img, model, progress=progress, tile_batch=tile_batch,
                                    skip_background=skip_background, info=info, roi=roi, accept=accept)
    except torch.cuda.OutOfMemoryError:
        if (tile_batch or default_tile_batch(model.device)) <= 1:
            raise
        torch.cuda.empty_cache()  # a smaller batch of tiles usually fits; the result is the same
        progress("out of GPU memory: retrying one tile at a time", 0, 1)
        probs = predict_model_space(model_img, model, progress=progress, tile_batch=1,
                                    skip_background=skip_background, info=info, roi=roi, accept=accept)
    t2 = time.perf_counter()
    progress("postprocessing", 0, 1)
    # a kept ROI result had its masks made while it was judged: that time is postprocessing's
    early = kept["secs"] if kept["probs"] is probs else 0.0
    cord_prob, lesion_prob, cord, lesion = masks(probs)
    t3 = time.perf_counter()
    info["model_grid_spacing_mm"] = grid.spacing
    return Segmentation(cord_prob=cord_prob, lesion_prob=lesion_prob, cord_mask=cord,
                        lesion_mask=lesion, info=info,
                        timings={"preprocess": t1 - t0, "network": t2 - t1 - early, "postprocess": t3 - t2 + early})
