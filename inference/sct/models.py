"""SCT's lesion models by name: ``sct:t2_ax_lesion`` and ``sct:t2s_lesion``, found in a site's SCT data.

Why names, not paths: the .h5 files carry no licence of their own, so they are never shipped
with the node; a site points it at the copy its Spinal Cord Toolbox installation holds. A name
needs two files, the 3D lesion network and the 2D centerline network of its contrast:

    sct:t2_ax_lesion -> t2_ax_lesion.h5 + t2_ctr.h5
    sct:t2s_lesion   -> t2s_lesion.h5   + t2s_ctr.h5

Each is looked for in every given folder and in its ``deepseg_lesion_models/`` and
``deepseg_sc_models/`` subfolders, so ``$SCT_DIR/data`` works as it is installed. With no folder
given, ``$SCT_DIR/data`` is used when SCT_DIR is set.
"""
from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from inference.model_identity import ModelIdentity
from inference.models.spec import ModelError
from inference.sct.params import CONTRASTS, Contrast
from inference.sct.patches import Network

if TYPE_CHECKING:
    import torch

PREFIX = "sct:"
NAMES: dict[str, str] = {"sct:t2_ax_lesion": "t2_ax", "sct:t2s_lesion": "t2s"}  # name -> SCT's -c contrast
SUBFOLDERS = ("", "deepseg_lesion_models", "deepseg_sc_models")


def is_sct_spec(spec: object) -> bool:
    """A model spec that names one of SCT's models (``sct:...``)."""
    return str(spec).startswith(PREFIX)


def contrast_of(name: str) -> Contrast:
    """The SCT contrast of a model name, or ModelError listing the names there are."""
    if name not in NAMES:
        raise ModelError(f"unknown SCT model {name!r}; known: {', '.join(NAMES)}")
    return CONTRASTS[NAMES[name]]


def default_data_dirs() -> list[Path]:
    """``$SCT_DIR/data`` when SCT_DIR is set (where SCT installs its models), else none."""
    sct_dir = os.environ.get("SCT_DIR", "")
    return [Path(sct_dir) / "data"] if sct_dir else []


def find_file(file: str, folders: Sequence[str | Path]) -> Path:
    """The first ``folder[/subfolder]/file`` that exists, or ModelError naming the file and where it looked."""
    if not folders:
        raise ModelError(f"no folder to look for SCT's {file} in: pass the folder holding SCT's model files "
                         "(e.g. $SCT_DIR/data) or set SCT_DIR")
    looked = []
    for folder in folders:
        for sub in SUBFOLDERS:
            path = Path(folder) / sub / file
            if path.is_file():
                return path
            looked.append(str(path.parent))
    raise ModelError(f"SCT model file {file} not found in {', '.join(dict.fromkeys(looked))}")


def model_files(name: str, folders: Sequence[str | Path]) -> tuple[Path, Path]:
    """(lesion .h5, centerline .h5) of an SCT model name."""
    contrast = contrast_of(name)
    return find_file(contrast.lesion_file, folders), find_file(contrast.ctr_file, folders)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def identity(name: str, lesion_file: Path, ctr_file: Path) -> ModelIdentity:
    """Name, version (the files' SHA-256: SCT's model files carry no version) and training set."""
    contrast = contrast_of(name)
    version = f"sha256:{_sha256(lesion_file)[:12]}"
    description = (f"Spinal Cord Toolbox sct_deepseg_lesion -c {contrast.name} ({lesion_file.name}, centerline "
                   f"{ctr_file.name} sha256:{_sha256(ctr_file)[:12]}), trained on {contrast.training}")
    return ModelIdentity(name=name, version=version, description=description)


@dataclass(frozen=True)
class SctLesionModel:
    """An SCT lesion model ready to run: both networks, its contrast's constants and who it is."""

    contrast: Contrast
    lesion_net: Network
    ctr_net: Network
    identity: ModelIdentity
    files: tuple[Path, Path]


def as_network(module: "torch.nn.Module") -> Network:
    """A torch module (eval, float32) as numpy in, numpy out, without autograd."""
    import torch

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).float().numpy()

    return run


_CACHE: dict[tuple[str, Path, Path], SctLesionModel] = {}
_LOCK = threading.Lock()


def load_sct_model(name: str, folders: Sequence[str | Path] | None = None) -> SctLesionModel:
    """Both networks of ``name`` read from SCT's .h5 files (once per process and pair of files)."""
    lesion_file, ctr_file = model_files(name, default_data_dirs() if folders is None else folders)
    key = (name, lesion_file.resolve(), ctr_file.resolve())
    with _LOCK:
        if key not in _CACHE:
            from inference.sct.keras_h5 import load_keras_h5

            _CACHE[key] = SctLesionModel(contrast=contrast_of(name),
                                         lesion_net=as_network(load_keras_h5(lesion_file)),
                                         ctr_net=as_network(load_keras_h5(ctr_file)),
                                         identity=identity(name, lesion_file, ctr_file),
                                         files=(lesion_file, ctr_file))
        return _CACHE[key]

