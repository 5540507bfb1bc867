"""nnU-Net v2 inference semantics, reimplemented on our own code (no nnunetv2 at run time).

Order of operations, as nnU-Net's predictor does it for one image:
  read      array in (z, y, x) order = the NIfTI voxel axes reversed, spacing reversed too
            (nnU-Net's SimpleITK and Nibabel readers both do this); before that, when
            dataset.json names an ``image_orientation`` (SCT's "from" letters, RPI = nibabel
            LAS), the volume is reoriented by axis flips/permutations as SCT does before calling
            nnU-Net
  transpose plans' transpose_forward (axes and spacing)
  crop      to the bounding box of non-zero voxels (holes filled: that mask also bounds
            z-score statistics when use_mask_for_norm)
  normalise per channel scheme (ZScore, CT, NoNorm, RescaleTo01, RGBTo01), before resampling
  resample  to the configuration spacing: skimage resize (order 3, edge, no anti-aliasing);
            when the spacing ratio exceeds 3 the low-resolution axis is resampled separately
            with order_z (0, nearest)
  predict   pad to at least one patch (centred, zeros), tiles with step 0.5 of the patch,
            Gaussian importance (sigma = patch/8, truncated at 4 sigma, peak 10, fp16-rounded
            like nnU-Net's map), optional mirroring TTA, folds averaged on logits
  export    logits resampled back (order 1, same anisotropy rule), sigmoid per region (labels
            written in regions_class_order where p > 0.5) or softmax + argmax, crop reverted,
            transpose reverted

nnU-Net keeps tile sums and exported logits in float16; by default we do the same, in the
same order, so outputs match it (half_accumulation=False keeps float32 throughout instead).
On CPU the default makes the very same network calls as nnU-Net (one pass at a time, the
network as built), so the output is nnUNetPredictor's to the bit; a model loaded with fast_cpu
runs faster kernels and batched passes instead, and because float16 sums amplify float32
rounding differences, its probabilities then differ by up to a float16 step of the logits.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Sequence

import numpy as np
import torch
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform
from scipy import ndimage

from inference.models.nnunet import NnUNetModel, NnUNetPlan, default_tile_batch
from inference.models.registry import ModelError
from inference.segmentation import Progress, Segmentation, all_channels, mirror_combos
from inference.volume import Volume

ANISO_THRESHOLD = 3.0
TILE_STEP = 0.5
SIGMA_SCALE = 1.0 / 8
GAUSSIAN_PEAK = 10.0
_OPPOSITE = {"R": "L", "L": "R", "A": "P", "P": "A", "S": "I", "I": "S"}


# ------------------------------------------------------------------------------ orientation

def sct_to_nibabel_codes(code: str) -> tuple[str, ...]:
    """SCT names where each axis comes FROM ("RPI": right-to-left, ...); nibabel where it goes TO."""
    return tuple(_OPPOSITE[c] for c in code.upper())


@dataclass(frozen=True)
class Reorient:
    """Axis flips/permutations between the input grid and the model's orientation (exact, no interpolation)."""

    forward_ornt: np.ndarray | None
    backward_ornt: np.ndarray | None
    spacing_xyz: tuple[float, float, float]  # voxel size of the reoriented grid, its own axis order

    def forward(self, arr: np.ndarray) -> np.ndarray:
        return arr if self.forward_ornt is None else apply_orientation(arr, self.forward_ornt)

    def backward(self, arr: np.ndarray) -> np.ndarray:
        """(...spatial) or (C, ...spatial) back to the input grid."""
        if self.backward_ornt is None:
            return arr
        if arr.ndim == 4:
            return np.stack([apply_orientation(a, self.backward_ornt) for a in arr])
        return apply_orientation(arr, self.backward_ornt)


def _column_norms(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size along each axis of `affine`'s grid."""
    sx, sy, sz = (float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))
    return sx, sy, sz


