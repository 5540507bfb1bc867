"""Read SCT's Keras 2 HDF5 models (architecture from `model_config`, weights from `model_weights`) into torch.

SCT 5.x ran its lesion (`t2_ax_lesion`, `t2s_lesion`) and centerline (`t2_ctr`, `t2s_ctr`) models with Keras 2.0.6
on TensorFlow. The node must not depend on TensorFlow or Keras, so the functional graph stored in the file is
rebuilt here from torch layers (`keras_layers`) and the weights are read with h5py.

The module takes and returns tensors in the layout the Keras model did, the one its `data_format` says: the 3D
lesion models are channels_first (N, 1, D, H, W); the 2D centerline models are channels_last (N, H, W, 1).
`read_model_info` says which, and the shapes (propagated on torch's meta device, no arithmetic).

    model = load_keras_h5(sct_dir / "t2_ax_lesion.h5")       # eval mode, float32, CPU, no autograd
    with torch.no_grad():
        probabilities = model(patches)                       # (N, 1, 48, 48, 48) -> (N, 1, 48, 48, 48)
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import nn

from inference.sct.keras_layers import KerasLayerError, LayerContext, build_layer


class KerasModelError(ValueError):
    """The file is not a Keras 2 model this reader can run; the message names the file and what to fix."""


@dataclass(frozen=True)
class KerasModelInfo:
    """What a caller needs to feed the model: layout, shapes (None = any size), and where it came from."""

    path: str
    name: str  # the file's stem, e.g. "t2_ax_lesion"
    keras_version: str
    dims: int  # spatial dimensions: 2 or 3
    data_format: str  # "channels_first" or "channels_last", the layout of input and output tensors
    input_shape: tuple[int | None, ...]  # as stored, batch first (None)
    output_shape: tuple[int | None, ...]
    layer_types: tuple[str, ...]  # the distinct Keras layer classes, in graph order

    @property
    def channels_last(self) -> bool:
        return self.data_format == "channels_last"


@dataclass(frozen=True)
class _Node:
    name: str
    class_name: str
    config: Mapping[str, Any]
    inputs: tuple[str, ...]


def _attr_str(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _read_graph(f: h5py.File, path: str) -> tuple[list[_Node], str, str]:
    """The layers in stored (topological) order, the input layer's name and the output layer's name."""
    if "model_config" not in f.attrs:
        raise KerasModelError(f"{path}: no 'model_config' attribute; not a Keras HDF5 model saved with model.save()")
    backend = _attr_str(f.attrs.get("backend", "tensorflow"))
    if backend != "tensorflow":
        # Theano stored convolution kernels flipped; these weights would give wrong results.
        raise KerasModelError(f"{path}: saved with the {backend!r} backend; only TensorFlow-saved models are read")
    cfg = json.loads(_attr_str(f.attrs["model_config"]))
    if cfg.get("class_name") not in ("Model", "Functional") or not isinstance(cfg.get("config"), dict):
        raise KerasModelError(f"{path}: model class {cfg.get('class_name')!r}; only functional models are read")
    body = cfg["config"]
    nodes = []
    for layer in body["layers"]:
        inbound = layer.get("inbound_nodes", [])
        if len(inbound) > 1:
            raise KerasModelError(f"{path}: layer {layer['name']!r} is shared ({len(inbound)} calls); not supported")
        inputs = tuple(str(entry[0]) for entry in inbound[0]) if inbound else ()
        nodes.append(_Node(str(layer["name"]), str(layer["class_name"]), layer["config"], inputs))
    if len(body["input_layers"]) != 1 or len(body["output_layers"]) != 1:
        raise KerasModelError(f"{path}: {len(body['input_layers'])} inputs and {len(body['output_layers'])} "
                              "outputs; only single-input, single-output models are read")
    seen: set[str] = set()
    for node in nodes:  # the graph is run in stored order, so each layer's inputs must come before it
        late = [name for name in node.inputs if name not in seen]
        if late:
            raise KerasModelError(f"{path}: layer {node.name!r} reads {late} before they are defined")
        seen.add(node.name)
    output = str(body["output_layers"][0][0])
    if output not in seen:
        raise KerasModelError(f"{path}: output layer {output!r} is not among the layers")
    return nodes, str(body["input_layers"][0][0]), output


def _layer_weights(f: h5py.File, name: str) -> dict[str, np.ndarray]:
    """A layer's saved arrays keyed by short name ('kernel', 'bias', 'gamma', 'moving_mean', ...)."""
    if "model_weights" not in f or name not in f["model_weights"]:
        return {}
    group = f["model_weights"][name]
    out = {}
    for raw in group.attrs.get("weight_names", []):
        full = _attr_str(raw)
        short = full.rsplit("/", 1)[-1].split(":", 1)[0]
        out[short] = np.asarray(group[full], dtype=np.float32)
    return out


