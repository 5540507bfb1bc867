"""Torch equivalents of the Keras 2 layers SCT's lesion and centerline models use, built from a layer's config.

Each builder takes the layer's Keras config and its saved weights and returns a torch module that computes what
Keras 2.0.6 (TensorFlow backend) computed at inference. Tensors inside are always channels-first (torch's own
layout); the graph in `keras_h5` converts a channels_last model's input and output. Only the layer types and
options found in SCT's four files are supported: anything else raises, because a silently different layer would
give plausible but wrong lesions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class KerasLayerError(ValueError):
    """A layer this reader cannot reproduce exactly; the message names the file and the layer."""


@dataclass(frozen=True)
class LayerContext:
    """What a builder needs besides the layer's own config: where errors point, and the model's geometry."""

    path: str
    name: str
    class_name: str
    dims: int  # spatial dimensions, 2 or 3
    data_format: str  # "channels_first" or "channels_last", one for the whole model

    def error(self, what: str) -> KerasLayerError:
        return KerasLayerError(f"{self.path}: layer {self.name!r} ({self.class_name}): {what}")


Weights = Mapping[str, np.ndarray]


def _activation(name: str, ctx: LayerContext) -> Callable[[torch.Tensor], torch.Tensor]:
    if name == "linear":
        return _identity
    if name == "relu":
        return F.relu
    if name == "sigmoid":
        return torch.sigmoid
    raise ctx.error(f"activation {name!r} is not supported (supported: linear, relu, sigmoid)")


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow's 'same' padding for one axis: output ceil(size/stride), the odd pixel of padding at the end."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _ints(value: Any, ctx: LayerContext, key: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * ctx.dims
    if isinstance(value, Sequence) and len(value) == ctx.dims and all(isinstance(v, int) for v in value):
        return tuple(value)
    raise ctx.error(f"{key}={value!r} is not {ctx.dims} integers")


def _check_format(config: Mapping[str, Any], ctx: LayerContext) -> None:
    fmt = config.get("data_format", ctx.data_format)
    if fmt != ctx.data_format:
        raise ctx.error(f"data_format {fmt!r} differs from the model's {ctx.data_format!r}")


def _check_dims(ctx: LayerContext, dims: int) -> None:
    if ctx.dims != dims:
        raise ctx.error(f"a {dims}D layer in a {ctx.dims}D model")


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _kernel_to_torch(kernel: np.ndarray, dims: int) -> torch.Tensor:
    """Keras kernels are (*spatial, a, b); torch wants (b, a, *spatial) for both Conv and ConvTranspose."""
    order = (dims + 1, dims, *range(dims))
    return _tensor(kernel.transpose(order))


def _weight(weights: Weights, key: str, ctx: LayerContext) -> np.ndarray:
    if key not in weights:
        raise ctx.error(f"weight {key!r} missing from the file (found: {sorted(weights)})")
    return weights[key]


def _conv_state(conv: nn.Module, kernel: np.ndarray, weights: Weights, ctx: LayerContext) -> dict[str, torch.Tensor]:
    state = {"weight": _kernel_to_torch(kernel, ctx.dims)}
    if getattr(conv, "bias", None) is not None:
        state["bias"] = _tensor(_weight(weights, "bias", ctx))
    return state


def _load(module: nn.Module, state: Mapping[str, torch.Tensor], ctx: LayerContext) -> None:
    """Copy saved arrays into a torch layer; a shape mismatch names the Keras layer rather than torch's field."""
    try:
        module.load_state_dict(dict(state), strict=True)
    except RuntimeError as exc:
        raise ctx.error(f"saved weights do not fit the layer's config: {exc}") from exc


