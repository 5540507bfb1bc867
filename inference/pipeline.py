"""The one pure entry point: ``analyze(volume) -> Analysis``.

Everything the node needs from inference travels in ``Analysis``: masks in the input's own
grid, the soft cord probability, the measurements (same schema as ``measurements.json``)
and the model identity. No networking, no catalog, no DICOM encoding here.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from inference.measurements import CordMeasurements, CsaPerSlice, JsonDict, LesionFilter, Measurements, finite_or_none
from inference.model_identity import ModelIdentity
from inference.volume import Volume

if TYPE_CHECKING:  # torch is imported only when a model is actually loaded
    from inference.engine import Progress
    from inference.models.registry import LoadedModel, ModelMeta
    from inference.sct.models import SctLesionModel

DEFAULT_MODEL = "builtin:spinecord-t2"
log = logging.getLogger(__name__)


@dataclass
class Analysis:
    """Result of one series: masks share the shape and affine of the input volume."""

    cord_mask: np.ndarray  # uint8 {0,1}, cord including lesion
    lesion_mask: np.ndarray  # uint8 {0,1}, inside cord
    lesion_labels: np.ndarray  # int32, 0 = background, n = lesion with measurement label n
    cord_prob: np.ndarray  # float32 in [0, 1]
    affine: np.ndarray  # 4x4 voxel -> RAS mm, same as the input
    metrics: Measurements  # typed numbers; .measurements is their JSON form
    model: ModelIdentity
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    lesion_model: ModelIdentity | None = None  # who drew the lesions when not ``model`` (an SCT model)

    @property
    def measurements(self) -> JsonDict:
        """The measurements.json form of ``metrics``: for storage and CLI edges only."""
        return self.metrics.to_json()


def model_identity(meta: "ModelMeta") -> ModelIdentity:
    return ModelIdentity(name=meta.name, version=meta.version, description=meta.description)


def resolve_model(model: "str | LoadedModel", device: str = "auto",
                  require_trained: bool = True) -> "LoadedModel":
    """Load (cached) and vet a model: an untrained one would emit plausible-looking garbage."""
    from inference.models.registry import LoadedModel, ModelError, load_model, read_meta

    if isinstance(model, LoadedModel):
        meta = model.meta
    else:
        try:
            meta = read_meta(model)
        except ModelError as exc:
            if str(model) == DEFAULT_MODEL:
                raise ModelError(f"the shipped model {DEFAULT_MODEL} is not installed ({exc}); "
                                 f"train it or pass a model folder") from None
            raise
    if require_trained and not meta.trained:
        raise ModelError(f"model {meta.name} ({meta.folder}) is not trained (model.json has "
                         f"trained: false); refusing to segment with placeholder weights")
    # the spec itself, not meta.folder: an nnU-Net spec carries its settings (folds, mirroring, ...)
    return model if isinstance(model, LoadedModel) else load_model(model, device=device)


def measure(cord: np.ndarray, lesion: np.ndarray, affine: np.ndarray) -> tuple[Measurements, np.ndarray]:
    """The measurements and the lesion label map, from masks in one grid (no lesion filter recorded)."""
    from inference.biomarkers import analyze_lesions
    from inference.csa import cord_csa
    from inference.lesion_filter import voxel_volume_mm3

    report = analyze_lesions(lesion, cord, affine)
    csa = cord_csa(cord, affine)
    labels = np.asarray(report.label_map, dtype=np.int32)
    measurements = Measurements(
        lesions=tuple(report.lesions),
        total_volume_mm3=report.total_volume_mm3,
        total_length_mm=report.total_length_mm,
        max_axial_damage_ratio=report.max_axial_damage_ratio,
        interpolated_midsagittal_slice=finite_or_none(report.interpolated_midsagittal_slice),
        cord=CordMeasurements(cord_csa_mm2_mean=finite_or_none(csa.mean_mm2),
                              cord_volume_mm3=float(np.count_nonzero(cord)) * voxel_volume_mm3(affine)),
        per_slice=CsaPerSlice(tuple(finite_or_none(v) for v in csa.per_slice_mm2)),
    )
    return measurements, labels


def measure_levels(measurements: Measurements, lesion_labels: np.ndarray, cord: np.ndarray,
                   volume: Volume) -> Measurements:
    """Vertebral levels, per-level CSA against healthy adults and each lesion's level span.

    Never fails the analysis: a field of view that cannot be counted (or a labelling error) is
    "unknown" with its reason, logged once, and every other number stays as measured.
    """
    from inference.levels_csa import lesion_spans, level_measurements
    from inference.measurements import LevelMeasurements
    from inference.vertebrae import label_levels

    try:
        levels = label_levels(volume.array, cord, volume.affine)
        result = level_measurements(levels, cord, measurements.per_slice.cord_csa_mm2_per_slice, volume.patient)
    except ValueError as exc:
        log.warning("vertebral levels failed: %s", exc)
        return measurements.with_levels(LevelMeasurements("unknown", f"labelling failed: {exc}"),
                                        measurements.lesions)
    if not result.known:
        log.info("vertebral levels unknown: %s", result.vertebral_levels_reason)
        return measurements.with_levels(result, measurements.lesions)
    spans = lesion_spans(levels.label_cord(cord), lesion_labels)
    lesions = tuple(replace(lesion, level_span=spans.get(lesion.label)) for lesion in measurements.lesions)
    return measurements.with_levels(result, lesions)


def set_cpu_threads(n: int) -> None:
    """CPU threads torch may use for inference (0 keeps torch's default): one place for the knob."""
    if n > 0:
        import torch

        torch.set_num_threads(n)


def analyze(volume: Volume, model: "str | LoadedModel" = DEFAULT_MODEL, device: str = "auto",
            require_trained: bool = True, progress: "Progress | None" = None,
            min_lesion_volume_mm3: float = 0.0, lesion_model: "SctLesionModel | None" = None,
            sct_centerline: str = "cnn") -> Analysis:
    """Segment cord and lesions and measure them; everything comes back in the input grid.

    `min_lesion_volume_mm3` > 0 drops smaller lesion components (inference.lesion_filter)
    before anything is measured or encoded; measurements record the minimum and how many
    components it dropped, so a reader of the numbers knows.

    With `lesion_model` (one of SCT's, inference.sct) the lesions are that model's, inside the
    cord of `model`; `sct_centerline` "cnn" finds the cord for SCT's crop with SCT's centerline
    network, "cord" takes the centres of `model`'s cord mask (SCT's ``-centerline file``).
    """
    from inference.engine import segment
    from inference.lesion_filter import drop_small_lesions

    if sct_centerline not in ("cnn", "cord"):
        raise ValueError(f"sct_centerline must be cnn or cord, got {sct_centerline!r}")
    loaded = resolve_model(model, device=device, require_trained=require_trained)
    seg = segment(volume, loaded, progress=progress)
    lesion = seg.lesion_mask
    if lesion_model is not None:
        lesion = _sct_lesions(volume, lesion_model, seg.cord_mask, sct_centerline, seg.timings, progress)
    t0 = time.perf_counter()
    if progress:
        progress("metrics", 0, 1)
    lesion_mask, dropped = drop_small_lesions(lesion, volume.affine, min_lesion_volume_mm3)
    measured, labels = measure(seg.cord_mask, lesion_mask, volume.affine)
    measured = measured.with_filter(LesionFilter(float(min_lesion_volume_mm3), dropped))
    t1 = time.perf_counter()
    measured = measure_levels(measured, labels, seg.cord_mask, volume)
    timings = {**seg.timings, "metrics": t1 - t0, "levels": time.perf_counter() - t1}
    return Analysis(
        cord_mask=seg.cord_mask, lesion_mask=lesion_mask, lesion_labels=labels,
        cord_prob=seg.cord_prob, affine=np.asarray(volume.affine, dtype=np.float64).copy(),
        metrics=measured, model=model_identity(loaded.meta), timings=timings,
        lesion_model=None if lesion_model is None else lesion_model.identity,
    )


def _sct_lesions(volume: Volume, lesion_model: "SctLesionModel", cord: np.ndarray, centerline: str,
                 timings: dict[str, float], progress: "Progress | None") -> np.ndarray:
    """SCT's lesion mask inside ``cord`` (lesions are measured in the cord); logs what lay outside it."""
    from inference.sct.centerline import CenterlineError
    from inference.sct.pipeline import segment_lesions

    if progress:
        progress("SCT lesions", 0, 1)
    t0 = time.perf_counter()
    try:
        raw = segment_lesions(volume, lesion_model, cord_mask=cord if centerline == "cord" else None)
    except CenterlineError as exc:
        if centerline == "cord" or not np.any(cord):
            raise
        # SCT's own alternative (-centerline file): the crop follows our cord, which the lesions are
        # measured in anyway; better than failing a job whose cord is already segmented
        log.warning("%s: SCT's centerline network failed (%s); its crop follows our cord's centres instead",
                    lesion_model.identity.name, exc)
        raw = segment_lesions(volume, lesion_model, cord_mask=cord)
    timings["sct lesions"] = time.perf_counter() - t0
    inside = (raw > 0) & (cord > 0)
    outside = int(np.count_nonzero(raw)) - int(np.count_nonzero(inside))
    if outside:
        log.info("%s: %d of %d lesion voxels lie outside the cord and are not measured", lesion_model.identity.name,
                 outside, int(np.count_nonzero(raw)))
    return inside.astype(np.uint8)