def _geometry(nodes: list[_Node], input_name: str, path: str) -> tuple[tuple[int | None, ...], int, str]:
    first = next(n for n in nodes if n.name == input_name)
    shape = first.config.get("batch_input_shape")
    if first.class_name != "InputLayer" or not isinstance(shape, list) or len(shape) not in (4, 5):
        raise KerasModelError(f"{path}: input layer {input_name!r} has no 4D/5D batch_input_shape ({shape!r})")
    # the first layer that states a layout sets the model's; build_layer names any layer that disagrees
    formats = [str(n.config["data_format"]) for n in nodes if "data_format" in n.config]
    if not formats:
        raise KerasModelError(f"{path}: no layer states a data_format; the tensor layout is unknown")
    return tuple(None if s is None else int(s) for s in shape), len(shape) - 2, formats[0]


class KerasGraph(nn.Module):
    """A Keras functional model run in torch; channels-first inside, the model's own layout outside."""

    def __init__(self, info: KerasModelInfo, nodes: list[_Node], layers: Mapping[str, nn.Module],
                 input_name: str, output_name: str) -> None:
        super().__init__()
        self.info = info
        self.layers = nn.ModuleDict(dict(layers))
        self._nodes = [(n.name, n.inputs) for n in nodes if n.name != input_name]
        self._last_use = {src: name for name, inputs in self._nodes for src in inputs}  # output -> its last reader
        self._input = input_name
        self._output = output_name

    def _to_inner(self, x: torch.Tensor) -> torch.Tensor:
        return torch.movedim(x, -1, 1) if self.info.channels_last else x

    def _to_outer(self, x: torch.Tensor) -> torch.Tensor:
        return torch.movedim(x, 1, -1) if self.info.channels_last else x

    def _run(self, x: torch.Tensor, keep_all: bool) -> dict[str, torch.Tensor]:
        if x.dim() != self.info.dims + 2:
            raise ValueError(f"{self.info.name}: expected a {self.info.dims + 2}D tensor in {self.info.data_format} "
                             f"layout like {self.info.input_shape}, got shape {tuple(x.shape)}")
        values = {self._input: self._to_inner(x.to(torch.float32))}  # the weights are float32
        for name, inputs in self._nodes:
            values[name] = self.layers[name](*(values[i] for i in inputs))
            if not keep_all:  # drop each output after its last reader: a 48^3 patch keeps a few maps, not all
                for src in inputs:
                    if self._last_use.get(src) == name and src != self._output:
                        del values[src]
        return values

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._to_outer(self._run(x, keep_all=False)[self._output])

    def intermediates(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every layer's output, in the model's own layout, keyed by Keras layer name (to find where results part)."""
        return {name: self._to_outer(v) for name, v in self._run(x, keep_all=True).items()}


def _build(path: Path | str) -> KerasGraph:
    path_str = str(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"Keras model file not found: {path_str}")
    with h5py.File(path_str, "r") as f:
        nodes, input_name, output_name = _read_graph(f, path_str)
        input_shape, dims, data_format = _geometry(nodes, input_name, path_str)
        keras_version = _attr_str(f.attrs.get("keras_version", "unknown"))
        layers: dict[str, nn.Module] = {}
        for node in nodes:
            if node.name == input_name:
                continue
            ctx = LayerContext(path_str, node.name, node.class_name, dims, data_format)
            layers[node.name] = build_layer(node.class_name, node.config, _layer_weights(f, node.name), ctx)
    types = tuple(dict.fromkeys(n.class_name for n in nodes))
    info = KerasModelInfo(path_str, Path(path).stem, keras_version, dims, data_format, input_shape, (), types)
    graph = KerasGraph(info, nodes, layers, input_name, output_name)
    graph.requires_grad_(False)  # inference only: a caller that forgets no_grad() builds no autograd graph
    graph.info = _with_output_shape(graph)
    return graph.eval()


def _with_output_shape(graph: KerasGraph) -> KerasModelInfo:
    """Shapes propagated on torch's meta device (no arithmetic); a free spatial size is probed with 64."""
    info = graph.info
    probe = [1] + [64 if s is None else s for s in info.input_shape[1:]]
    with torch.no_grad():
        out = copy.deepcopy(graph).to("meta")(torch.zeros(probe, device="meta"))
    # the layout's channel axis keeps its size; a spatial axis whose input size is free has a free output size
    channel = -1 if info.channels_last else 1
    shape: list[int | None] = [None]
    for axis, (size_in, size_out) in enumerate(zip(info.input_shape[1:], out.shape[1:]), start=1):
        free = size_in is None and axis != channel % len(probe)
        shape.append(None if free else int(size_out))
    return KerasModelInfo(info.path, info.name, info.keras_version, info.dims, info.data_format, info.input_shape,
                          tuple(shape), info.layer_types)


def load_keras_h5(path: Path | str) -> KerasGraph:
    """The model in a Keras 2 .h5 file as a torch module: eval mode, float32, on CPU.

    Input and output are in the layout the file stores (`.info.data_format`). Raises KerasLayerError naming the
    file and layer for any layer type or option outside what SCT's four models use.
    """
    return _build(path)


def read_model_info(path: Path | str) -> KerasModelInfo:
    """Layout and shapes of the model in `path` (the weights are read too, so a broken file fails here)."""
    return _build(path).info


__all__ = ["KerasGraph", "KerasLayerError", "KerasModelError", "KerasModelInfo", "load_keras_h5", "read_model_info"]