class Conv(nn.Module):
    """Conv2D / Conv3D with TensorFlow's 'same' or 'valid' padding and the layer's own activation."""

    def __init__(self, config: Mapping[str, Any], weights: Weights, ctx: LayerContext) -> None:
        super().__init__()
        kernel = _weight(weights, "kernel", ctx)
        if kernel.ndim != ctx.dims + 2:
            raise ctx.error(f"kernel of shape {kernel.shape} for a {ctx.dims}D convolution")
        self.kernel_size = _ints(config["kernel_size"], ctx, "kernel_size")
        self.strides = _ints(config.get("strides", 1), ctx, "strides")
        self.dilation = _ints(config.get("dilation_rate", 1), ctx, "dilation_rate")
        if kernel.shape[: ctx.dims] != self.kernel_size:
            raise ctx.error(f"kernel shape {kernel.shape} does not match kernel_size {self.kernel_size}")
        padding = config.get("padding", "valid")
        if padding not in ("same", "valid"):
            raise ctx.error(f"padding {padding!r} is not supported")
        self.same = padding == "same"
        in_ch, out_ch = int(kernel.shape[-2]), int(kernel.shape[-1])
        self.act = _activation(config.get("activation", "linear"), ctx)
        # A stride-1 'same' convolution pads by a fixed amount whatever the input size; when it splits evenly
        # torch's own padding does it without a copy. Otherwise padding is computed per input in forward().
        static: tuple[int, ...] = (0,) * ctx.dims
        self.dynamic = False
        if self.same:
            totals = [(k - 1) * d for k, d in zip(self.kernel_size, self.dilation)]
            if all(s == 1 for s in self.strides) and all(t % 2 == 0 for t in totals):
                static = tuple(t // 2 for t in totals)
            else:
                self.dynamic = True
        conv_cls = nn.Conv2d if ctx.dims == 2 else nn.Conv3d
        geometry: dict[str, Any] = {"kernel_size": self.kernel_size, "stride": self.strides, "padding": static,
                                    "dilation": self.dilation}
        self.conv = conv_cls(in_ch, out_ch, bias=bool(config.get("use_bias", True)), **geometry)
        _load(self.conv, _conv_state(self.conv, kernel, weights, ctx), ctx)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dynamic:
            pads: list[int] = []
            # F.pad lists the last axis first
            for size, k, s, d in reversed(list(zip(x.shape[2:], self.kernel_size, self.strides, self.dilation))):
                pads.extend(same_padding(int(size), k, s, d))
            x = F.pad(x, pads)
        return self.act(self.conv(x))


class ConvTranspose(nn.Module):
    """Conv2DTranspose with 'valid' padding (the only kind SCT's centerline models use)."""

    def __init__(self, config: Mapping[str, Any], weights: Weights, ctx: LayerContext) -> None:
        super().__init__()
        _check_dims(ctx, 2)
        if config.get("padding", "valid") != "valid":
            raise ctx.error(f"padding {config.get('padding')!r} is not supported (only 'valid')")
        if _ints(config.get("dilation_rate", 1), ctx, "dilation_rate") != (1,) * ctx.dims:
            raise ctx.error("dilated transposed convolution is not supported")
        if config.get("output_padding") is not None:
            raise ctx.error("output_padding is not supported")
        kernel = _weight(weights, "kernel", ctx)  # (kh, kw, out, in)
        size = _ints(config["kernel_size"], ctx, "kernel_size")
        strides = _ints(config.get("strides", 1), ctx, "strides")
        geometry: dict[str, Any] = {"kernel_size": size, "stride": strides}
        self.conv = nn.ConvTranspose2d(int(kernel.shape[-1]), int(kernel.shape[-2]),
                                       bias=bool(config.get("use_bias", True)), **geometry)
        self.act = _activation(config.get("activation", "linear"), ctx)
        _load(self.conv, _conv_state(self.conv, kernel, weights, ctx), ctx)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


def _channel_axis(axis: int, ctx: LayerContext) -> int:
    """The torch (channels-first) axis of a Keras axis given in the model's own layout."""
    rank = ctx.dims + 2
    if not -rank <= axis < rank:
        raise ctx.error(f"axis {axis} out of range for rank {rank}")
    axis %= rank
    if ctx.data_format == "channels_first" or axis == 0:
        return axis
    return 1 if axis == rank - 1 else axis + 1


def batch_norm(config: Mapping[str, Any], weights: Weights, ctx: LayerContext) -> nn.Module:
    """Keras BatchNormalization at inference: moving statistics, the layer's epsilon (momentum is training-only)."""
    if _channel_axis(int(config.get("axis", -1)), ctx) != 1:
        raise ctx.error(f"normalisation over axis {config.get('axis')} is not the channel axis")
    mean = _weight(weights, "moving_mean", ctx)
    n = int(mean.shape[0])
    gamma = weights["gamma"] if config.get("scale", True) else np.ones(n, np.float32)
    beta = weights["beta"] if config.get("center", True) else np.zeros(n, np.float32)
    if config.get("scale", True) and "gamma" not in weights or config.get("center", True) and "beta" not in weights:
        raise ctx.error(f"gamma/beta missing from the file (found: {sorted(weights)})")
    bn_cls = nn.BatchNorm2d if ctx.dims == 2 else nn.BatchNorm3d
    bn = bn_cls(n, eps=float(config.get("epsilon", 1e-3)))
    state = {"weight": _tensor(gamma), "bias": _tensor(beta), "running_mean": _tensor(mean),
             "running_var": _tensor(_weight(weights, "moving_variance", ctx)),
             "num_batches_tracked": torch.tensor(0)}
    _load(bn, state, ctx)
    return bn.eval()


class Activation(nn.Module):
    """Keras Activation layer."""

    def __init__(self, name: str, ctx: LayerContext) -> None:
        super().__init__()
        self.name = name
        self.fn = _activation(name, ctx)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.name


class Identity(nn.Module):
    """Dropout at inference, and the input layer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def max_pool(config: Mapping[str, Any], ctx: LayerContext) -> nn.Module:
    """MaxPooling with 'valid' padding: floor division of the size, as torch's default."""
    if config.get("padding", "valid") != "valid":
        raise ctx.error(f"padding {config.get('padding')!r} is not supported (only 'valid')")
    size = _ints(config["pool_size"], ctx, "pool_size")
    strides = _ints(config.get("strides") or size, ctx, "strides")
    return nn.MaxPool2d(size, strides) if ctx.dims == 2 else nn.MaxPool3d(size, strides)


class Upsample(nn.Module):
    """UpSampling3D: each voxel repeated `size` times along each axis (Keras' repeat_elements)."""

    def __init__(self, config: Mapping[str, Any], ctx: LayerContext) -> None:
        super().__init__()
        _check_dims(ctx, 3)
        self.size = _ints(config.get("size", 2), ctx, "size")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for axis, factor in enumerate(self.size, start=2):
            if factor != 1:
                x = x.repeat_interleave(factor, dim=axis)
        return x


class Concatenate(nn.Module):
    """Concatenate along a Keras axis, translated to the channels-first layout used inside."""

    def __init__(self, config: Mapping[str, Any], ctx: LayerContext) -> None:
        super().__init__()
        self.dim = _channel_axis(int(config.get("axis", -1)), ctx)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, dim=self.dim)


