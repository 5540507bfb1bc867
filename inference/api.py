"""The one door from the node into inference: everything ``dicom_node`` may import from ``inference``.

Why one module: the node (DICOM, catalog, network) and inference (volumes, models, numbers) change
for different reasons. With one door, a change inside inference that keeps this module's names
cannot break the node, and a reader sees the whole contract on one page. A test keeps it so
(no ``dicom_node`` module imports any other ``inference`` module). Importing this module does
not import torch: a model is loaded only when one is analysed or preloaded.

The contract:
  volume_from_datasets(datasets) -> Volume         (DICOM instances -> one grid, frame by frame)
  analyze(volume, AnalysisRequest) -> Analysis     (masks in the input grid + typed Measurements)
  check_model(spec) -> ModelState                  (loadable? loaded? without loading it)
  preload(spec, device) -> (ModelIdentity, device) (load now, so the first job does not wait)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from inference.files import atomic_write, fsync_dir, replaced_atomically
from inference.heap import child_env as heap_child_env
from inference.heap import configure as configure_heap
from inference.lesion_filter import DEFAULT_MIN_LESION_VOLUME_MM3, check_min_volume
from inference.measurements import (
    CordMeasurements,
    CsaPerSlice,
    LesionFilter,
    LesionMetrics,
    LevelCsa,
    LevelMeasurements,
    Measurements,
    json_keys,
)
from inference.models.nnunet_folder import SettingError, resolve_options
from inference.models.spec import NNUNET_OPTIONS, ModelError, ModelSpec
from inference.models.state import ModelState, check_model
from inference.pipeline import DEFAULT_MODEL, Analysis, ModelIdentity
from inference.version import package_version
from inference.volume import FrameRef, Volume, VolumeError, orientation_label, volume_from_datasets

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

__all__ = [
    "DEFAULT_MIN_LESION_VOLUME_MM3", "DEFAULT_MODEL", "NNUNET_OPTIONS", "OFFLINE_COMMANDS", "Analysis",
    "AnalysisRequest", "AnalysisSettings", "CordMeasurements", "CsaPerSlice", "FrameRef", "LesionFilter",
    "LesionMetrics", "LevelCsa", "LevelMeasurements", "Measurements", "ModelError", "ModelIdentity", "ModelSpec",
    "ModelState", "SettingError",
    "Volume", "VolumeError", "analyze", "atomic_write", "check_min_volume", "fsync_dir", "check_model",
    "check_nnunet_settings", "configure_heap", "heap_child_env", "json_keys", "orientation_label", "package_version",
    "preload", "render_overlay", "replaced_atomically", "set_cpu_threads", "superior_axis", "volume_from_datasets",
]


@dataclass(frozen=True)
class AnalysisSettings:
    """A pipeline's settings that change the result (beyond the model); recorded in the SEG and SR.

    A new setting is a field here, read in ``analyze`` below, and a key in the node's pipeline config.
    """

    min_lesion_volume_mm3: float = 0.0  # 0 keeps the lesion mask as the model gives it

    def __post_init__(self) -> None:
        check_min_volume(self.min_lesion_volume_mm3, "min_lesion_volume_mm3")


@dataclass(frozen=True)
class AnalysisRequest:
    """What to run on a volume: which model, on which device, with which settings. Picklable
    (it travels to Ray actors as is)."""

    model: ModelSpec
    device: str = "auto"
    settings: AnalysisSettings = field(default_factory=AnalysisSettings)


def analyze(volume: Volume, request: AnalysisRequest) -> Analysis:
    """Segment and measure ``volume`` as ``request`` says (loads the model once per process)."""
    from inference import pipeline

    return pipeline.analyze(volume, model=str(request.model), device=request.device,
                            min_lesion_volume_mm3=request.settings.min_lesion_volume_mm3)


def preload(spec: ModelSpec | str, device: str = "auto") -> tuple[ModelIdentity, str]:
    """Load (and vet) a model now; returns who it is and the device it landed on."""
    from inference import pipeline

    loaded = pipeline.resolve_model(str(spec), device=device)
    return pipeline.model_identity(loaded.meta), str(loaded.device)


def set_cpu_threads(n: int) -> None:
    """CPU threads torch may use (0 keeps torch's default)."""
    from inference import pipeline

    pipeline.set_cpu_threads(n)


def check_nnunet_settings(spec: ModelSpec) -> None:
    """Raise SettingError (naming the setting) or ModelError when an nnU-Net folder's settings do not
    fit its files; JSON and file names only, so a config can be checked when it loads."""
    resolve_options(spec.location, dict(spec.options))


def superior_axis(affine: np.ndarray, shape: tuple[int, ...]) -> int:
    """The input axis that the metrics take as inferior-superior (their RPI z): the axis along which
    ``LesionMetrics.max_axial_area_slice`` counts. The slice axis (2) for an axial series."""
    from inference.rpi import RpiFrame

    return RpiFrame.from_affine(affine, shape).source_axis[2]


def render_overlay(image: np.ndarray, cord: np.ndarray, lesion: np.ndarray, affine: np.ndarray,
                   title: str | None = None) -> Image.Image:
    """Cord (green) and lesion (red) drawn on mid-sagittal and axial views (inference.qc), whose
    imaging libraries load on first use rather than with the node's command line."""
    from inference.qc import render_overlay as render

    return render(image, cord, lesion, affine, title=title)


# The offline commands inference adds to the `dicom-node` console script:
# name -> (module, add-arguments function, run function, help line).
OFFLINE_COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "segment": ("inference.cli", "add_segment_arguments", "run_segment",
                "segment cord and lesions in a NIfTI file or DICOM folder"),
    "analyze-lesion": ("inference.cli", "add_analyze_lesion_arguments", "run_analyze_lesion",
                       "lesion metrics from lesion and cord masks"),
    "evaluate": ("inference.train.evaluate", "add_arguments", "run", "evaluate a model on the validation subjects"),
}
