"""Offline tools on files: `dicom-node segment` and `dicom-node analyze-lesion`.

Each command has `add_*_arguments(parser)` and `run_*(args) -> exit code`; dicom_node.cli wires
them into the one `dicom-node` console script.
"""
from __future__ import annotations

import argparse


def add_segment_arguments(p: argparse.ArgumentParser) -> None:
    raise NotImplementedError  # filled by the inference runtime work


def run_segment(args: argparse.Namespace) -> int:
    raise NotImplementedError


def add_analyze_lesion_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `dicom-node analyze-lesion` (the sct_analyze_lesion measurements on two NIfTI masks)."""
    p.add_argument("--lesion", required=True, metavar="L.nii.gz", help="binary lesion mask (0/1), NIfTI")
    p.add_argument("--cord", required=True, metavar="C.nii.gz", help="spinal cord mask (cord includes lesion), same grid")
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
            raise MetricsError(f"{args.lesion} and {args.cord} have different affines; resample the cord onto the lesion grid")
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
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises several types for unreadable files
        raise MetricsError(f"cannot read {what} mask {path} as NIfTI ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
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
        f"total length {result['total_length_mm']:.2f} mm, max axial damage ratio {result['max_axial_damage_ratio']:.3f}",
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
