"""inference.sct's torch reader of SCT's Keras 2 .h5 models against Keras 3 itself (the oracle), layer by layer.

Keras 3 with its torch backend loads the same files: the lesion models as they are, the centerline models from a
copy whose `Lambda` (Python 2 bytecode Keras 3 cannot run) is replaced by its equivalent, `Rescaling(1/temperature)`
(SCT's deepseg_sc/cnn_models.py: `Lambda(lambda z: z / temperature)`, temperature 1.0 in the file's closure).
Every layer's output is compared, so a failure names the first layer where the reader parts from Keras.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

# Keras picks its backend once, at its first import; the torch backend is the only one installed (test extra).
# The variable is restored at once so that no other test or subprocess sees it.
_BACKEND = os.environ.get("KERAS_BACKEND")
os.environ["KERAS_BACKEND"] = "torch"
import keras  # noqa: E402

if _BACKEND is None:
    del os.environ["KERAS_BACKEND"]
else:
    os.environ["KERAS_BACKEND"] = _BACKEND

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from inference.sct.keras_h5 import KerasModelError, load_keras_h5, read_model_info  # noqa: E402
from inference.sct.keras_layers import KerasLayerError, LayerContext, build_layer, same_padding  # noqa: E402
from tests.helpers.env import REPO, require_shared  # noqa: E402

MODELS = ("t2_ax_lesion", "t2s_lesion", "t2_ctr", "t2s_ctr")
TOLERANCE = 1e-5  # issue 18: outputs equal within 1e-5


def model_file(name: str) -> Path:
    return require_shared(f"sct-models/{name}.h5")


def edited_copy(src: Path, dst: Path, edit) -> Path:  # type: ignore[no-untyped-def]
    """A writable copy of `src` whose model_config went through `edit(layers)`; weights unchanged."""
    shutil.copyfile(src, dst)
    with h5py.File(dst, "r+") as f:
        cfg = json.loads(f.attrs["model_config"])
        edit(cfg["config"]["layers"])
        f.attrs["model_config"] = json.dumps(cfg)
    return dst


def lambda_to_rescaling(layers: list[dict]) -> None:
    for layer in layers:
        if layer["class_name"] == "Lambda":
            temperature = layer["config"]["function"][2][0]
            layer["class_name"] = "Rescaling"
            layer["config"] = {"name": layer["config"]["name"], "scale": 1.0 / temperature, "offset": 0.0}


def keras_model(name: str, tmp_path: Path) -> keras.Model:
    path = model_file(name)
    if name.endswith("_ctr"):
        path = edited_copy(path, tmp_path / f"{name}_keras3.h5", lambda_to_rescaling)
    return keras.models.load_model(path, compile=False)


def test_keras_runs_on_torch() -> None:
    assert keras.backend.backend() == "torch"


@pytest.mark.parametrize("name", MODELS)
def test_matches_keras_layer_by_layer(name: str, tmp_path: Path) -> None:
    reference = keras_model(name, tmp_path)
    model = load_keras_h5(model_file(name))
    shape = (1 if model.info.dims == 3 else 2, *model.info.input_shape[1:])
    # standard-normal input: SCT feeds both kinds of model intensity-normalised (zero mean, unit spread) data
    x = np.random.default_rng(MODELS.index(name)).standard_normal(shape).astype(np.float32)

    layers = reference.layers[1:]
    every_output = keras.Model(reference.inputs, [layer.output for layer in layers])
    expected = [np.asarray(t.detach().cpu()) for t in every_output(x, training=False)]
    with torch.no_grad():
        got = model.intermediates(torch.from_numpy(x))
        final = model(torch.from_numpy(x)).numpy()

    assert sorted(got) == sorted(layer.name for layer in reference.layers)
    for layer, want in zip(layers, expected):
        have = got[layer.name].numpy()
        assert have.shape == want.shape, f"{name}: first difference at {layer.name}: shape {have.shape} != {want.shape}"
        # float32 sums over up to 96*27 products: relative to the layer's own magnitude
        diff = float(np.abs(have - want).max())
        bound = TOLERANCE * max(1.0, float(np.abs(want).max()))
        assert diff <= bound, f"{name}: first difference at {layer.name} ({type(layer).__name__}): {diff:.3g}"
    assert np.abs(final - expected[-1]).max() <= TOLERANCE
    np.testing.assert_array_equal(final, got[layers[-1].name].numpy())  # forward() frees tensors, same result


@pytest.mark.parametrize(("name", "dims", "data_format", "shape"), [
    ("t2_ax_lesion", 3, "channels_first", (None, 1, 48, 48, 48)),
    ("t2s_lesion", 3, "channels_first", (None, 1, 48, 48, 48)),
    ("t2_ctr", 2, "channels_last", (None, 80, 80, 1)),
    ("t2s_ctr", 2, "channels_last", (None, 80, 80, 1)),
])
def test_model_info(name: str, dims: int, data_format: str, shape: tuple) -> None:
    info = read_model_info(model_file(name))
    assert (info.name, info.dims, info.data_format, info.input_shape, info.output_shape) == (
        name, dims, data_format, shape, shape)
    assert info.keras_version == "2.0.6"


def test_temperature_is_read_from_the_lambda_closure(tmp_path: Path) -> None:
    def hotter(layers: list[dict]) -> None:
        for layer in layers:
            if layer["class_name"] == "Lambda":
                layer["config"]["function"][2] = [4.0]

    model = load_keras_h5(edited_copy(model_file("t2s_ctr"), tmp_path / "hot.h5", hotter))
    x = torch.from_numpy(np.random.default_rng(5).standard_normal((1, 80, 80, 1)).astype(np.float32))
    with torch.no_grad():
        out = model.intermediates(x)
    torch.testing.assert_close(out["lambda_1"], out["conv2d_12"] / 4.0)


def _rename_first(class_name: str, new_class: str, **config):  # type: ignore[no-untyped-def]
    def edit(layers: list[dict]) -> None:
        layer = next(layer for layer in layers if layer["class_name"] == class_name)
        layer["class_name"] = new_class
        layer["config"].update(config)
    return edit


@pytest.mark.parametrize(("edit", "layer", "words"), [
    (_rename_first("Dropout", "GaussianNoise", stddev=0.1), "dropout_1", "layer type not supported"),
    (_rename_first("Activation", "Activation", activation="tanh"), "activation_1", "activation 'tanh'"),
    (_rename_first("Conv2D", "Conv2D", padding="causal"), "conv2d_1", "padding 'causal'"),
    (_rename_first("MaxPooling2D", "MaxPooling2D", data_format="channels_first"), "max_pooling2d_1", "data_format"),
])
def test_unsupported_layers_name_file_and_layer(tmp_path: Path, edit, layer: str, words: str) -> None:  # type: ignore[no-untyped-def]
    path = edited_copy(model_file("t2_ctr"), tmp_path / "odd.h5", edit)
    with pytest.raises(KerasLayerError) as err:
        load_keras_h5(path)
    assert str(path) in str(err.value) and repr(layer) in str(err.value) and words in str(err.value)


def test_a_foreign_lambda_is_refused(tmp_path: Path) -> None:
    def other_code(layers: list[dict]) -> None:
        for layer in layers:
            if layer["class_name"] == "Lambda":
                code = layer["config"]["function"][0]
                layer["config"]["function"][0] = code.replace("\x1bS", "\x14S")  # z * temperature

    with pytest.raises(KerasLayerError, match="lambda_1.*only SCT's"):
        load_keras_h5(edited_copy(model_file("t2_ctr"), tmp_path / "mul.h5", other_code))


def test_missing_file_and_non_model_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere.h5"):
        load_keras_h5(tmp_path / "nowhere.h5")
    with h5py.File(tmp_path / "weights_only.h5", "w") as f:
        f.create_group("model_weights")
    with pytest.raises(KerasModelError, match="no 'model_config'"):
        load_keras_h5(tmp_path / "weights_only.h5")


def test_a_layer_stored_before_its_input_is_refused(tmp_path: Path) -> None:
    def swap(layers: list[dict]) -> None:
        layers[1], layers[2] = layers[2], layers[1]  # batch_normalization_1 before conv2d_1

    with pytest.raises(KerasModelError, match=r"'batch_normalization_1' reads \['conv2d_1'\] before"):
        load_keras_h5(edited_copy(model_file("t2_ctr"), tmp_path / "order.h5", swap))


@pytest.mark.parametrize(("size", "kernel", "stride", "dilation", "pads"), [
    (80, 3, 1, 1, (1, 1)), (80, 3, 1, 2, (2, 2)), (80, 3, 1, 4, (4, 4)),  # the centerline models' convolutions
    (48, 3, 1, 1, (1, 1)),
    (5, 2, 2, 1, (0, 1)), (6, 4, 2, 1, (1, 1)), (7, 4, 2, 1, (1, 2)), (8, 2, 1, 1, (0, 1)),  # TF: odd pad at the end
])
def test_same_padding_is_tensorflows(size: int, kernel: int, stride: int, dilation: int, pads: tuple) -> None:
    assert same_padding(size, kernel, stride, dilation) == pads


@pytest.mark.parametrize(("kernel", "strides", "size"), [((2, 4), (2, 2), (7, 9)), ((3, 3), (2, 1), (10, 9))])
def test_strided_same_convolution_matches_keras(kernel: tuple, strides: tuple, size: tuple) -> None:
    """The asymmetric-padding path none of SCT's four files reaches, checked against Keras directly."""
    rng = np.random.default_rng(7)
    layer = keras.layers.Conv2D(3, kernel, strides=strides, padding="same", data_format="channels_last")
    layer.build((None, *size, 2))
    weights = [rng.standard_normal(w.shape).astype(np.float32) for w in layer.get_weights()]
    layer.set_weights(weights)
    config = {"kernel_size": list(kernel), "strides": list(strides), "padding": "same", "dilation_rate": [1, 1],
              "activation": "linear", "use_bias": True, "data_format": "channels_last"}
    ctx = LayerContext("synthetic.h5", "conv", "Conv2D", 2, "channels_last")
    ours = build_layer("Conv2D", config, {"kernel": weights[0], "bias": weights[1]}, ctx)
    x = rng.standard_normal((1, *size, 2)).astype(np.float32)
    want = np.asarray(layer(x).detach().cpu())
    with torch.no_grad():
        have = torch.movedim(ours(torch.movedim(torch.from_numpy(x), -1, 1)), 1, -1).numpy()
    np.testing.assert_allclose(have, want, atol=1e-5)


def test_the_reader_needs_neither_keras_nor_tensorflow() -> None:
    """Issue 18: no TensorFlow or Keras at run time; a fresh interpreter shows what loading a model imports."""
    code = ("import sys, torch\n"
            "from inference.sct.keras_h5 import load_keras_h5\n"
            f"m = load_keras_h5({str(model_file('t2s_ctr'))!r})\n"
            "assert m(torch.zeros(1, 80, 80, 1, dtype=torch.float64)).dtype == torch.float32\n"
            "assert not any(p.requires_grad for p in m.parameters())\n"
            "bad = sorted(n for n in sys.modules if n.split('.')[0] in ('keras', 'tensorflow', 'tf_keras'))\n"
            "assert not bad, bad\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr[-2000:]
