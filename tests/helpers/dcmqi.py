"""dcmqi (what 3D Slicer's QuantitativeReporting reads DICOM SEG and TID 1500 SR with) as a test reader.

The PyPI wheel ``dcmqi`` (test extra) ships the binaries and puts console scripts next to the
interpreter. ``label_images`` runs segimage2itkimage and lays each segment's label image onto our
volume grid through patient coordinates (dcmqi crops a sparse SEG to the slices it covers, so the
grids differ), which is the comparison a user of Slicer would see.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np


def dcmqi_tool(name: str) -> str:
    """Path of a dcmqi program: the console script installed with this interpreter's dcmqi wheel."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found: pip install dcmqi (it is in the test extra: pip install -e '.[test]')")
    return found


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}: {proc.stderr[-800:]}")
    return proc


def on_grid(values: np.ndarray, affine: np.ndarray, target_affine: np.ndarray,
            shape: tuple[int, int, int]) -> np.ndarray:
    """``values`` (index -> RAS by ``affine``) sampled at the voxel centres of the target grid.

    Every target voxel must fall on a voxel centre of ``values`` (same lattice: a SEG's frames sit on
    its source's slices) or outside it (read as 0); and no non-zero voxel may be left outside the
    target grid. Either failing means the geometry disagrees, and the comparison fails loudly.
    """
    ijk = np.indices(shape).reshape(3, -1)
    ras = target_affine @ np.vstack([ijk, np.ones(ijk.shape[1])])
    src = (np.linalg.inv(affine) @ ras)[:3]
    idx = np.rint(src).astype(int)
    inside = np.all((idx >= 0) & (idx < np.array(values.shape)[:, None]), axis=0)
    off = np.abs(src - idx)[:, inside].max(initial=0.0)
    if off > 1e-2:
        raise AssertionError(f"grids do not share voxel centres (off by {off:.3f} voxel)")
    out = np.zeros(ijk.shape[1], dtype=values.dtype)
    out[inside] = values[idx[0, inside], idx[1, inside], idx[2, inside]]
    if np.count_nonzero(out) != np.count_nonzero(values):
        raise AssertionError(f"{np.count_nonzero(values) - np.count_nonzero(out)} non-zero voxels lie off the grid")
    return out.reshape(shape)


def label_images(seg_path: Path, out_dir: Path, target_affine: np.ndarray,
                 shape: tuple[int, int, int]) -> dict[int, tuple[str, np.ndarray]]:
    """segimage2itkimage on ``seg_path``: segment number -> (segment label, values on the target grid).

    Values are what dcmqi writes: the label ID for BINARY, the stored 0..255 for FRACTIONAL.
    """
    import nibabel as nib

    out_dir.mkdir(parents=True, exist_ok=True)
    _run([dcmqi_tool("segimage2itkimage"), "--inputDICOM", str(seg_path), "--outputDirectory", str(out_dir),
          "-t", "nifti"])
    meta = json.loads((out_dir / "meta.json").read_text())
    result: dict[int, tuple[str, np.ndarray]] = {}
    for n, segments in enumerate(meta["segmentAttributes"], 1):
        assert len(segments) == 1, f"{out_dir}/{n}.nii.gz holds {len(segments)} segments, expected one per file"
        image = nib.load(str(out_dir / f"{n}.nii.gz"))  # nibabel: [i, j, k] and voxel -> RAS, as our Volume
        values = np.asarray(image.dataobj)
        number = int(segments[0]["labelID"])
        result[number] = (str(segments[0]["SegmentLabel"]), on_grid(values, image.affine, target_affine, shape))
    return result


def tid1500_json(sr_path: Path, out_dir: Path) -> tuple[dict[str, Any], str]:
    """tid1500reader on ``sr_path``: its JSON and what it printed on stderr (warnings)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / "sr.json"
    proc = _run([dcmqi_tool("tid1500reader"), "--inputDICOM", str(sr_path), "--outputMetadata", str(target)])
    return json.loads(target.read_text()), proc.stderr
