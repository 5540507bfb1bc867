"""The model spec string: builtin:NAME, a folder, or an nnU-Net folder with its settings.

    FOLDER?configuration=3d_fullres&folds=0,1&checkpoint=checkpoint_best.pth&use_mirroring=false

Why a module of its own, without torch: ``dicom_node.config`` writes such specs and checks a
models entry's keys against NNUNET_OPTIONS when the config loads, and that must not pull in
torch; ``inference.models.registry`` reads them back (and re-exports all of this).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote


class ModelError(ValueError):
    """The model folder is missing, malformed, or not usable for this request."""


NNUNET_OPTIONS = ("configuration", "folds", "checkpoint", "use_mirroring", "cord_labels", "lesion_labels",
                  "fast_cpu")
_BOOL_OPTIONS = ("use_mirroring", "fast_cpu")
_LIST_OPTIONS = ("folds", "cord_labels", "lesion_labels")


def nnunet_spec(folder: str | Path, **options: Any) -> str:
    """FOLDER?key=value&... for the options that are set (None, "" and [] are left out)."""
    parts = []
    for key in NNUNET_OPTIONS:
        value = options.get(key)
        if value is None or value == "" or (isinstance(value, (list, tuple)) and not value):
            continue
        if key in _LIST_OPTIONS:
            text = ",".join(quote(str(v), safe="") for v in value)
        elif key in _BOOL_OPTIONS:
            text = "true" if value else "false"
        else:
            text = quote(str(value), safe="")
        parts.append(f"{key}={text}")
    unknown = set(options) - set(NNUNET_OPTIONS)
    if unknown:
        raise ModelError(f"unknown nnU-Net option(s) {sorted(unknown)} (known: {', '.join(NNUNET_OPTIONS)})")
    return str(folder) + ("?" + "&".join(parts) if parts else "")


def split_spec(spec: str | Path) -> tuple[str, dict[str, Any]]:
    """(folder, options) of a model spec; options only when the part after the last '?' is
    key=value pairs with NNUNET_OPTIONS keys (a '?' inside a folder name stays part of it)."""
    text = str(spec)
    base, sep, query = text.rpartition("?")
    if not sep or "=" not in query:
        return text, {}
    pairs = query.split("&")
    if not all("=" in p and p.split("=", 1)[0] in NNUNET_OPTIONS for p in pairs):
        return text, {}
    options: dict[str, Any] = {}
    for p in pairs:
        key, raw = p.split("=", 1)
        if key in _LIST_OPTIONS:
            items = [unquote(v) for v in raw.split(",") if v]
            options[key] = [int(v) if v.isdigit() else v for v in items]
        elif key in _BOOL_OPTIONS:
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ModelError(f"model spec {text!r}: {key}={raw!r} is not true or false")
            options[key] = raw.lower() in ("true", "1")
        else:
            options[key] = unquote(raw)
    return base, options


@dataclass(frozen=True)
class ModelSpec:
    """Which model to run, as a value: a builtin name or folder, and its nnU-Net options.

    Why not the string: a string is parsed again wherever it is used, and a typo in an option
    name only shows when the model loads. The text form (``str(spec)``) stays the stable one for
    logs, the model cache key and the config (``FOLDER?key=value&...``).
    """

    location: str
    options: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def parse(cls, spec: str | Path | ModelSpec) -> ModelSpec:
        if isinstance(spec, ModelSpec):
            return spec
        location, options = split_spec(spec)
        return cls.of(location, **options)

    @classmethod
    def of(cls, location: str | Path, **options: Any) -> ModelSpec:
        """A spec from a folder (or builtin:NAME) and nnU-Net options (None, "" and [] are left out)."""
        nnunet_spec(location, **options)  # refuses unknown option names
        kept = tuple((key, tuple(value) if isinstance(value, list) else value)
                     for key in NNUNET_OPTIONS if (value := options.get(key)) not in (None, "", [], ()))
        return cls(str(location), kept)

    def option(self, key: str, default: Any = None) -> Any:
        value = dict(self.options).get(key, default)
        return list(value) if isinstance(value, tuple) else value

    def __str__(self) -> str:
        return nnunet_spec(self.location, **{key: self.option(key) for key, _ in self.options})
