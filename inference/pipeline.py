"""The one pure entry point: ``analyze(volume) -> Analysis``.

Everything the node needs from inference travels in ``Analysis``: masks in the input's own
grid, the soft cord probability, the measurements (same schema as ``measurements.json``)
and the model identity. No networking, no catalog, no DICOM encoding here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inference.volume import Volume


@dataclass(frozen=True)
class ModelIdentity:
    """Which model produced a result: shown in SEG/SR and logs."""

    name: str
    version: str
    description: str = ""


@dataclass
class Analysis:
    """Result of one series: masks share the shape and affine of the input volume."""

    cord_mask: np.ndarray  # uint8 {0,1}, cord including lesion
    lesion_mask: np.ndarray  # uint8 {0,1}, inside cord
    lesion_labels: np.ndarray  # int32, 0 = background, n = lesion with measurement label n
    cord_prob: np.ndarray  # float32 in [0, 1]
    affine: np.ndarray  # 4x4 voxel -> RAS mm, same as the input
    measurements: dict[str, Any]  # schema of measurements.json (lesions list, totals, CSA)
    model: ModelIdentity
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