class Divide(nn.Module):
    """SCT's temperature Lambda, `lambda z: z / temperature`."""

    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / self.temperature

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


# The marshalled Python 2 code object of SCT's `Lambda(lambda z: z / temperature)` (deepseg_sc/cnn_models.py,
# written with `from __future__ import division`): its 8-byte co_code is LOAD_FAST 0 (z), LOAD_DEREF 0
# (temperature), BINARY_TRUE_DIVIDE, RETURN_VALUE. A Lambda is arbitrary code; only this one is recognised.
_TEMPERATURE_CODE = b"s\x08\x00\x00\x00|\x00\x00\x88\x00\x00\x1bS"


def temperature_lambda(config: Mapping[str, Any], ctx: LayerContext) -> nn.Module:
    """Recognise SCT's temperature division among Lambda layers; any other Lambda raises."""
    function = config.get("function")
    if config.get("function_type") == "lambda" and isinstance(function, list) and len(function) == 3:
        code, _defaults, closure = function
        if (isinstance(code, str) and _TEMPERATURE_CODE in code.encode("raw_unicode_escape")
                and isinstance(closure, list) and len(closure) == 1 and isinstance(closure[0], (int, float))):
            return Divide(float(closure[0]))
    raise ctx.error("only SCT's `lambda z: z / temperature` Lambda is supported; this one holds other code")


def build_layer(class_name: str, config: Mapping[str, Any], weights: Weights, ctx: LayerContext) -> nn.Module:
    """The torch module for one Keras layer, weights loaded, in eval mode."""
    _check_format(config, ctx)
    module: nn.Module
    if class_name in ("Conv2D", "Conv3D"):
        _check_dims(ctx, int(class_name[4]))
        module = Conv(config, weights, ctx)
    elif class_name == "Conv2DTranspose":
        module = ConvTranspose(config, weights, ctx)
    elif class_name == "BatchNormalization":
        module = batch_norm(config, weights, ctx)
    elif class_name == "Activation":
        module = Activation(str(config.get("activation")), ctx)
    elif class_name in ("MaxPooling2D", "MaxPooling3D"):
        _check_dims(ctx, int(class_name[10]))
        module = max_pool(config, ctx)
    elif class_name == "UpSampling3D":
        module = Upsample(config, ctx)
    elif class_name == "Concatenate":
        module = Concatenate(config, ctx)
    elif class_name in ("Dropout", "InputLayer"):
        module = Identity()
    elif class_name == "Lambda":
        module = temperature_lambda(config, ctx)
    else:
        raise ctx.error(
            "layer type not supported (supported: Conv2D, Conv3D, Conv2DTranspose, BatchNormalization, Activation, "
            "MaxPooling2D, MaxPooling3D, UpSampling3D, Concatenate, Dropout, Lambda (SCT's temperature), InputLayer)")
    if class_name not in ("Conv2D", "Conv3D", "Conv2DTranspose", "BatchNormalization") and weights:
        raise ctx.error(f"unexpected weights {sorted(weights)}")
    return module.eval()
