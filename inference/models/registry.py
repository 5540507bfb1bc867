"""Model registry: a model is a folder with ``model.json`` (metadata) and its weights.

``model.json`` keys (all required unless marked optional):
  name, version              identity shown in SEG/SR and logs
  architecture               {"type": "DynUNet", ...MONAI DynUNet keyword arguments...}
  spacing_mm                 [sx, sy, sz] voxel size the network works at (model space, RAS axes)
  orientation                "RAS": model space is the input reoriented by axis flips/permutations
                             only (nibabel's closest canonical), never rotated
  normalization              "zscore" (over voxels > 0 of the resampled image)
  patch_size                 [px, py, pz] sliding-window tile
  regions                    ["cord", "lesion"]: channel 0 = cord incl. lesion, 1 = lesion
  activation                 "sigmoid" (region-based, as SCIseg)
  thresholds                 [t_cord, t_lesion]
  weights                    file name of the torch state_dict, relative to the folder
  trained                    true for real trained weights; the segment CLI refuses false
  test_time_mirroring        optional: model-space axes to mirror at inference, e.g. [0] (left-right);
                             only axes the training flipped; logits averaged over every combination
  description (optional), training (optional: recipe and metrics summary)

``builtin:NAME`` names a folder shipped in ``inference/models/NAME``.
Weights load once per process (``load_model`` caches by resolved folder and device).

An nnU-Net v2 folder (``plans.json`` + ``dataset.json``, or a dataset folder holding
TRAINER__PLANS__CONFIGURATION folders) runs with nnU-Net's own semantics
(``inference.models.nnunet``). Its settings travel inside the spec string, so the spec alone says
what runs wherever it goes (worker thread, Ray actor, health check)::

    FOLDER?configuration=3d_fullres&folds=0,1&checkpoint=checkpoint_best.pth&use_mirroring=false
           &cord_labels=1,2&lesion_labels=lesion&fast_cpu=true

Keys are NNUNET_OPTIONS, values URL-quoted, lists comma-separated; a key left out takes the
default (what nnUNetPredictor runs). ``dicom_node.config`` writes such specs from a models entry.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import torch

from inference.files import atomic_write
from inference.models.loaded import LoadedModel, pick_device  # noqa: F401 (re-exported)
from inference.models.meta import (  # noqa: F401 (re-exported: callers import them from the registry)
    BUILTIN_DIR,
    REQUIRED_KEYS,
    ModelMeta,
    mirror_axes,
    read_meta,
    resolve_folder,
)
from inference.models.nnunet_folder import is_nnunet_spec
from inference.models.spec import NNUNET_OPTIONS, ModelError, nnunet_spec, split_spec  # noqa: F401 (re-exported)
from inference.models.unet import PlainUNet, plain_unet_supported


def build_network(architecture: dict[str, Any], trainable: bool = False) -> torch.nn.Module:
    """Instantiate the network described by model.json's `architecture` block.

    For inference a plain DynUNet is our own MONAI-free copy (``inference.models.unet``: the node
    then never imports MONAI). ``trainable=True`` gives MONAI's DynUNet itself: training relies on
    its weight initialisation and resumes checkpoints with its parameter names.
    """
    arch = dict(architecture)
    kind = arch.pop("type", None)
    if kind != "DynUNet":
        raise ModelError(f"architecture type {kind!r} unsupported (DynUNet)")
    if not trainable and plain_unet_supported(arch):
        return PlainUNet(**arch)
    from monai.networks.nets import DynUNet

    return DynUNet(spatial_dims=3, **arch)


_CACHE: dict[tuple[str, str], LoadedModel] = {}
_LOCK = threading.Lock()


def load_model(spec: str | Path, device: str = "auto") -> LoadedModel:
    """Load (once per process) the model's network with its weights, in eval mode."""
    if is_nnunet_spec(spec):
        from inference.models.nnunet import load_nnunet
        path, options = split_spec(spec)
        return load_nnunet(path, device, **options)
    meta = read_meta(spec)
    dev = pick_device(device)
    key = (str(meta.folder), str(dev))
    with _LOCK:
        cached = _CACHE.get(key)
        if cached is not None:
            return cached
        net = build_network(meta.architecture)
        weights = meta.folder / meta.weights
        if not weights.is_file():
            raise ModelError(f"model {meta.name}: weights file {weights} is missing")
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated copy, another format: not torch's advice to unpickle anyway
            raise ModelError(f"model {meta.name}: weights file {weights} cannot be read as a PyTorch state "
                             f"dict ({type(exc).__name__}); copy the model folder again") from None
        try:
            if isinstance(net, PlainUNet):
                net.load_dynunet_state(state)
            else:
                net.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ModelError(f"model {meta.name}: weights in {weights} do not fit the architecture in "
                             f"model.json ({first})") from None
        net.to(dev).eval()
        loaded = LoadedModel(meta=meta, network=net, device=dev)
        _CACHE[key] = loaded
        return loaded


def save_model(folder: Path, meta: dict[str, Any], network: torch.nn.Module) -> Path:
    """Write the weights (a state_dict) and model.json, each whole or absent (`atomic_write`)."""
    folder = Path(folder)
    weights_name = meta.get("weights", "weights.pt")
    state = {k: v.detach().cpu() for k, v in network.state_dict().items()}
    atomic_write(folder / weights_name, lambda tmp: torch.save(state, tmp))
    meta = {**meta, "weights": weights_name}
    atomic_write(folder / "model.json", json.dumps(meta, indent=2) + "\n")
    return folder
