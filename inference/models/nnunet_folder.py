"""The torch-free half of the nnU-Net v2 folder loader: what a folder holds and which of its
files a model entry's settings pick (plans.json, dataset.json, fold_*/ names; nothing unpickled).

Why a module of its own: ``dicom_node.config`` checks a models entry against its folder when
the config loads, and ``dicom_node.health`` judges the spec; both run in the node's process,
which never imports torch. ``inference.models.nnunet`` builds and loads the networks on top of
this (and re-exports all of it), ``inference.models.registry`` asks ``is_nnunet_spec``.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from inference.models.spec import ModelError, split_spec

DEFAULT_CONFIGURATION = "3d_fullres"
DEFAULT_CHECKPOINT = "checkpoint_final.pth"
# names (lower case) that say a label/region is the cord or a lesion, as used by SCT models
CORD_NAMES = re.compile(r"^(sc|cord|spinal[_ -]?cord|spinalcord|sc[_ -]?seg)$", re.I)
LESION_NAMES = re.compile(r"^(lesion|lesions|ms[_ -]?lesion|sci[_ -]?lesion|edema|lesion[_ -]?seg)$", re.I)


def is_nnunet_folder(folder: str | Path) -> bool:
    """A trained-model folder in nnU-Net v2's own layout (and not one of our model.json folders)."""
    f = Path(folder).expanduser()
    return (f / "plans.json").is_file() and (f / "dataset.json").is_file() and not (f / "model.json").is_file()


def is_nnunet_spec(spec: str | Path) -> bool:
    """An nnU-Net v2 trainer folder, or a dataset folder holding them (never a model.json folder)."""
    if str(spec).startswith("builtin:"):
        return False
    path, options = split_spec(spec)
    folder = Path(path).expanduser()
    if (folder / "model.json").is_file():
        return False
    if (folder / "plans.json").is_file() and (folder / "dataset.json").is_file():
        return True
    if options:  # settings only nnU-Net folders take: let its loader say what is wrong with the folder
        return True
    try:
        return folder.is_dir() and any((p / "plans.json").is_file() and len(p.name.split("__")) == 3
                                       for p in folder.iterdir())
    except OSError:
        return False


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path}: missing (an nnU-Net model folder needs plans.json and dataset.json)") from None
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: not valid JSON ({exc})") from None


# ------------------------------------------------------------------------------ labels

@dataclass(frozen=True)
class Labels:
    """nnU-Net's label semantics: region-based (sigmoid per region) or classes (softmax)."""

    names: dict[str, Any]  # dataset.json "labels", in file order
    has_regions: bool
    regions: tuple[tuple[int, ...], ...]  # foreground regions, one network output each (regions only)
    regions_class_order: tuple[int, ...]  # label written where region i > 0.5, in this order
    all_labels: tuple[int, ...]  # sorted, without the ignore label

    @property
    def num_heads(self) -> int:
        return len(self.regions) if self.has_regions else len(self.all_labels)

    @classmethod
    def from_dataset_json(cls, ds: dict[str, Any], where: str) -> "Labels":
        labels = ds.get("labels")
        if not isinstance(labels, dict) or "background" not in labels:
            raise ModelError(f"{where}: 'labels' must be a mapping with 'background': 0")
        if labels["background"] not in (0, [0]):
            raise ModelError(f"{where}: label 'background' must be 0, got {labels['background']!r}")

        def values(v: Any) -> tuple[int, ...]:
            return tuple(int(x) for x in v) if isinstance(v, (list, tuple)) else (int(v),)

        has_regions = any(isinstance(v, (list, tuple)) and len(v) > 1 for v in labels.values())
        all_labels = tuple(sorted({x for k, v in labels.items() if k != "ignore" for x in values(v)}))
        regions: list[tuple[int, ...]] = []
        order: tuple[int, ...] = ()
        if has_regions:
            for k, v in labels.items():
                vals = values(v)
                if k == "ignore" or set(vals) == {0}:
                    continue
                regions.append(vals)
            rco = ds.get("regions_class_order")
            if rco is None or len(rco) != len(regions):
                raise ModelError(f"{where}: region-based labels need 'regions_class_order' with one entry per "
                                 f"foreground region ({len(regions)}), got {rco!r}")
            order = tuple(int(c) for c in rco)
        elif all_labels != tuple(range(len(all_labels))):
            raise ModelError(f"{where}: class labels must be consecutive from 0, got {list(all_labels)}")
        return cls(names=dict(labels), has_regions=has_regions, regions=tuple(regions),
                   regions_class_order=order, all_labels=all_labels)

    def label_set(self, pattern: re.Pattern[str]) -> set[int]:
        """Integer labels whose dataset.json name matches `pattern` (a region name gives its own label:
        the one regions_class_order writes for it)."""
        out: set[int] = set()
        fg = [(k, v) for k, v in self.names.items() if k not in ("background", "ignore")]
        for k, v in fg:
            if not pattern.match(k.strip()):
                continue
            if isinstance(v, (list, tuple)) and len(v) > 1:
                out.update(int(x) for x in v)
            else:
                out.add(int(v[0] if isinstance(v, (list, tuple)) else v))
        return out


