"""Bring-your-own nnU-Net v2 trained-model folders, loaded WITHOUT nnunetv2 installed.

A folder such as ``Dataset101_SCIseg/nnUNetTrainer__nnUNetPlans__3d_fullres`` holds
``dataset.json`` (labels, optional ``regions_class_order`` and SCT's ``image_orientation``),
``plans.json`` (per-configuration spacing, patch, normalisation, resampling, architecture)
and ``fold_*/checkpoint_final.pth``. ``inference.models.nnunet_folder`` parses those (without
torch, re-exported here); this module builds the network with ``dynamic-network-architectures``
(the same package nnU-Net builds it with, so checkpoint keys match) and keeps one network per
fold resident; ``inference.nnunet_runtime`` then reproduces nnU-Net's preprocessing, sliding
window and export on it.

Why a separate loader rather than model.json: sites already trust these folders as shipped
(SCIseg, SCT's contrast-agnostic model); converting them would be one more thing to get wrong.
"""
from __future__ import annotations

import importlib
import logging
import pkgutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Sequence, cast

import numpy as np
import torch

from inference.models.loaded import LoadedModel, pick_device
from inference.models.meta import nnunet_meta, read_nnunet_meta  # noqa: F401 (re-exported)
from inference.models.nnunet_folder import (  # noqa: F401 (re-exported: callers import them from here)
    CORD_NAMES,
    DEFAULT_CHECKPOINT,
    DEFAULT_CONFIGURATION,
    LESION_NAMES,
    FolderChoice,
    Labels,
    NnUNetPlan,
    SettingError,
    find_folds,
    folder_configuration,
    is_nnunet_folder,
    read_plan,
    resolve_settings,
    trainer_folders,
)
from inference.models.spec import ModelError

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ network

def _import_name(dotted: str) -> Any:
    module, _, attr = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError):
        return None


def _network_class(name: str, where: str) -> type:
    """Only classes of dynamic-network-architectures are built: plans are data, not code to import."""
    if not name.startswith("dynamic_network_architectures."):
        raise ModelError(f"{where}: network_class_name {name!r} is not from dynamic_network_architectures; "
                         "custom architectures are not loaded")
    cls = _import_name(name)
    if cls is None:  # classes move between releases: look the bare name up in the architectures package
        import dynamic_network_architectures.architectures as archs

        short = name.rsplit(".", 1)[-1]
        for mod in pkgutil.iter_modules(archs.__path__):
            cls = _import_name(f"{archs.__name__}.{mod.name}.{short}")
            if cls is not None:
                break
    if cls is None:
        raise ModelError(f"{where}: network class {name!r} not found in the installed dynamic-network-architectures")
    return cls


def build_network(plan: NnUNetPlan) -> torch.nn.Module:
    """The network described by the plans, without deep supervision (inference returns full resolution only)."""
    where = str(plan.folder / "plans.json")
    arch = plan.architecture
    kwargs = dict(arch.get("arch_kwargs", {}))
    for key in arch.get("_kw_requires_import", []):
        value = kwargs.get(key)
        if value is None:
            continue
        if not str(value).startswith("torch.nn."):
            raise ModelError(f"{where}: arch_kwargs {key}={value!r} is not a torch.nn class; refusing to import it")
        obj = _import_name(str(value))
        if obj is None:
            raise ModelError(f"{where}: arch_kwargs {key}={value!r} cannot be imported from this torch")
        kwargs[key] = obj
    cls = _network_class(str(arch.get("network_class_name", "")), where)
    kwargs["deep_supervision"] = False
    try:
        return cls(input_channels=plan.num_input_channels, num_classes=plan.labels.num_heads, **kwargs)
    except TypeError as exc:
        raise ModelError(f"{where}: {cls.__name__} does not accept these arch_kwargs ({exc})") from None


def _affine(norm: torch.nn.InstanceNorm3d) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """A norm's weight and bias: Parameters, or None without affine. torch leaves the two attributes
    unannotated on purpose (pytorch#39670), so its stubs type them as Module.__getattr__'s Tensor | Module."""
    return cast("torch.Tensor | None", norm.weight), cast("torch.Tensor | None", norm.bias)


