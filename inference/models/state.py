"""Can a model be loaded, and is it loaded in this process? Answered without torch.

Why without loading: the node's /health asks every 30 s for every pipeline's model; loading (or
importing torch) to answer would cost seconds and memory. Files and JSON are enough to say
whether a load would succeed, and the registries' caches say whether it already did.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, NamedTuple

from inference.models.meta import read_meta
from inference.models.nnunet_folder import SettingError, is_nnunet_spec, resolve_options
from inference.models.spec import ModelError, ModelSpec, split_spec


class ModelState(NamedTuple):
    """loadable: a load would find what it needs; loaded: this process holds it; detail: for people."""

    loadable: bool
    loaded: bool
    detail: str


def nnunet_state(spec: str) -> ModelState:
    """The state of an nnU-Net folder spec (FOLDER?key=value&...): its settings resolved against
    the folder's files as the worker's load would (JSON and file names only)."""
    path: str = ""
    options: dict[str, Any] = {}
    try:
        path, options = split_spec(spec)
        choice = resolve_options(path, options)
    except SettingError as exc:
        return ModelState(False, False, f"nnU-Net model {path}: setting {exc.key}: {exc}")
    except ModelError as exc:  # bad JSON, unsupported plans, a malformed option in the spec
        return ModelState(False, False, f"nnU-Net model {path or spec}: {exc}")
    nnunet = sys.modules.get("inference.models.nnunet")  # only if a load imported it: no torch here
    is_loaded = getattr(nnunet, "is_loaded", None)
    loaded = bool(is_loaded and is_loaded(choice, options.get("use_mirroring", True), options.get("fast_cpu", False)))
    plan = choice.plan
    return ModelState(True, loaded, f"nnU-Net {plan.dataset_name} {plan.plans_name}/{plan.configuration} "
                                    f"folds {','.join(choice.folds)} ({choice.checkpoint})")


def check_model(spec: str | Path | ModelSpec) -> ModelState:
    """The state of a model spec, without loading it.

    Loadable: its model.json and weights are there; for an nnU-Net folder, its settings fit it
    (see nnunet_state). Loaded: this process's registry holds it (loaded at start or by a job).
    """
    text = str(spec)
    if is_nnunet_spec(text):
        return nnunet_state(text)
    try:
        meta = read_meta(text)
    except ModelError as exc:
        return ModelState(False, False, str(exc))
    if not (meta.folder / meta.weights).is_file():
        return ModelState(False, False, f"model {meta.name}: weights {meta.folder / meta.weights} missing")
    registry = sys.modules.get("inference.models.registry")
    cache = getattr(registry, "_CACHE", {}) or {}
    loaded = any(key[0] == str(meta.folder) for key in cache)
    return ModelState(True, loaded, f"{meta.name} {meta.version}")
