"""Our MONAI-free U-Net equals MONAI's DynUNet on the same weights (the shipped model and random ones)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from monai.networks.nets import DynUNet

from inference.models.registry import BUILTIN_DIR, build_network
from inference.models.unet import PlainUNet, plain_unet_supported


def _pair(arch: dict) -> tuple[torch.nn.Module, PlainUNet]:
    ref = DynUNet(spatial_dims=3, **arch).eval()
    ours = build_network({"type": "DynUNet", **arch})
    assert isinstance(ours, PlainUNet)
    return ref, ours.eval()


def test_shipped_model_gives_dynunets_logits() -> None:
    meta = json.loads((BUILTIN_DIR / "spinecord-t2" / "model.json").read_text())
    arch = {k: v for k, v in meta["architecture"].items() if k != "type"}
    ref, ours = _pair(arch)
    state = torch.load(Path(BUILTIN_DIR / "spinecord-t2" / meta["weights"]), map_location="cpu", weights_only=True)
    ref.load_state_dict(state)
    ours.load_dynunet_state(state)
    x = torch.randn(1, 1, 32, 48, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(ours(x), ref(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", [
    # anisotropic strides and kernels, three levels: names and shapes must still line up with DynUNet's
    {"in_channels": 2, "out_channels": 3, "kernel_size": [[3, 3, 1], 3, 3], "strides": [1, [2, 2, 1], 2],
     "upsample_kernel_size": [[2, 2, 1], 2], "filters": [4, 8, 16], "norm_name": "instance", "res_block": False},
])
def test_random_weights_equal_dynunet(arch: dict) -> None:
    ref, ours = _pair(arch)
    torch.manual_seed(1)
    for p in ref.parameters():
        torch.nn.init.normal_(p, std=0.2)
    ours.load_dynunet_state(ref.state_dict())
    x = torch.randn(1, arch["in_channels"], 16, 24, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.allclose(ours(x), ref(x), atol=1e-5, rtol=0)


def test_other_dynunets_still_use_monai() -> None:
    arch = {"in_channels": 1, "out_channels": 2, "kernel_size": [3, 3, 3], "strides": [1, 2, 2],
            "upsample_kernel_size": [2, 2], "filters": [4, 8, 16], "norm_name": "instance", "res_block": True}
    assert not plain_unet_supported(arch)
    assert isinstance(build_network({"type": "DynUNet", **arch}), DynUNet)