class InstanceNormAct(torch.nn.Module):
    """InstanceNorm (affine, batch statistics) and the LeakyReLU after it, computed in place on
    the fresh channels-last output of the convolution before it: the CPU replacement for
    nnU-Net's norm + nonlin pair, the same function to float32 rounding (inference only).

    Why: on CPU, PyTorch's instance norm copies a channels-last tensor to contiguous and back,
    and the activation allocates again (at nnU-Net's patch a stage-0 activation is 250 MB per
    tile; fresh pages cost about as much as the arithmetic on them). Here: the mean, subtract
    in place, the variance of the centred values, then scale/shift and the activation in place.
    Sums run per slab of the first spatial axis in float32 (the variance as small Gram
    matrices: BLAS-fast) and across slabs in float64: as accurate as PyTorch's own norm (one
    float32 sum over the whole tile loses about 1e-6 relative, which nnU-Net's fp16
    accumulation downstream turns into visible differences).
    """

    def __init__(self, norm: torch.nn.InstanceNorm3d, negative_slope: float | None) -> None:
        super().__init__()
        self.weight, self.bias = _affine(norm)
        self.eps = float(norm.eps)
        self.negative_slope = negative_slope

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        if x.dim() != 5 or x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last_3d):
            y = torch.nn.functional.instance_norm(x, weight=self.weight, bias=self.bias, eps=self.eps)
            if self.negative_slope is not None:
                torch.nn.functional.leaky_relu_(y, self.negative_slope)
            return y
        v = x.permute(0, 2, 3, 4, 1).view(n, -1, c)  # (N, S, C), channels innermost: a view of x
        count = v.shape[1]
        slabs = x.shape[2]
        part = v.view(n * slabs, count // slabs, c)  # per slab: float32 sums; over slabs: float64
        mean = part.sum(1).view(n, slabs, c).sum(1, dtype=torch.float64).div_(count)
        v.sub_(mean.to(v.dtype).unsqueeze(1))
        gram = torch.bmm(part.transpose(1, 2), part).diagonal(dim1=1, dim2=2)  # (N * slabs, C)
        var = gram.view(n, slabs, c).sum(1, dtype=torch.float64).div_(count).to(v.dtype).unsqueeze(1)
        scale = torch.rsqrt(var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight.view(1, 1, c)
        if self.bias is not None:
            torch.addcmul(self.bias.view(1, 1, c), v, scale, out=v)
        else:
            v.mul_(scale)
        if self.negative_slope is not None:
            torch.nn.functional.leaky_relu_(v, self.negative_slope)
        return x


class InstanceNormInPlace(torch.nn.Module):
    """nnU-Net's InstanceNorm3d computed by the same ATen kernel as torch's instance_norm (batch
    norm over the (1, N*C, ...) view, batch statistics), but written into its input: the same
    bits, without allocating a new activation (fresh pages of a 250 MB tensor cost about as much
    as the normalisation itself). Only used where the input is a convolution's own fresh output."""

    def __init__(self, norm: torch.nn.InstanceNorm3d) -> None:
        super().__init__()
        self.weight, self.bias = _affine(norm)
        self.eps = float(norm.eps)
        self.momentum = 0.0 if norm.momentum is None else float(norm.momentum)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_contiguous() or x.dim() < 3:
            return torch.nn.functional.instance_norm(x, weight=self.weight, bias=self.bias, eps=self.eps,
                                                     momentum=self.momentum)
        n, c = x.shape[:2]
        flat = x.view(1, n * c, *x.shape[2:])  # what at::instance_norm hands to batch norm
        w = None if self.weight is None else self.weight.repeat(n)
        b = None if self.bias is None else self.bias.repeat(n)
        stats = [torch.empty(n * c, dtype=x.dtype, device=x.device) for _ in range(2)]
        torch.ops.aten.native_batch_norm.out(flat, w, b, None, None, True, self.momentum, self.eps,
                                             out=flat, save_mean=stats[0], save_invstd=stats[1])
        return x


def _norms_after_convs(
        net: torch.nn.Module,
) -> Iterator[tuple[torch.nn.Sequential, int, torch.nn.InstanceNorm3d, torch.nn.Module | None]]:
    """(sequential, index, norm, next module) for every InstanceNorm3d (batch statistics) that
    directly follows a Conv3d inside an nn.Sequential: its input is the conv's fresh output."""
    for seq in list(net.modules()):
        if not isinstance(seq, torch.nn.Sequential):
            continue
        mods = list(seq)
        for i, m in enumerate(mods):
            if type(m) is torch.nn.InstanceNorm3d and i > 0 and isinstance(mods[i - 1], torch.nn.Conv3d) \
                    and not m.track_running_stats:
                yield seq, i, m, (mods[i + 1] if i + 1 < len(mods) else None)


def fuse_norms(net: torch.nn.Module) -> int:
    """Swap every conv -> InstanceNorm3d (-> LeakyReLU/ReLU) run inside an nn.Sequential for
    conv -> InstanceNormAct (the activation folded in); returns how many."""
    count = 0
    for seq, i, m, nxt in list(_norms_after_convs(net)):
        if type(nxt) is torch.nn.LeakyReLU:
            seq[i], seq[i + 1] = InstanceNormAct(m, float(nxt.negative_slope)), torch.nn.Identity()
        elif type(nxt) is torch.nn.ReLU:
            seq[i], seq[i + 1] = InstanceNormAct(m, 0.0), torch.nn.Identity()
        else:
            seq[i] = InstanceNormAct(m, None)
        count += 1
    return count


def norms_in_place(net: torch.nn.Module) -> int:
    """Swap every conv -> InstanceNorm3d inside an nn.Sequential for InstanceNormInPlace (same
    bits); activations stay as built (nnU-Net's LeakyReLU already runs in place)."""
    count = 0
    for seq, i, m, _ in list(_norms_after_convs(net)):
        seq[i] = InstanceNormInPlace(m)
        count += 1
    return count


def prepare_for_cpu(net: torch.nn.Module, fast: bool) -> torch.nn.Module:
    """The CPU form of a loaded (eval) network. Default: the norms write in place, nothing else
    changes (bit-identical). fast: channels-last 3D convolutions (oneDNN's faster layout for
    these sizes) and the fused in-place norm + activation (float32 rounding differs)."""
    if not fast:
        norms_in_place(net)
        return net
    fuse_norms(net)
    # Module.to(memory_format=...) is documented and works; torch's overloads omit the keyword
    return net.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read an nnU-Net checkpoint.

    Why weights_only=False can be needed: nnU-Net pickles the whole training state next to
    the weights (optimizer and grad-scaler state, logging lists of numpy floats, init_args),
    and torch's safe loader refuses numpy objects it does not know. Unpickling can run code,
    so we first try the safe loader with numpy's scalar types allowed, and fall back to the
    full unpickler only for folders the operator chose to configure (a warning says so).
    """
    if not path.is_file():
        raise ModelError(f"checkpoint {path} is missing")
    safe: list[Any] = [np.dtype, np.ndarray, np.float64, np.float32, np.int64, np.bool_, torch.device]
    safe += [type(np.dtype(t)) for t in ("float64", "float32", "int64", "bool")]
    for name in ("scalar", "_reconstruct"):  # numpy 1.x pickles name numpy.core, numpy 2.x numpy._core
        obj = _import_name(f"numpy._core.multiarray.{name}") or _import_name(f"numpy.core.multiarray.{name}")
        if obj is not None:
            safe += [(obj, f"numpy._core.multiarray.{name}"), (obj, f"numpy.core.multiarray.{name}")]
    try:
        with torch.serialization.safe_globals(safe):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError (or RuntimeError wrapping it) for unknown globals
        log.warning("%s: safe load refused (%s); loading with weights_only=False - only use model folders "
                    "you trust, a checkpoint can run code when unpickled", path, str(exc).splitlines()[0])
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc2:  # not a checkpoint at all (truncated copy, another file)
            raise ModelError(f"{path}: cannot be read as a PyTorch checkpoint ({type(exc2).__name__}); "
                             "is the file complete?") from None
    if not isinstance(ckpt, dict) or "network_weights" not in ckpt:
        raise ModelError(f"{path}: not an nnU-Net checkpoint (no 'network_weights')")
    return ckpt


def _plain_keys(state: dict[str, Any]) -> dict[str, Any]:
    """Some checkpoints carry the wrapper prefix of a compiled or DDP network ("_orig_mod.", "module.")."""
    out = {}
    for k, v in state.items():
        for prefix in ("_orig_mod.", "module."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


# ------------------------------------------------------------------------------ loaded model

@dataclass
class NnUNetModel(LoadedModel):
    """A loaded nnU-Net folder: one resident network per fold (``network`` is the first)."""

    plan: NnUNetPlan | None = None
    networks: list[torch.nn.Module] = field(default_factory=list)
    folds: tuple[str, ...] = ()
    mirror_axes: tuple[int, ...] = ()  # from the checkpoint; () when the trainer allowed none
    use_mirroring: bool = True
    fast_cpu: bool = False  # CPU kernels of prepare_for_cpu and batched passes (not bit-identical)
    channels_last: bool = False  # networks take channels-last input (CUDA, and CPU with fast_cpu)
    cord_labels: frozenset[int] = frozenset()
    lesion_labels: frozenset[int] = frozenset()


def default_tile_batch(device: torch.device, fast_cpu: bool) -> int:
    """Network passes per forward: 4 on GPU; on CPU one, as nnU-Net (the same conv calls give the
    same bits), or two with fast_cpu (that moves every convolution onto oneDNN: PyTorch runs
    small single-sample ones on a slower path), at one more tile's activations in memory."""
    return 4 if device.type == "cuda" else 2 if fast_cpu else 1


def _compiled(net: torch.nn.Module, plan: NnUNetPlan, dev: torch.device, batch: int,
              channels_last: bool) -> torch.nn.Module:
    """torch.compile with frozen weights (constant-folded, prepacked convolutions), warmed up on
    zero patches shaped as the runtime's forwards (`batch` passes, its memory layout) so the
    compilation happens now rather than inside the first case (a smaller last batch of a case
    compiles once more, then is cached too). Measured on CPU: no gain over eager at nnU-Net's
    patch (oneDNN convolutions dominate either way); kept for experiments."""
    try:
        fast = torch.compile(net, dynamic=False, options={"freezing": True})
        x = torch.zeros((batch, plan.num_input_channels, *plan.patch_size), device=dev)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        with torch.inference_mode(), torch.autocast("cuda", enabled=dev.type == "cuda"):
            fast(x)
        return fast  # type: ignore[return-value]
    except Exception as exc:  # no C compiler, unsupported op, ...: the eager network is always right
        log.warning("torch.compile of the nnU-Net network failed (%s); running eager", str(exc).splitlines()[0])
        return net


class _Key(NamedTuple):
    """What makes two loads the same model in this process."""

    folder: str
    device: str
    configuration: str
    folds: tuple[str, ...]
    checkpoint: str
    use_mirroring: bool
    cord_labels: tuple[int, ...]
    lesion_labels: tuple[int, ...]
    fast_cpu: bool
    compile: bool


def _key(choice: FolderChoice, device: str, use_mirroring: bool, fast_cpu: bool, compile: bool) -> _Key:
    return _Key(str(choice.folder), device, choice.plan.configuration, choice.folds, choice.checkpoint,
                bool(use_mirroring), tuple(sorted(choice.cord_labels)), tuple(sorted(choice.lesion_labels)),
                bool(fast_cpu), bool(compile))


_CACHE: dict[_Key, NnUNetModel] = {}
_LOCK = threading.Lock()


def is_loaded(choice: FolderChoice, use_mirroring: bool = True, fast_cpu: bool = False) -> bool:
    """Whether this process holds `choice` with these options, on any device, compiled or not:
    for /health, which must not wait on a load in progress (no lock: reads a snapshot)."""
    want = _key(choice, "", use_mirroring, fast_cpu, False)
    return any(k._replace(device="", compile=False) == want for k in list(_CACHE))


def load_nnunet(folder: str | Path, device: str = "auto", configuration: str | None = None,
                folds: Sequence[str | int] | None = None, checkpoint: str = DEFAULT_CHECKPOINT,
                use_mirroring: bool = True, cord_labels: Sequence[int | str] | None = None,
                lesion_labels: Sequence[int | str] | None = None, fast_cpu: bool = False,
                compile: bool = False) -> NnUNetModel:
    """Load (once per process) every requested fold of an nnU-Net v2 folder onto `device`.

    `folder`: a trainer folder (TRAINER__PLANS__CONFIGURATION) or a dataset folder holding them.
    `configuration`, `folds`, `checkpoint`, `cord_labels`, `lesion_labels`: see resolve_settings
    (defaults: what nnUNetPredictor would run). `use_mirroring`: test-time mirroring on the axes
    the checkpoint allows (nnU-Net's default: on).
    `compile`: torch.compile each fold (inductor, weights frozen) and warm it up on one patch
    here, so the one-off compile (about a minute per fold on CPU, needs a C compiler) is paid
    at load and every case after runs the fused kernels; falls back to eager if it fails.
    `fast_cpu`: on CPU, channels-last convolutions, fused in-place instance norms
    (prepare_for_cpu) and two network passes per forward: about 1.3x faster, same labels, but
    not bit-identical: where nnU-Net's float16 tile sums round the other way, probabilities
    differ by up to about one float16 step of the logits (a few 1e-3 at worst). False (the
    default) runs nnU-Net's own arithmetic: the same network calls in the same order, so the
    output is nnUNetPredictor's to the bit.
    """
    choice = resolve_settings(folder, configuration, folds, checkpoint, cord_labels, lesion_labels)
    root, fold_names = choice.folder, list(choice.folds)
    dev = pick_device(device)
    key = _key(choice, str(dev), use_mirroring, fast_cpu, compile)
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        ckpts = [load_checkpoint(root / f"fold_{f}" / checkpoint) for f in fold_names]
        plan = choice.plan
        trained_conf = (ckpts[0].get("init_args") or {}).get("configuration")
        if trained_conf and plan.configuration != trained_conf:
            raise SettingError("configuration", f"{root}: checkpoints were trained with configuration "
                               f"{trained_conf!r}, not {plan.configuration!r}; drop the configuration setting "
                               "or pick the matching folder")
        if plan.num_input_channels != 1:
            raise ModelError(f"{root}: the model takes {plan.num_input_channels} input channels; only "
                             "single-image models are supported")
        channels_last = dev.type == "cuda" or bool(fast_cpu)  # the layout the networks take
        nets = []
        for f, ck in zip(fold_names, ckpts):
            net = build_network(plan)
            try:
                net.load_state_dict(_plain_keys(ck["network_weights"]))
            except RuntimeError as exc:
                raise ModelError(f"{root}/fold_{f}: weights do not fit the network the plans describe "
                                 f"(custom trainer?): {str(exc).splitlines()[0]}") from None
            net.to(dev).eval()
            if dev.type == "cuda":  # (torch's Module.to overloads omit the documented memory_format keyword)
                net.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
            else:
                prepare_for_cpu(net, fast=bool(fast_cpu))
            nets.append(_compiled(net, plan, dev, default_tile_batch(dev, fast_cpu), channels_last)
                        if compile else net)
        axes = ckpts[0].get("inference_allowed_mirroring_axes")
        loaded = NnUNetModel(
            meta=nnunet_meta(plan, fold_names, checkpoint), network=nets[0], device=dev, plan=plan,
            networks=nets, folds=tuple(fold_names), mirror_axes=tuple(int(a) for a in axes or ()),
            use_mirroring=bool(use_mirroring), fast_cpu=bool(fast_cpu) and dev.type == "cpu",
            channels_last=channels_last,
            cord_labels=choice.cord_labels, lesion_labels=choice.lesion_labels,
        )
        _CACHE[key] = loaded
        return loaded
