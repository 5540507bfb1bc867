"""Offline tools on files: `dicom-node segment` and `dicom-node analyze-lesion`.

Each command has `add_*_arguments(parser)` and `run_*(args) -> exit code`; dicom_node.cli wires
them into the one `dicom-node` console script.
"""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from pathlib import Path

    from nibabel.spatialimages import SpatialImage

    from inference.engine import Progress
    from inference.lesion_agreement import LesionAgreement
    from inference.pipeline import Analysis
    from inference.volume import Volume


def add_segment_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `dicom-node segment` (cord + lesion masks, probabilities and measurements)."""
    from inference.lesion_filter import DEFAULT_MIN_LESION_VOLUME_MM3

    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="NIfTI file (.nii/.nii.gz) or folder with the DICOM files of one series; several "
                        "inputs are a cohort: the model is loaded once, each case gets DIR/NAME/, and "
                        "DIR/cohort.csv and DIR/lesions.csv gather the numbers")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    p.add_argument("--model", default="builtin:spinecord-t2", metavar="builtin:NAME|FOLDER|sct:NAME",
                   help="model to use (default: the shipped builtin:spinecord-t2); sct:t2_ax_lesion or "
                        "sct:t2s_lesion: Spinal Cord Toolbox's MS lesion model draws the lesions, inside the cord "
                        "of --cord-model")
    p.add_argument("--cord-model", default="builtin:spinecord-t2", metavar="builtin:NAME|FOLDER",
                   help="with --model sct:NAME: the model whose cord the lesions are measured in")
    p.add_argument("--sct-data-dir", action="append", metavar="DIR",
                   help="with --model sct:NAME: a folder holding SCT's model files (t2_ax_lesion.h5, t2_ctr.h5, ...), "
                        "or SCT's data folder with deepseg_lesion_models/ and deepseg_sc_models/; may be repeated "
                        "(default: $SCT_DIR/data)")
    p.add_argument("--sct-centerline", choices=("cnn", "cord"), default="cnn",
                   help="with --model sct:NAME: where SCT's crop goes: cnn = SCT's centerline network (default), "
                        "cord = the centre of --cord-model's cord in each slice (SCT's -centerline file)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present) | cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, default=0, metavar="N", help="CPU threads for torch (0 = torch default)")
    p.add_argument("--qc-png", action="store_true", help="also write qc.png (sagittal + axial overlays)")
    p.add_argument("--min-lesion-volume", type=float, default=DEFAULT_MIN_LESION_VOLUME_MM3, metavar="MM3",
                   help="drop lesion components smaller than this before measuring (as sct_deepseg "
                        f"-remove-small; default {DEFAULT_MIN_LESION_VOLUME_MM3:g}, the pipelines' default; "
                        "0 = keep every component)")


def run_segment(args: argparse.Namespace) -> int:
    """Segment, write masks/probabilities/measurements (+ QC picture); errors -> one line, exit 1.

    One input writes into DIR; several are a cohort (inference.cohort)."""
    import sys
    import time
    from pathlib import Path

    from inference.case_files import write_case
    from inference.lesion_filter import check_min_volume
    from inference.pipeline import analyze, resolve_model, set_cpu_threads
    from inference.sct.models import is_sct_spec, load_sct_model
    from inference.volume import load_volume

    start = time.perf_counter()
    progress = _segment_progress(start)
    try:
        set_cpu_threads(args.threads)
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} exists and is not a folder")
        check_min_volume(args.min_lesion_volume, "--min-lesion-volume")
        if len(args.inputs) > 1:
            from inference.cohort import case_names

            cases = case_names(args.inputs)  # refuse clashing names before the model loads
        lesion_model, cord_spec = None, args.model
        if is_sct_spec(args.model):
            progress("loading SCT model", 0, 1)
            lesion_model, cord_spec = load_sct_model(args.model, args.sct_data_dir), args.cord_model
        progress("loading model", 0, 1)
        model = resolve_model(cord_spec, device=args.device)  # refuse early, before reading the input
        if len(args.inputs) > 1:
            from inference.cohort import run_cohort

            return run_cohort(cases, model, out, qc_png=args.qc_png, min_lesion_volume_mm3=args.min_lesion_volume,
                              lesion_model=lesion_model, sct_centerline=args.sct_centerline)
        progress("reading input", 0, 1)
        volume = load_volume(args.inputs[0])
        analysis = analyze(volume, model, progress=progress, min_lesion_volume_mm3=args.min_lesion_volume,
                           lesion_model=lesion_model, sct_centerline=args.sct_centerline)
        progress("writing", 0, 1)
        written = write_case(analysis, volume, out, qc_png=args.qc_png, name=Path(args.inputs[0]).name)
    except (ValueError, OSError, RuntimeError) as exc:  # ModelError, VolumeError, metrics errors are ValueErrors
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"segment: {msg}", file=sys.stderr)
        return 1
    print(_segment_summary(analysis, volume, str(model.device), out, written, time.perf_counter() - start))
    return 0


def _segment_progress(start: float) -> "Progress":
    """Stage lines on stderr; the sliding window reports about every 10 % so long runs show life."""
    import sys
    import time

    last: dict[str, int] = {}

    def report(stage: str, done: int, total: int) -> None:
        if total > 1:
            step = max(1, total // 10)
            if done not in (0, total) and done - last.get(stage, 0) < step:
                return
            last[stage] = done
            text = f"{stage} {done}/{total} tiles" if stage == "sliding window" else f"{stage} {done}/{total}"
        else:
            text = stage
        print(f"[{time.perf_counter() - start:6.1f}s] {text}", file=sys.stderr, flush=True)

    return report


def _segment_summary(analysis: "Analysis", volume: "Volume", device: str, out: "Path", written: list[str],
                     seconds: float) -> str:
    """A few human lines: model, input geometry, cord, lesions, timings, files."""
    m = analysis.metrics
    shape = "x".join(str(n) for n in volume.array.shape)
    spacing = "x".join(f"{s:.2f}" for s in volume.spacing)
    csa = m.cord.cord_csa_mm2_mean
    csa_text = "n/a" if csa is None else f"{csa:.1f} mm2"
    timing = ", ".join(f"{k} {v:.1f} s" for k, v in analysis.timings.items())
    applied = m.lesion_filter
    dropped_text = (f" ({applied.lesions_below_minimum} smaller than {applied.min_lesion_volume_mm3:g} mm3 dropped)"
                    if applied is not None and applied.lesions_below_minimum else "")
    lesions_by = ([] if analysis.lesion_model is None else
                  [f"lesions by {analysis.lesion_model.name} {analysis.lesion_model.version} (CPU): "
                   f"{analysis.lesion_model.description}"])
    return "\n".join([
        f"model {analysis.model.name} {analysis.model.version} on {device}",
        *lesions_by,
        f"input {shape} voxels of {spacing} mm",
        f"cord: {int(analysis.cord_mask.sum())} voxels, {m.cord.cord_volume_mm3:.1f} mm3, mean CSA {csa_text}",
        f"lesions: {m.lesion_count}{dropped_text}, total volume {m.total_volume_mm3:.1f} mm3, "
        f"total length {m.total_length_mm:.1f} mm, max axial damage ratio {m.max_axial_damage_ratio:.3f}",
        f"time: {timing} (total {seconds:.1f} s)",
        f"written to {out}: {', '.join(written)}",
    ])


def add_analyze_lesion_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `dicom-node analyze-lesion` (the sct_analyze_lesion measurements on two NIfTI masks)."""
    p.add_argument("--lesion", required=True, metavar="L.nii.gz", help="binary lesion mask (0/1), NIfTI")
    p.add_argument("--cord", required=True, metavar="C.nii.gz",
                   help="spinal cord mask (cord includes lesion), same grid")
    p.add_argument("--json", required=True, metavar="OUT.json", help="where to write the measurements (JSON)")