# ------------------------------------------------------------------------------ plans

@dataclass(frozen=True)
class NnUNetPlan:
    """What inference needs from plans.json + dataset.json, parsed once per folder."""

    folder: Path
    configuration: str
    spacing: tuple[float, ...]  # target spacing, in nnU-Net's transposed (z, y, x) axis order
    patch_size: tuple[int, ...]
    transpose_forward: tuple[int, ...]
    transpose_backward: tuple[int, ...]
    normalization_schemes: tuple[str, ...]
    use_mask_for_norm: tuple[bool, ...]
    intensity_properties: dict[str, dict[str, float]]
    resampling_data: tuple[str, dict[str, Any]]
    resampling_probabilities: tuple[str, dict[str, Any]]
    architecture: dict[str, Any]  # network_class_name, arch_kwargs, _kw_requires_import
    labels: Labels
    num_input_channels: int
    image_orientation: str | None  # SCT orientation code ("RPI"), or None: use the array as read
    dataset_name: str
    plans_name: str
    raw_plans: dict[str, Any] = field(repr=False, default_factory=dict)


def _resolve_configuration(plans: dict[str, Any], name: str, where: str, seen: tuple[str, ...] = ()) -> dict:
    configs = plans.get("configurations", {})
    if name not in configs:
        raise ModelError(f"{where}: configuration {name!r} not in plans (available: {', '.join(configs) or 'none'})")
    conf = dict(configs[name])
    parent = conf.get("inherits_from")
    if parent:
        if parent in seen:
            raise ModelError(f"{where}: circular 'inherits_from' {' -> '.join(seen + (name, parent))}")
        base = _resolve_configuration(plans, parent, where, seen + (name,))
        base.update(conf)
        conf = base
    return conf