def reorientation(affine: np.ndarray, shape: Sequence[int], code: str | None) -> Reorient:
    affine = np.asarray(affine, dtype=np.float64)
    if code is None:
        return Reorient(None, None, _column_norms(affine))
    src = io_orientation(affine)
    dst = axcodes2ornt(sct_to_nibabel_codes(code))
    fwd = ornt_transform(src, dst)
    new_affine = affine @ inv_ornt_aff(fwd, tuple(shape[:3]))
    return Reorient(fwd, ornt_transform(dst, src), _column_norms(new_affine))


# ------------------------------------------------------------------------------ crop / normalise

def nonzero_bbox(data: np.ndarray, fill: bool) -> tuple[tuple[slice, ...], np.ndarray | None]:
    """Bounding box of voxels non-zero in any channel (whole image when none is); with `fill`,
    also the mask with holes filled (nnU-Net's `seg >= 0` region for masked normalisation)."""
    mask = np.any(data != 0, axis=0)
    idx = [np.nonzero(np.any(mask, axis=tuple(a for a in range(mask.ndim) if a != ax)))[0] for ax in range(mask.ndim)]
    box = tuple(slice(int(i[0]), int(i[-1]) + 1) if i.size else slice(0, n) for i, n in zip(idx, mask.shape))
    filled = ndimage.binary_fill_holes(mask)[box] if fill else None
    return box, filled


def normalize(image: np.ndarray, scheme: str, use_mask: bool, mask: np.ndarray | None,
              props: dict[str, float]) -> np.ndarray:
    """One channel, float32 in place, with nnU-Net's formulas and float32 statistics."""
    eps = 1e-8
    s = scheme.casefold()
    if s in ("zscorenormalization", "zscore"):
        if use_mask:
            assert mask is not None
            sel = image[mask]
            mean, std = sel.mean(), sel.std()
            image[mask] = (sel - mean) / max(std, eps)
        else:
            mean, std = image.mean(), image.std()
            image -= mean
            image /= max(std, eps)
    elif s in ("ctnormalization", "ct"):
        try:
            lo, hi = props["percentile_00_5"], props["percentile_99_5"]
            mean, std = props["mean"], props["std"]
        except KeyError as exc:
            raise ModelError(f"CTNormalization needs foreground intensity property {exc} in plans.json") from None
        np.clip(image, lo, hi, out=image)
        image -= mean
        image /= max(std, eps)
    elif s in ("nonormalization", "nonorm"):
        pass
    elif s in ("rescaleto01normalization", "rescale_to_0_1"):
        image -= image.min()
        image /= np.clip(image.max(), a_min=eps, a_max=None)
    elif s in ("rgbto01normalization", "rgb_to_0_1"):
        image /= 255.0
    else:
        raise ModelError(f"normalization scheme {scheme!r} is not supported (ZScore, CT, NoNormalization, "
                         "RescaleTo01, RGBTo01)")
    return image


# ------------------------------------------------------------------------------ resampling

def separate_z(current: Sequence[float], new: Sequence[float], force: bool | None,
               threshold: float = ANISO_THRESHOLD) -> int | None:
    """The axis to resample on its own (nnU-Net's anisotropy rule), or None."""
    def lowres(sp: Sequence[float]) -> list[int]:
        arr = np.asarray(sp, float)
        return [int(i) for i in np.where(max(arr) / arr == 1)[0]]

    def aniso(sp: Sequence[float]) -> bool:
        return max(sp) / min(sp) > threshold

    if force is not None:
        axes = lowres(current) if force else None
    elif aniso(current):
        axes = lowres(current)
    elif aniso(new):
        axes = lowres(new)
    else:
        axes = None
    return axes[0] if axes is not None and len(axes) == 1 else None


