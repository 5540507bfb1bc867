"""What a model folder says about itself: model.json (or an nnU-Net folder's JSON) read and checked,
without torch.

Why apart from the registry: the node's config check and /health must judge a model folder
without importing torch (seconds and hundreds of MB in a process that only listens); the
registry, which builds networks, re-exports everything here.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from inference.models.nnunet_folder import DEFAULT_CHECKPOINT, NnUNetPlan, is_nnunet_spec, resolve_settings
from inference.models.spec import ModelError, split_spec

BUILTIN_DIR = Path(__file__).resolve().parent
REQUIRED_KEYS = (
    "name", "version", "architecture", "spacing_mm", "orientation", "normalization",
    "patch_size", "regions", "activation", "thresholds", "weights",
)


@dataclass(frozen=True)
class ModelMeta:
    folder: Path
    name: str
    version: str
    architecture: dict[str, Any]
    spacing_mm: tuple[float, float, float]
    orientation: str
    normalization: str
    patch_size: tuple[int, int, int]
    regions: tuple[str, ...]
    activation: str
    thresholds: tuple[float, ...]
    weights: str
    trained: bool = False
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "version": self.version, "architecture": self.architecture,
            "spacing_mm": list(self.spacing_mm), "orientation": self.orientation,
            "normalization": self.normalization, "patch_size": list(self.patch_size),
            "regions": list(self.regions), "activation": self.activation,
            "thresholds": list(self.thresholds), "weights": self.weights, "trained": self.trained,
            "description": self.description, **self.extra,
        }


def resolve_folder(spec: str | Path) -> Path:
    """`builtin:NAME` -> the shipped folder; anything else is a path."""
    s = str(spec)
    folder = BUILTIN_DIR / s.split(":", 1)[1] if s.startswith("builtin:") else Path(s).expanduser()
    if not (folder / "model.json").is_file():
        raise ModelError(f"model {spec!r}: no model.json in {folder}")
    return folder.resolve()


def read_meta(spec: str | Path) -> ModelMeta:
    if is_nnunet_spec(spec):  # a bring-your-own nnU-Net v2 folder (plans.json + dataset.json)
        path, options = split_spec(spec)
        return read_nnunet_meta(path, **options)
    folder = resolve_folder(spec)
    try:
        raw = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelError(f"{folder / 'model.json'}: not valid JSON ({exc})") from None
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise ModelError(f"{folder / 'model.json'}: missing keys {', '.join(missing)}")
    if raw["orientation"] != "RAS":
        raise ModelError(f"{folder / 'model.json'}: orientation {raw['orientation']!r} unsupported (RAS)")
    if raw["normalization"] != "zscore":
        raise ModelError(f"{folder / 'model.json'}: normalization {raw['normalization']!r} unsupported (zscore)")
    known = set(REQUIRED_KEYS) | {"trained", "description"}
    mirror_axes(raw, where=str(folder / "model.json"))
    return ModelMeta(
        folder=folder, name=str(raw["name"]), version=str(raw["version"]),
        architecture=dict(raw["architecture"]),
        spacing_mm=tuple(float(v) for v in raw["spacing_mm"]),  # type: ignore[arg-type]
        orientation=raw["orientation"], normalization=raw["normalization"],
        patch_size=tuple(int(v) for v in raw["patch_size"]),  # type: ignore[arg-type]
        regions=tuple(raw["regions"]), activation=raw["activation"],
        thresholds=tuple(float(v) for v in raw["thresholds"]), weights=str(raw["weights"]),
        trained=bool(raw.get("trained", False)), description=str(raw.get("description", "")),
        extra={k: v for k, v in raw.items() if k not in known},
    )


def mirror_axes(source: "ModelMeta | Mapping[str, Any]", where: str | None = None) -> tuple[int, ...]:
    """Model-space axes (RAS: 0 = left-right) to mirror at test time, from `test_time_mirroring`.

    Why only where model.json says so: mirroring is valid only along axes the training
    augmentation flipped (the spine is left-right symmetric, not head-feet or front-back).
    """
    if isinstance(source, ModelMeta):
        raw, where = source.extra.get("test_time_mirroring", []), where or f"model {source.name}"
    else:
        raw = source.get("test_time_mirroring", [])
    if not isinstance(raw, list) or any(not isinstance(a, int) or isinstance(a, bool) or a not in (0, 1, 2)
                                        for a in raw) or len(set(raw)) != len(raw):
        raise ModelError(f"{where or 'model.json'}: test_time_mirroring {raw!r} must be a list of distinct "
                         "axes 0, 1, 2 (RAS; 0 = left-right), e.g. [0]")
    return tuple(raw)


# ------------------------------------------------------------------ nnU-Net folders (JSON only)

def nnunet_meta(plan: NnUNetPlan, folds: Sequence[str], checkpoint: str) -> ModelMeta:
    """Our ModelMeta for the folder, so logs, SEG and SR can name the model."""
    arch = plan.architecture
    return ModelMeta(
        folder=plan.folder, name=plan.dataset_name, version=f"{plan.plans_name}/{plan.configuration}",
        architecture={"type": "nnUNetv2", "network_class_name": arch.get("network_class_name")},
        spacing_mm=tuple(plan.spacing[i] for i in plan.transpose_backward)[::-1],  # type: ignore[arg-type]
        orientation=plan.image_orientation or "as-read", normalization=",".join(plan.normalization_schemes),
        patch_size=plan.patch_size,  # type: ignore[arg-type]
        regions=("cord", "lesion"), activation="sigmoid" if plan.labels.has_regions else "softmax",
        # `weights` is one file (the first fold's) so a readiness check can stat it; all are in extra
        thresholds=(0.5, 0.5), weights=f"fold_{folds[0]}/{checkpoint}", trained=True,
        description=f"nnU-Net v2 model folder {plan.folder}",
        extra={"format": "nnunetv2", "configuration": plan.configuration, "folds": list(folds),
               "checkpoints": [f"fold_{f}/{checkpoint}" for f in folds]},
    )


def read_nnunet_meta(folder: str | Path, configuration: str | None = None, folds: Sequence[str | int] | None = None,
                     checkpoint: str = DEFAULT_CHECKPOINT, **_: Any) -> ModelMeta:
    """ModelMeta from the JSON files only (no checkpoint is unpickled): for listings and config checks."""
    choice = resolve_settings(folder, configuration, folds, checkpoint)
    return nnunet_meta(choice.plan, choice.folds, checkpoint)
