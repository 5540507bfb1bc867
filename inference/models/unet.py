"""The shipped models' network, in plain torch: a U-Net with the parameter names of MONAI's DynUNet.

Why not MONAI's class at run time: ``import monai`` pulls in most of MONAI and scipy.signal, about
210 MB of resident memory and 4 s of start-up in the node, for one class. The models we train are
DynUNets without residual blocks, deep supervision or dropout; this module builds exactly that
network, so the state dicts we saved load unchanged (its extra ``skip_layers.*`` names are aliases
of the same tensors in DynUNet and are dropped here). ``tests/unit/test_unet.py`` checks the output
against MONAI's DynUNet (a training dependency) on the same weights.

Each level: conv (stride s) -> instance norm -> leaky ReLU (0.01) -> conv -> instance norm -> leaky
ReLU; on the way up, a transposed conv (kernel = stride, no bias), concatenated with the skip
(upsampled first), then the same two-conv block; a 1x1x1 conv with bias gives the logits.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

SUPPORTED_KEYS = {"in_channels", "out_channels", "kernel_size", "strides", "upsample_kernel_size", "filters",
                  "norm_name", "res_block"}


def plain_unet_supported(arch: Mapping[str, Any]) -> bool:
    """Whether ``arch`` (model.json's DynUNet keywords) is the network this module builds."""
    return (set(arch) <= SUPPORTED_KEYS and arch.get("norm_name", "instance") == "instance"
            and not arch.get("res_block", False) and "filters" in arch
            and list(arch["upsample_kernel_size"]) == list(arch["strides"])[1:])


class ConvBlock(nn.Module):
    """Two 3D convolutions, each followed by instance norm and leaky ReLU (DynUNet's UnetBasicBlock)."""

    def __init__(self, cin: int, cout: int, kernel: int | Sequence[int], stride: int | Sequence[int]) -> None:
        super().__init__()
        k = _triple(kernel)
        pad = ((k[0] - 1) // 2, (k[1] - 1) // 2, (k[2] - 1) // 2)
        self.conv1 = _Wrapped(nn.Conv3d(cin, cout, k, stride=_triple(stride), padding=pad, bias=False))
        self.conv2 = _Wrapped(nn.Conv3d(cout, cout, k, stride=1, padding=pad, bias=False))
        self.norm1 = nn.InstanceNorm3d(cout)
        self.norm2 = nn.InstanceNorm3d(cout)
        self.lrelu = nn.LeakyReLU(0.01, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.lrelu(self.norm1(self.conv1(x)))
        return self.lrelu(self.norm2(self.conv2(x)))


class UpBlock(nn.Module):
    """Transposed conv up, concatenation with the skip, two convolutions (DynUNet's UnetUpBlock)."""

    def __init__(self, cin: int, cout: int, kernel: int | Sequence[int], up: int | Sequence[int]) -> None:
        super().__init__()
        self.transp_conv = _Wrapped(nn.ConvTranspose3d(cin, cout, _triple(up), stride=_triple(up), bias=False))
        self.conv_block = ConvBlock(2 * cout, cout, kernel, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv_block(torch.cat((self.transp_conv(x), skip), dim=1))


class PlainUNet(nn.Module):
    """The DynUNet of model.json (no residual blocks, no deep supervision), MONAI-free."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Sequence[int | Sequence[int]],
                 strides: Sequence[int | Sequence[int]], upsample_kernel_size: Sequence[int | Sequence[int]],
                 filters: Sequence[int], norm_name: str = "instance", res_block: bool = False) -> None:
        super().__init__()
        if norm_name != "instance" or res_block:
            raise ValueError("PlainUNet builds instance-norm basic blocks only (norm_name: instance, res_block: false)")
        n = len(strides)
        if not (len(kernel_size) == n == len(filters) and len(upsample_kernel_size) == n - 1):
            raise ValueError(f"kernel_size, strides and filters need one entry per level ({n}), "
                             f"upsample_kernel_size one fewer; got {len(kernel_size)}, {len(filters)}, "
                             f"{len(upsample_kernel_size)}")
        self.input_block = ConvBlock(in_channels, filters[0], kernel_size[0], strides[0])
        self.downsamples = nn.ModuleList(ConvBlock(filters[i - 1], filters[i], kernel_size[i], strides[i])
                                         for i in range(1, n - 1))
        self.bottleneck = ConvBlock(filters[n - 2], filters[n - 1], kernel_size[n - 1], strides[n - 1])
        self.upsamples = nn.ModuleList(UpBlock(filters[i], filters[i - 1], kernel_size[i], upsample_kernel_size[i - 1])
                                       for i in range(n - 1, 0, -1))
        self.output_block = _Wrapped(_Wrapped(nn.Conv3d(filters[0], out_channels, 1, bias=True)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.input_block(x)]
        for block in self.downsamples:
            skips.append(block(skips[-1]))
        out = self.bottleneck(skips[-1])
        for up, skip in zip(self.upsamples, reversed(skips)):
            out = up(out, skip)
        return self.output_block(out)

    def load_dynunet_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load a state dict saved from MONAI's DynUNet: its ``skip_layers.*`` aliases are dropped."""
        self.load_state_dict({k: v for k, v in state.items() if not k.startswith("skip_layers.")})


class _Wrapped(nn.Module):
    """One layer under ``.conv``, so parameter names read ``...conv1.conv.weight`` as in DynUNet
    (its output block nests twice: ``output_block.conv.conv.weight``)."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _triple(v: int | Sequence[int]) -> tuple[int, int, int]:
    t = (v, v, v) if isinstance(v, int) else tuple(int(x) for x in v)
    if len(t) != 3:
        raise ValueError(f"expected one int or three, got {v!r}")
    return t[0], t[1], t[2]
