"""`dicom-node segment` on a cohort: one loaded model, a folder per case, two CSV tables.

Why: researchers measure whole cohorts. Loading the model once and keeping it resident is most
of what separates this from one command per case (nnU-Net's per-case overheads), and the
numbers they want side by side are in DIR/cohort.csv (one row per case, rewritten after each)
and DIR/lesions.csv (one row per lesion, written when the run ends or is interrupted). A case is
written into a hidden folder and renamed into place when whole, so a stopped run leaves only
whole cases, and running the same command again skips them. A case that fails is a row with its
reason; the others go on.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from inference.files import replaced_atomically

CASE_COLUMNS = ("case", "input", "status", "error", "lesion_count", "total_volume_mm3", "total_length_mm",
                "max_axial_damage_ratio", "cord_volume_mm3", "cord_csa_mm2_mean", "min_lesion_volume_mm3",
                "lesions_below_minimum", "vertebral_levels_status", "cord_csa_c2c3_mm2", "cord_csa_c2c3_z_score",
                "cord_csa_c2c3_percentile", "seconds")


def _lesion_columns() -> tuple[str, ...]:
    """The per-lesion measurements of inference.biomarkers, the centroid as three columns."""
    from inference.measurements import LesionMetrics

    names = [f.name for f in dataclasses.fields(LesionMetrics) if f.name != "centroid_ras_mm"]
    return ("case", *names, "centroid_ras_x_mm", "centroid_ras_y_mm", "centroid_ras_z_mm")


def case_name(source: str | Path) -> str:
    """A case's name from its input: the NIfTI file name without .nii(.gz), or the DICOM folder's."""
    path = Path(source)
    name = path.name
    for ext in (".nii.gz", ".nii"):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    return name


def case_names(sources: list[str]) -> list[tuple[str, Path]]:
    """(name, input) per case; inputs whose names clash (or are unusable) are refused up front."""
    seen: dict[str, str] = {}
    cases = []
    for source in sources:
        name = case_name(source)
        if not name or name.startswith(".") or name.lower() in ("cohort.csv", "lesions.csv"):
            raise ValueError(f"input {source}: no usable case name ({name!r}); rename it")
        if name in seen:
            raise ValueError(f"inputs {seen[name]} and {source} would both be case {name!r} (DIR/{name}/); "
                             "rename one or run them separately")
        seen[name] = source
        cases.append((name, Path(source)))
    return cases


def run_cohort(cases: list[tuple[str, Path]], model: Any, out: Path, qc_png: bool,
               min_lesion_volume_mm3: float, lesion_model: Any = None, sct_centerline: str = "cnn") -> int:
    """Measure every case with the loaded `model` (and, if given, the lesions of the loaded SCT
    `lesion_model` inside its cord, as ``pipeline.analyze``); 0 when all are measured, 1 if any failed."""
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    lesions: list[dict[str, Any]] = []
    counts = {"measured": 0, "measured before": 0, "failed": 0}
    try:
        for i, (name, source) in enumerate(cases, start=1):
            t0 = time.perf_counter()
            status, error, measurements = _case(f"case {i}/{len(cases)} {name}", out / name, source, model,
                                                qc_png, min_lesion_volume_mm3, lesion_model, sct_centerline)
            counts[status] += 1
            seconds = time.perf_counter() - t0 if status == "measured" else None
            rows.append(_case_row(name, source, status, error, measurements, seconds))
            lesions += [_lesion_row(name, lesion) for lesion in (measurements or {}).get("lesions", [])]
            _write_csv(out / "cohort.csv", CASE_COLUMNS, rows)  # after every case: a stopped run keeps it
    finally:  # once: it can grow to 10^5 rows (a noisy model); Ctrl-C still writes it, a re-run rebuilds it
        _write_csv(out / "lesions.csv", _lesion_columns(), lesions)
    print(f"{counts['measured']} case(s) measured, {counts['measured before']} measured before, "
          f"{counts['failed']} failed; tables: {out / 'cohort.csv'}, {out / 'lesions.csv'}")
    return 1 if counts["failed"] else 0


def _case(label: str, folder: Path, source: Path, model: Any, qc_png: bool, min_lesion_volume_mm3: float,
          lesion_model: Any = None, sct_centerline: str = "cnn") -> tuple[str, str, dict[str, Any] | None]:
    """(status, error, measurements) of one case: read back when whole already, else measured and
    written into a hidden folder that is renamed to `folder` when whole."""
    from inference.case_files import write_case
    from inference.pipeline import analyze
    from inference.volume import load_volume

    try:
        if (folder / "measurements.json").is_file():
            _say(f"{label}: already in {folder}, skipped (remove it to measure again)")
            return "measured before", "", json.loads((folder / "measurements.json").read_text(encoding="utf-8"))
        if folder.exists():
            raise ValueError(f"{folder} exists without measurements.json (not written by this tool, or by an "
                             "older version); move it away")
        _say(f"{label}: {source}")
        volume = load_volume(source)
        analysis = analyze(volume, model, min_lesion_volume_mm3=min_lesion_volume_mm3, lesion_model=lesion_model,
                           sct_centerline=sct_centerline)
        staging = folder.with_name(f".{folder.name}.partial")
        shutil.rmtree(staging, ignore_errors=True)  # left by a run stopped mid-case
        write_case(analysis, volume, staging, qc_png=qc_png, name=source.name)
        os.replace(staging, folder)
        return "measured", "", analysis.measurements
    except (ValueError, OSError, RuntimeError) as exc:  # the next case may well be fine
        error = (str(exc).splitlines() or [type(exc).__name__])[0]
        _say(f"{label}: failed: {error}")
        return "failed", error, None


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _case_row(name: str, source: Path, status: str, error: str, m: dict[str, Any] | None,
              seconds: float | None) -> dict[str, Any]:
    row = {"case": name, "input": str(source), "status": status, "error": error,
           "seconds": None if seconds is None else round(seconds, 1)}
    for key in CASE_COLUMNS[4:-1]:
        row[key] = (m or {}).get(key)
    return row


def _lesion_row(name: str, lesion: dict[str, Any]) -> dict[str, Any]:
    x, y, z = lesion.get("centroid_ras_mm") or (None, None, None)
    return {"case": name, **{k: v for k, v in lesion.items() if k != "centroid_ras_mm"},
            "centroid_ras_x_mm": x, "centroid_ras_y_mm": y, "centroid_ras_z_mm": z}


def _write_csv(path: Path, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    """The whole table, replacing the last one atomically; None is an empty cell."""
    with replaced_atomically(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(columns)
            writer.writerows([["" if row.get(k) is None else row[k] for k in columns] for row in rows])