def new_shape_for(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> tuple[int, ...]:
    return tuple(int(round(s / t * n)) for s, t, n in zip(spacing, target, shape))


def resample(data: np.ndarray, new_shape: Sequence[int], current: Sequence[float], new: Sequence[float],
             order: int = 3, order_z: int = 0, force_separate_z: bool | None = None,
             separate_z_anisotropy_threshold: float = ANISO_THRESHOLD, is_seg: bool = False) -> np.ndarray:
    """(C, ...) float array to `new_shape` with nnU-Net's default resampling semantics."""
    from skimage.transform import resize

    if is_seg:
        raise ModelError("label-map resampling is not used at inference")
    new_shape = tuple(int(n) for n in new_shape)
    if tuple(data.shape[1:]) == new_shape:
        return data
    axis = separate_z(current, new, force_separate_z, separate_z_anisotropy_threshold)
    out = np.zeros((data.shape[0], *new_shape), dtype=data.dtype)
    if data.dtype == np.float16:  # nnU-Net resamples its fp16 logits in float64, stores fp16
        data = data.astype(np.float64)
    kw = {"order": order, "mode": "edge", "anti_aliasing": False}
    for c in range(data.shape[0]):
        if axis is None:
            out[c] = resize(data[c], new_shape, **kw)
            continue
        plane = tuple(n for a, n in enumerate(new_shape) if a != axis)
        n_axis = data.shape[1 + axis]
        tmp = np.stack([resize(np.take(data[c], i, axis=axis), plane, **kw) for i in range(n_axis)], axis=axis)
        if n_axis == new_shape[axis]:
            out[c] = tmp
        elif order_z == 0:
            # along the axis: nnU-Net samples at scale*(i+0.5)-0.5 with order 0; asking scipy which
            # source index it picks for those coordinates keeps its rounding of ties exactly
            coords = n_axis / new_shape[axis] * (np.arange(new_shape[axis]) + 0.5) - 0.5
            pick = ndimage.map_coordinates(np.arange(n_axis, dtype=np.float64), coords[None], order=0, mode="nearest")
            out[c] = np.take(tmp, pick.astype(np.intp), axis=axis)
        else:
            grids = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in new_shape], indexing="ij")
            scale = np.array(tmp.shape, float) / np.array(new_shape, float)
            coords = np.stack([s * (g + 0.5) - 0.5 for s, g in zip(scale, grids)])
            out[c] = ndimage.map_coordinates(tmp, coords, order=order_z, mode="nearest")
    return out