def run_analyze_lesion(args: argparse.Namespace) -> int:
    """Measure, write JSON, print a short summary; bad input -> one line on stderr and exit code 1."""
    import json
    import sys
    from pathlib import Path

    from inference.biomarkers import MetricsError, analyze_lesions

    try:
        lesion, affine = _load_mask(Path(args.lesion), "lesion")
        cord, cord_affine = _load_mask(Path(args.cord), "cord")
        if lesion.shape == cord.shape and not _same_geometry(affine, cord_affine):
            raise MetricsError(f"{args.lesion} and {args.cord} have different affines; "
                               "resample the cord onto the lesion grid")
        report = analyze_lesions(lesion, cord, affine)
        out = Path(args.json)
        if not out.parent.is_dir():
            raise MetricsError(f"output folder {out.parent} does not exist; create it or choose another --json path")
        out.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    except (MetricsError, OSError) as exc:
        print(f"analyze-lesion: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 1
    print(_lesion_summary(report.to_json(), str(args.json)))
    return 0


def _load_mask(path, what: str):
    """(3D array, affine) of a NIfTI mask, or MetricsError/OSError saying what to fix."""
    import nibabel as nib
    import numpy as np

    from inference.biomarkers import MetricsError

    if not path.is_file():
        raise MetricsError(f"{what} mask {path} not found")
    try:
        # nib.load is typed for every format it reads; a NIfTI file loads as a SpatialImage
        img = cast("SpatialImage", nib.load(str(path)))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises several types for unreadable files
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        raise MetricsError(f"cannot read {what} mask {path} as NIfTI ({type(exc).__name__}: {first_line})") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise MetricsError(f"{what} mask {path} must be 3D, got shape {data.shape}")
    return data, np.asarray(img.affine, dtype=np.float64)


def _same_geometry(a, b) -> bool:
    import numpy as np

    return bool(np.allclose(a, b, rtol=0, atol=1e-3))


def _lesion_summary(result: dict, json_path: str) -> str:
    """A few human-readable lines: counts, totals, then one line per lesion."""
    lesions = result["lesions"]
    lines = [
        f"{len(lesions)} lesion(s); total volume {result['total_volume_mm3']:.2f} mm3, "
        f"total length {result['total_length_mm']:.2f} mm, "
        f"max axial damage ratio {result['max_axial_damage_ratio']:.3f}",
    ]
    if result["interpolated_midsagittal_slice"] is not None:
        lines.append(f"interpolated midsagittal slice {result['interpolated_midsagittal_slice']:.2f}")
    for les in lesions:
        bridges = "n/a" if les["total_bridge_mm"] is None else (
            f"{les['dorsal_bridge_mm']:.2f}/{les['ventral_bridge_mm']:.2f} mm")
        lines.append(
            f"  #{les['label']}: {les['volume_mm3']:.2f} mm3, length {les['length_mm']:.2f} mm, "
            f"width {les['width_mm']:.2f} mm, damage ratio {les['max_axial_damage_ratio']:.3f}, "
            f"dorsal/ventral bridges {bridges}")
    lines.append(f"written to {json_path}")
    return "\n".join(lines)


def add_compare_lesions_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `dicom-node compare-lesions` (two lesion masks of one image, lesion by lesion)."""
    p.add_argument("a", metavar="A.nii.gz", help="reference lesion mask (e.g. our model's lesion.nii.gz)")
    p.add_argument("b", metavar="B.nii.gz", help="other lesion mask on the same grid (e.g. an SCT model's)")
    p.add_argument("--names", default="A,B", metavar="NAME_A,NAME_B", help="what to call the two masks")
    p.add_argument("--json", metavar="OUT.json", help="also write the agreement as JSON")
    p.add_argument("--png", metavar="OUT.png", help="also draw the axial slices with lesions, plain and with both "
                   "masks outlined (needs --image)")
    p.add_argument("--image", metavar="IMAGE.nii.gz", help="the image both masks were drawn on (for --png)")


def run_compare_lesions(args: argparse.Namespace) -> int:
    """Lesion-wise agreement, Dice and volume differences; bad input -> one line on stderr and exit 1."""
    import json
    import sys
    from pathlib import Path

    from inference.biomarkers import MetricsError
    from inference.lesion_agreement import compare_lesions

    names = [n.strip() for n in str(args.names).split(",")]
    try:
        if len(names) != 2 or not all(names):
            raise ValueError(f"--names takes two names separated by a comma, got {args.names!r}")
        a, affine = _load_mask(Path(args.a), names[0])
        b, b_affine = _load_mask(Path(args.b), names[1])
        if a.shape != b.shape or not _same_geometry(affine, b_affine):
            raise ValueError(f"{args.a} and {args.b} are not on the same grid ({a.shape} and {b.shape}); "
                             "compare masks of the same image")
        if args.png and not args.image:
            raise ValueError("--png needs --image, the image the masks were drawn on")
        agreement = compare_lesions(a, b, affine)
        if args.png:
            _comparison_png(Path(args.image), a, b, affine, (names[0], names[1]), Path(args.png))
        if args.json:
            Path(args.json).write_text(json.dumps({"a": str(args.a), "b": str(args.b), "names": names,
                                                   **agreement.to_json()}, indent=2) + "\n")
    except (MetricsError, ValueError, OSError) as exc:
        print(f"compare-lesions: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 1
    print(agreement_summary(agreement, names[0], names[1]))
    return 0


def _comparison_png(image_path: "Path", a, b, affine, names: tuple[str, str], out: "Path") -> None:
    from inference.qc import render_comparison
    from inference.volume import load_volume

    volume = load_volume(image_path)
    if volume.array.shape != a.shape or not _same_geometry(volume.affine, affine):
        raise ValueError(f"--image {image_path} is not on the masks' grid ({volume.array.shape} and {a.shape})")
    render_comparison(volume.array, a, b, affine, names).save(out)


def agreement_summary(agreement: "LesionAgreement", name_a: str, name_b: str) -> str:
    """Counts, volumes, matched groups and the rates, a line each."""
    def rate(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    lines = [
        f"{name_a}: {agreement.a_count} lesion(s), {sum(agreement.a_volumes_mm3):.1f} mm3 "
        f"({', '.join(f'{v:.1f}' for v in agreement.a_volumes_mm3) or '-'})",
        f"{name_b}: {agreement.b_count} lesion(s), {sum(agreement.b_volumes_mm3):.1f} mm3 "
        f"({', '.join(f'{v:.1f}' for v in agreement.b_volumes_mm3) or '-'})",
        f"lesion-wise: {name_a} found by {name_b} {rate(agreement.recall)}, {name_b} found by {name_a} "
        f"{rate(agreement.precision)}, F1 {rate(agreement.f1)}; voxel Dice {rate(agreement.dice)}",
    ]
    for g in agreement.groups:
        lines.append(f"  matched {name_a} {list(g.a_labels)} {g.a_volume_mm3:.1f} mm3 ~ {name_b} {list(g.b_labels)} "
                     f"{g.b_volume_mm3:.1f} mm3: difference {g.volume_difference_mm3:+.1f} mm3, Dice {g.dice:.2f}")
    if agreement.a_only:
        lines.append(f"  only {name_a}: {list(agreement.a_only)}")
    if agreement.b_only:
        lines.append(f"  only {name_b}: {list(agreement.b_only)}")
    return "\n".join(lines)
