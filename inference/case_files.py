"""The files of one analysed case: masks, cord probability, measurements.json and an optional QC picture.

Why a module of its own: `dicom-node segment` writes one case, inference.cohort writes many, and
both must write the same files the same way (each whole or absent).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from inference.files import replaced_atomically, write_text_atomically
from inference.pipeline import Analysis
from inference.volume import Volume, save_nifti


def write_case(analysis: Analysis, volume: Volume, out: Path, qc_png: bool, name: str) -> list[str]:
    """One case's files in `out`, each whole or absent (inference.files); measurements.json last,
    so its presence means the case is complete. Returns the names written."""
    written = []
    for file, array in (("cord.nii.gz", analysis.cord_mask.astype(np.uint8)),
                        ("lesion.nii.gz", analysis.lesion_mask.astype(np.uint8)),
                        ("cord_prob.nii.gz", analysis.cord_prob.astype(np.float32))):
        with replaced_atomically(out / file) as tmp:
            save_nifti(array, analysis.affine, tmp)
        written.append(file)
    if qc_png:
        from inference.qc import render_overlay

        title = f"{analysis.model.name} {analysis.model.version}  {name}"
        with replaced_atomically(out / "qc.png") as tmp:
            render_overlay(volume.array, analysis.cord_mask, analysis.lesion_mask, analysis.affine,
                           title=title).save(tmp)
        written.append("qc.png")
    write_text_atomically(out / "measurements.json",
                          json.dumps(analysis.measurements, indent=2, allow_nan=False) + "\n")
    written.append("measurements.json")
    return written