def _resampling_kwargs(fn: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    name, kwargs = fn
    if name not in ("resample_data_or_seg_to_shape", "resample_data_or_seg_to_spacing"):
        raise ModelError(f"plans resampling function {name!r} is not supported (resample_data_or_seg_to_shape)")
    allowed = {"is_seg", "order", "order_z", "force_separate_z", "separate_z_anisotropy_threshold"}
    unknown = set(kwargs) - allowed
    if unknown:
        raise ModelError(f"plans resampling kwargs {sorted(unknown)} are not supported")
    return dict(kwargs)


# ------------------------------------------------------------------------------ preprocessing

@dataclass
class Prepared:
    """The network input and what export needs to undo (all in transposed nnU-Net order)."""

    data: np.ndarray  # (C, ...) float32, normalised and resampled
    spacing: tuple[float, ...]  # original spacing, transposed
    shape_before_crop: tuple[int, ...]
    bbox: tuple[slice, ...]
    shape_after_crop: tuple[int, ...]


def preprocess(image: np.ndarray, spacing: Sequence[float], plan: NnUNetPlan) -> Prepared:
    """`image`: (C, z, y, x) or (z, y, x) as nnU-Net's readers give it, `spacing` in the same order."""
    image = np.asarray(image)
    if image.ndim == 3:
        image = image[None]
    # copy, then transposed and cropped VIEWS, exactly as nnU-Net lays them out: float32 mean/std
    # are summed pairwise in memory order, so the same layout gives the same bits
    data = image.astype(np.float32)
    data = data.transpose((0, *[i + 1 for i in plan.transpose_forward]))
    sp = tuple(float(spacing[i]) for i in plan.transpose_forward)
    shape0 = tuple(data.shape[1:])
    box, mask = nonzero_bbox(data, fill=any(plan.use_mask_for_norm))
    data = data[all_channels(box)]
    for c in range(data.shape[0]):
        normalize(data[c], plan.normalization_schemes[c], plan.use_mask_for_norm[c], mask,
                  plan.intensity_properties.get(str(c), {}))
    target = plan.spacing if len(plan.spacing) == 3 else (sp[0], *plan.spacing)
    new_shape = new_shape_for(data.shape[1:], sp, target)
    data = np.ascontiguousarray(resample(data, new_shape, sp, target, **_resampling_kwargs(plan.resampling_data)))
    cropped = tuple(b.stop - b.start for b in box)
    return Prepared(data=data, spacing=sp, shape_before_crop=shape0, bbox=box, shape_after_crop=cropped)


# ------------------------------------------------------------------------------ sliding window

@lru_cache(maxsize=4)
def gaussian_map(patch: tuple[int, ...]) -> np.ndarray:
    """nnU-Net's importance map: a delta blurred with sigma = patch/8 (scipy, truncated at 4 sigma),
    scaled to a peak of 10, rounded to float16 as nnU-Net stores it, zeros lifted to the minimum.

    The float64 -> float16 rounding is torch's, as in nnU-Net: numpy's differs on some values
    (torch rounds through float32; at the SCIseg patch 104 weights differ by one float16 step,
    enough to change tile sums downstream)."""
    delta = np.zeros(patch)
    delta[tuple(p // 2 for p in patch)] = 1
    g = ndimage.gaussian_filter(delta, [p * SIGMA_SCALE for p in patch], 0, mode="constant", cval=0)
    g /= g.max() / GAUSSIAN_PEAK
    half = torch.from_numpy(g).to(torch.float16)
    half[half == 0] = half[half != 0].min()
    return half.float().numpy()


def tile_steps(size: Sequence[int], patch: Sequence[int], step: float = TILE_STEP) -> list[list[int]]:
    out = []
    for n, p in zip(size, patch):
        k = int(np.ceil((n - p) / (p * step))) + 1
        stride = (n - p) / (k - 1) if k > 1 else 0.0
        out.append([int(np.round(stride * i)) for i in range(k)])
    return out


def predict_logits(data: np.ndarray, model: NnUNetModel, tile_batch: int | None = None,
                   progress: Progress | None = None, info: dict | None = None,
                   half_accumulation: bool = True) -> np.ndarray:
    """Averaged logits (heads, ...) over tiles, mirrors and folds for a preprocessed (C, ...) array.

    With `half_accumulation` (default) the tile sums, the Gaussian weights, the per-fold division
    and the fold average are stored in float16 in nnU-Net's order, so results match nnU-Net to
    the bit in practice (its fp16 rounding is part of what a validated model produces); without
    it everything stays float32 (more precise, differs from nnU-Net by up to ~1e-2 in p where
    tiles disagree strongly). All folds run on each tile batch while it is resident.
    """
    plan = model.plan
    assert plan is not None
    patch = plan.patch_size
    if len(patch) != data.ndim - 1:
        raise ModelError(
            f"configuration {plan.configuration!r} has a {len(patch)}D patch; only 3D configurations run here")
    dev = model.device
    cuda = dev.type == "cuda"
    store = torch.float16 if half_accumulation else torch.float32
    shape = data.shape[1:]
    padded_shape = tuple(max(n, p) for n, p in zip(shape, patch))
    lo = [(q - n) // 2 for n, q in zip(shape, padded_shape)]
    x_all = torch.zeros((data.shape[0], *padded_shape), dtype=torch.float32, device=dev)
    inner = tuple(slice(a, a + n) for a, n in zip(lo, shape))
    x_all[all_channels(inner)] = torch.from_numpy(np.ascontiguousarray(data)).to(dev)
    starts = list(itertools.product(*tile_steps(padded_shape, patch)))
    heads = plan.labels.num_heads
    n_folds = len(model.networks)
    acc = torch.zeros((n_folds, heads, *padded_shape), dtype=store, device=dev)
    norm = torch.zeros(padded_shape, dtype=store, device=dev)
    g = torch.from_numpy(gaussian_map(tuple(patch))).to(device=dev, dtype=store)
    combos = mirror_combos(model.mirror_axes) if model.use_mirroring else []
    views = [()] + combos  # what each tile is run as: itself, then each mirror (nnU-Net's order)
    # network passes per forward (default_tile_batch): tiles x mirrors flattened, so mirrors batch too
    batch = max(1, tile_batch or default_tile_batch(dev, model.fast_cpu))
    group = max(1, batch // len(views))  # tiles whose passes are in flight together
    layout = torch.channels_last_3d if model.channels_last else torch.contiguous_format
    if info is not None:
        info.update(tiles=len(starts), folds=n_folds, mirrors=len(views), network_shape=tuple(padded_shape),
                    batch=batch)
    n_done = 0
    with torch.inference_mode(), torch.autocast("cuda", enabled=cuda):
        for b0 in range(0, len(starts), group):
            chunk = starts[b0:b0 + group]
            sls = [tuple(slice(s, s + p) for s, p in zip(st, patch)) for st in chunk]
            tiles = [x_all[all_channels(sl)] for sl in sls]
            passes = [(t, axes) for t in range(len(tiles)) for axes in views]
            for f, net in enumerate(model.networks):
                outs: list[torch.Tensor] = []
                for p0 in range(0, len(passes), batch):
                    sub = passes[p0:p0 + batch]
                    x = torch.stack([torch.flip(tiles[t], [a - 1 for a in axes]) if axes else tiles[t]
                                     for t, axes in sub]).contiguous(memory_format=layout)
                    y = net(x)
                    if y.shape[1] != heads:
                        raise ModelError(f"network gives {y.shape[1]} outputs, dataset.json implies {heads}")
                    if not cuda:
                        y = y.contiguous()  # channels-last logits: dense again before the accumulation
                    outs.extend(y.unbind(0))
                for t, sl in enumerate(sls):
                    # per tile, as nnU-Net: plain pass, += each un-flipped mirror in order, / count
                    own = outs[t * len(views):(t + 1) * len(views)]
                    yi = own[0]
                    for axes, ym in zip(combos, own[1:]):
                        yi += torch.flip(ym, [a - 1 for a in axes])
                    if combos:
                        yi /= len(views)
                    yi = yi.to(dev) * g  # fp32 (or autocast fp16) product, stored in `store`
                    acc[(f,) + all_channels(sl)] += yi
            for sl in sls:
                norm[sl] += g
            n_done += len(chunk)
            if progress:
                progress("sliding window", n_done, len(starts))
    total = None
    for f in range(n_folds):  # per fold: divide in storage precision, then average folds as nnU-Net does
        torch.div(acc[f], norm, out=acc[f])
        total = acc[f].clone() if total is None else total.add_(acc[f])
    assert total is not None
    if n_folds > 1:
        total /= n_folds
    if torch.isinf(total).any():
        raise ModelError("infinite logits after tile averaging (float16 overflow); use half_accumulation=False")
    return total[all_channels(inner)].cpu().numpy()


# ------------------------------------------------------------------------------ export

def export(logits: np.ndarray, prep: Prepared, plan: NnUNetPlan) -> tuple[np.ndarray, np.ndarray]:
    """Logits in the network grid -> (labels, probabilities) in the grid nnU-Net read."""
    target = plan.spacing if len(plan.spacing) == 3 else (prep.spacing[0], *plan.spacing)
    logits = resample(logits, prep.shape_after_crop, target, prep.spacing,
                      **_resampling_kwargs(plan.resampling_probabilities))
    lab = plan.labels
    t = torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32))
    probs = torch.sigmoid(t) if lab.has_regions else torch.softmax(t, 0)
    probs_np = probs.numpy()
    if lab.has_regions:
        seg = np.zeros(probs_np.shape[1:], np.uint8)
        for i, c in enumerate(lab.regions_class_order):
            seg[probs_np[i] > 0.5] = c
    else:
        seg = probs_np.argmax(0).astype(np.uint8)
    full_seg = np.zeros(prep.shape_before_crop, np.uint8)
    full_seg[prep.bbox] = seg
    full_probs = np.zeros((probs_np.shape[0], *prep.shape_before_crop), np.float32)
    if not lab.has_regions:
        full_probs[0] = 1.0
    full_probs[all_channels(prep.bbox)] = probs_np
    tb = plan.transpose_backward
    return (np.ascontiguousarray(full_seg.transpose(tb)),
            np.ascontiguousarray(full_probs.transpose((0, *[i + 1 for i in tb]))))


def predict_array(image: np.ndarray, spacing: Sequence[float], model: NnUNetModel,
                  tile_batch: int | None = None, progress: Progress | None = None,
                  timings: dict | None = None, info: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """nnU-Net's predict_single_npy_array: (z, y, x) image + spacing -> (labels, probabilities)."""
    assert model.plan is not None
    t0 = time.perf_counter()
    prep = preprocess(image, spacing, model.plan)
    t1 = time.perf_counter()
    logits = predict_logits(prep.data, model, tile_batch=tile_batch, progress=progress, info=info)
    t2 = time.perf_counter()
    seg, probs = export(logits, prep, model.plan)
    if timings is not None:
        timings.update(preprocess=t1 - t0, network=t2 - t1, postprocess=time.perf_counter() - t2)
    return seg, probs


# ------------------------------------------------------------------------------ our Segmentation

def _channel_for(labels: frozenset[int], model: NnUNetModel, probs: np.ndarray) -> np.ndarray:
    """Probability that a voxel carries one of `labels` (a region's own sigmoid, or summed softmax)."""
    lab = model.plan.labels  # type: ignore[union-attr]
    if not labels:
        return np.zeros(probs.shape[1:], np.float32)
    if not lab.has_regions:
        return np.clip(probs[sorted(labels)].sum(axis=0), 0.0, 1.0).astype(np.float32)
    exact = [i for i, r in enumerate(lab.regions) if set(r) == set(labels)]
    if exact:
        return probs[exact[0]].astype(np.float32)
    inside = [i for i, r in enumerate(lab.regions) if set(r) <= set(labels)]
    if not inside:
        return np.zeros(probs.shape[1:], np.float32)
    return probs[inside].max(axis=0).astype(np.float32)


def segment_nnunet(volume: Volume, loaded: NnUNetModel, progress: Progress | None = None,
                   tile_batch: int | None = None) -> Segmentation:
    """Our engine's contract on an nnU-Net folder: masks and probabilities in the input grid.

    Masks are nnU-Net's labels mapped as-is (cord = cord or lesion labels, lesion = lesion
    labels); no largest-component step, so what a site validated with nnU-Net is what it gets.
    """
    if not isinstance(loaded, NnUNetModel) or loaded.plan is None:
        raise ModelError("segment_nnunet needs a model loaded from an nnU-Net folder (load_nnunet)")
    arr = np.asarray(volume.array, dtype=np.float32)
    if arr.ndim != 3:
        raise ValueError(f"segment_nnunet: expected a 3D volume, got shape {arr.shape}")
    t0 = time.perf_counter()
    reo = reorientation(volume.affine, arr.shape, loaded.plan.image_orientation)
    model_arr = np.ascontiguousarray(reo.forward(arr).transpose(2, 1, 0))
    t_orient = time.perf_counter() - t0
    timings: dict[str, float] = {}
    info: dict[str, object] = {"device": str(loaded.device), "format": "nnunetv2", "folds": list(loaded.folds)}
    seg, probs = predict_array(model_arr, reo.spacing_xyz[::-1], loaded, tile_batch=tile_batch,
                               progress=progress, timings=timings, info=info)
    t1 = time.perf_counter()
    labels = reo.backward(seg.transpose(2, 1, 0))
    probs = reo.backward(probs.transpose(0, 3, 2, 1))
    cord = np.isin(labels, sorted(loaded.cord_labels)).astype(np.uint8)
    lesion = np.isin(labels, sorted(loaded.lesion_labels)).astype(np.uint8)
    out = Segmentation(
        cord_prob=np.ascontiguousarray(_channel_for(loaded.cord_labels, loaded, probs)),
        lesion_prob=np.ascontiguousarray(_channel_for(loaded.lesion_labels, loaded, probs)),
        cord_mask=np.ascontiguousarray(cord), lesion_mask=np.ascontiguousarray(lesion),
        info=info, timings={"preprocess": timings["preprocess"] + t_orient, "network": timings["network"],
                            "postprocess": timings["postprocess"] + time.perf_counter() - t1},
    )
    out.info["labels"] = np.ascontiguousarray(labels)  # nnU-Net's own label map, input grid (uint8)
    return out