def _architecture_from_old_fields(conf: dict[str, Any], where: str) -> dict[str, Any]:
    """Older nnU-Net v2 plans (before the `architecture` block) name the UNet and its sizes in
    plain fields; rebuild the same keyword arguments nnU-Net derives from them."""
    try:
        cls = conf["UNet_class_name"]
        n_stages = len(conf["n_conv_per_stage_encoder"])
        dim = len(conf["patch_size"])
        base, cap = int(conf["UNet_base_num_features"]), int(conf["unet_max_num_features"])
        kwargs = {
            "n_stages": n_stages,
            "features_per_stage": [min(base * 2 ** i, cap) for i in range(n_stages)],
            "conv_op": f"torch.nn.Conv{dim}d",
            "kernel_sizes": conf["conv_kernel_sizes"],
            "strides": conf["pool_op_kernel_sizes"],
            ("n_conv_per_stage" if cls == "PlainConvUNet" else "n_blocks_per_stage"): conf["n_conv_per_stage_encoder"],
            "n_conv_per_stage_decoder": conf["n_conv_per_stage_decoder"],
            "conv_bias": True,
            "norm_op": f"torch.nn.InstanceNorm{dim}d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None, "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
        }
    except KeyError as exc:
        raise ModelError(f"{where}: plans have neither an 'architecture' block nor the older field {exc}") from None
    if cls not in ("PlainConvUNet", "ResidualEncoderUNet"):
        raise ModelError(f"{where}: old-format plans name UNet_class_name {cls!r}; only PlainConvUNet and "
                         "ResidualEncoderUNet can be rebuilt (re-plan with a current nnU-Net)")
    return {"network_class_name": f"dynamic_network_architectures.architectures.unet.{cls}",
            "arch_kwargs": kwargs, "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}


def read_plan(folder: str | Path, configuration: str = DEFAULT_CONFIGURATION) -> NnUNetPlan:
    folder = Path(folder).expanduser().resolve()
    plans = _read_json(folder / "plans.json")
    ds = _read_json(folder / "dataset.json")
    where = str(folder / "plans.json")
    conf = _resolve_configuration(plans, configuration, where)
    if conf.get("previous_stage"):
        raise ModelError(f"{where}: configuration {configuration!r} is a cascade stage (needs "
                         f"{conf['previous_stage']!r} first); cascades are not supported, use 3d_fullres")
    arch = conf.get("architecture") or _architecture_from_old_fields(conf, where)
    channels = ds.get("channel_names") or ds.get("modality") or {}
    n_in = len(channels)
    props = plans.get("foreground_intensity_properties_per_channel",
                      plans.get("foreground_intensity_properties_by_modality", {}))
    norm = tuple(str(s) for s in conf.get("normalization_schemes", []))
    if len(norm) != n_in:
        raise ModelError(f"{where}: {len(norm)} normalization_schemes for {n_in} input channels")
    orientation = ds.get("image_orientation")
    if orientation is not None and not re.fullmatch(r"[RLAPSI]{3}", str(orientation).upper()):
        raise ModelError(
            f"{folder / 'dataset.json'}: image_orientation {orientation!r} is not a 3-letter code like 'RPI'")
    tf = tuple(int(i) for i in plans.get("transpose_forward", (0, 1, 2)))
    tb = tuple(int(i) for i in plans.get("transpose_backward", np.argsort(tf)))

    def fn(key: str) -> tuple[str, dict[str, Any]]:
        return str(conf.get(key, "resample_data_or_seg_to_shape")), dict(conf.get(key + "_kwargs", {}))

    return NnUNetPlan(
        folder=folder, configuration=configuration,
        spacing=tuple(float(s) for s in conf["spacing"]), patch_size=tuple(int(p) for p in conf["patch_size"]),
        transpose_forward=tf, transpose_backward=tb, normalization_schemes=norm,
        use_mask_for_norm=tuple(bool(b) for b in conf.get("use_mask_for_norm", [False] * n_in)),
        intensity_properties={str(k): dict(v) for k, v in props.items()},
        resampling_data=fn("resampling_fn_data"), resampling_probabilities=fn("resampling_fn_probabilities"),
        architecture=dict(arch), labels=Labels.from_dataset_json(ds, str(folder / "dataset.json")),
        num_input_channels=n_in, image_orientation=str(orientation).upper() if orientation else None,
        dataset_name=str(plans.get("dataset_name", ds.get("name", folder.parent.name))),
        plans_name=str(plans.get("plans_name", "nnUNetPlans")), raw_plans=plans,
    )


# ------------------------------------------------------------------------------ settings

def folder_configuration(folder: Path) -> str | None:
    """nnU-Net names result folders TRAINER__PLANS__CONFIGURATION; the last part is the configuration."""
    parts = folder.name.split("__")
    return parts[2] if len(parts) == 3 and parts[2] else None


def find_folds(folder: Path, checkpoint: str = DEFAULT_CHECKPOINT) -> list[str]:
    """The folds nnU-Net's predictor uses when none are named: fold_0..fold_N that hold the
    checkpoint, in numeric order, never fold_all beside them (nnU-Net's auto-detection skips it);
    fold_all alone when it is the only fold with the checkpoint (SCT ships models that way)."""
    found = [p.name[5:] for p in folder.glob("fold_*") if (p / checkpoint).is_file()]
    numbered = sorted((f for f in found if f.isdigit()), key=int)
    return numbered or (["all"] if "all" in found else [])


class SettingError(ModelError):
    """A model setting does not fit the folder; `key` names the setting (path, configuration,
    folds, checkpoint, cord_labels, lesion_labels) so the node's config can name models.NAME.KEY."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class FolderChoice:
    """A folder with its settings resolved: what runs, decided from JSON and file names only."""

    folder: Path  # the trainer folder (TRAINER__PLANS__CONFIGURATION)
    plan: NnUNetPlan
    folds: tuple[str, ...]
    checkpoint: str
    cord_labels: frozenset[int]  # cord including lesion
    lesion_labels: frozenset[int]


def trainer_folders(root: Path) -> list[Path]:
    """TRAINER__PLANS__CONFIGURATION folders (with plans.json and dataset.json) inside a dataset folder."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and folder_configuration(p) and is_nnunet_folder(p))


def _pick_folder(root: Path, configuration: str | None) -> Path:
    """`root` is a trainer folder, or a dataset folder holding one per configuration."""
    if is_nnunet_folder(root):
        own = folder_configuration(root)
        if configuration and own and configuration != own:
            raise SettingError("configuration", f"{configuration!r}, but {root} is the {own!r} folder; set "
                               f"configuration: {own} (or leave it empty), or point path at the dataset folder")
        return root
    if not root.exists():
        raise SettingError("path", f"{root} does not exist")
    subs = trainer_folders(root)
    if not subs:
        raise SettingError("path", f"{root} is not an nnU-Net v2 trained-model folder (plans.json, dataset.json, "
                           "fold_*/) nor a dataset folder holding TRAINER__PLANS__CONFIGURATION folders")
    want = configuration or DEFAULT_CONFIGURATION
    match = [p for p in subs if folder_configuration(p) == want]
    names = ", ".join(p.name for p in subs)
    if not match:
        raise SettingError("configuration", f"{want!r}: no {want} folder in {root} (found: {names})")
    if len(match) > 1:
        raise SettingError("path", f"{root} holds several {want} folders ({', '.join(p.name for p in match)}); "
                           "point path at the one to use")
    return match[0]


def _label_values(spec: Sequence[int | str], labels: Labels, key: str, where: str) -> set[int]:
    """Integer labels for `spec`: integers as they are, names looked up in dataset.json's labels
    (a region name gives every label in it)."""
    fg_names = [k for k in labels.names if k not in ("background", "ignore")]
    valid = set(labels.all_labels) - {0}
    out: set[int] = set()
    for item in spec:
        if isinstance(item, bool):
            raise SettingError(key, f"{item!r} is not a label (an integer or a name from {where})")
        if isinstance(item, int) or (isinstance(item, str) and item.strip().isdigit()):
            value = int(item)
            if value not in valid:
                raise SettingError(key, f"label {value} is not a foreground label of {where} "
                                   f"(labels: {sorted(valid)}, names: {fg_names})")
            out.add(value)
        elif isinstance(item, str) and item in fg_names:
            out |= labels.label_set(re.compile(f"^{re.escape(item)}$"))
        else:
            raise SettingError(key, f"{item!r} is neither a label number nor a label name of {where} "
                               f"(names: {fg_names})")
    return out


def resolve_settings(path: str | Path, configuration: str | None = None, folds: Sequence[str | int] | None = None,
                     checkpoint: str = DEFAULT_CHECKPOINT, cord_labels: Sequence[int | str] | None = None,
                     lesion_labels: Sequence[int | str] | None = None) -> FolderChoice:
    """Check a folder's settings against its files (JSON and file names; nothing is unpickled).

    `configuration`: None/"" = the trainer folder's own, or 3d_fullres in a dataset folder.
    `folds`: None/[] = what nnU-Net's predictor uses (numbered folds; fold_all only when alone).
    `cord_labels` / `lesion_labels`: numbers or dataset.json names; None/[] = found by name
    ("sc", "cord", ... / "lesion", ...). The cord always includes the lesion labels.
    Raises SettingError naming the setting at fault and what to do about it.
    """
    root = Path(path).expanduser().resolve()
    configuration = configuration or None
    if not checkpoint or Path(checkpoint).name != checkpoint or checkpoint in (".", ".."):
        raise SettingError("checkpoint", f"{checkpoint!r} must be a file name inside each fold folder "
                           f"(like {DEFAULT_CHECKPOINT} or checkpoint_best.pth), not a path")
    folder = _pick_folder(root, configuration)
    conf = configuration or folder_configuration(folder) or DEFAULT_CONFIGURATION
    available = _read_json(folder / "plans.json").get("configurations", {})
    if conf not in available:
        raise SettingError("configuration", f"{conf!r} is not in {folder / 'plans.json'} "
                           f"(configurations: {', '.join(available) or 'none'})")
    try:
        plan = read_plan(folder, conf)
    except ModelError as exc:
        raise SettingError("configuration" if "cascade" in str(exc) else "path", str(exc)) from None
    if len(plan.patch_size) != 3:
        raise SettingError("configuration", f"{conf!r} in {folder} has a {len(plan.patch_size)}D patch; only 3D "
                           "configurations (3d_fullres, 3d_lowres) run here")
    present = sorted(p.name[5:] for p in folder.glob("fold_*") if p.is_dir())
    if folds:
        names: list[str] = []
        for f in folds:
            name = str(f).strip()
            if isinstance(f, bool) or not (name.isdigit() or name == "all"):
                raise SettingError("folds", f"{f!r} is not a fold (a number like 0, or all)")
            name = str(int(name)) if name.isdigit() else name
            if name in names:
                raise SettingError("folds", f"fold {name} is listed twice")
            if name not in present:
                there = ", ".join(present) or "none"
                raise SettingError("folds", f"fold_{name} is not in {folder} (folds there: {there})")
            names.append(name)
        for name in names:
            if not (folder / f"fold_{name}" / checkpoint).is_file():
                have = sorted(p.name for p in (folder / f"fold_{name}").glob("*.pth"))
                raise SettingError("checkpoint", f"fold_{name}/{checkpoint} is missing in {folder} "
                                   f"(fold_{name} holds: {', '.join(have) or 'no .pth file'})")
    else:
        names = find_folds(folder, checkpoint)
        if not names:
            have = sorted({p.name for p in folder.glob("fold_*/*.pth")})
            key = "checkpoint" if have else "path"
            there = f" (checkpoints there: {', '.join(have)})" if have else " (no fold_* with a checkpoint)"
            raise SettingError(key, f"no fold_*/{checkpoint} in {folder}" + there)
    where = str(folder / "dataset.json")
    lab = plan.labels
    lesion = _label_values(lesion_labels, lab, "lesion_labels", where) if lesion_labels else lab.label_set(LESION_NAMES)
    cord = _label_values(cord_labels, lab, "cord_labels", where) if cord_labels else lab.label_set(CORD_NAMES)
    if not cord:
        raise SettingError("cord_labels", f"no label of {where} is named like the spinal cord "
                           f"({[k for k in lab.names if k != 'background']}); name the cord's labels in cord_labels")
    return FolderChoice(folder=folder, plan=plan, folds=tuple(names), checkpoint=checkpoint,
                        cord_labels=frozenset(cord | lesion), lesion_labels=frozenset(lesion))


def resolve_options(path: str | Path, options: Mapping[str, Any]) -> FolderChoice:
    """``resolve_settings`` with a model spec's options (``split_spec``'s), defaulted as a load of
    that spec would default them: the one place the option names meet the parameters."""
    return resolve_settings(path, options.get("configuration"), options.get("folds"),
                            options.get("checkpoint") or DEFAULT_CHECKPOINT, options.get("cord_labels"),
                            options.get("lesion_labels"))
