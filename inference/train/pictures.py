"""One picture per lesion family: a validation subject's image with that family's lesions, and its label.

    python -m inference.train.pictures --out inference/models/spinecord-t2/families [--case errsm_21] [--seed 101]

Why: a reader of the model card should see what each family's lesions look like before
trusting numbers measured on them. Each PNG shows, side by side at 3x, the sagittal slice
through the middle of the largest lesion (image, then image with the label in red) and the
axial slice through its centre.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from inference.train.families import FAMILY_NAMES, check_families

if TYPE_CHECKING:
    from PIL import Image


def _to_rgb(image: np.ndarray, label: np.ndarray, hi: float) -> np.ndarray:
    v = np.clip(image / max(hi, 1e-6), 0.0, 1.0)
    rgb = np.stack([v, v, v], axis=-1)
    tinted = rgb * 0.55 + np.array([0.45, 0.0, 0.0]) * label[..., None]
    return np.concatenate([rgb, np.where(label[..., None], tinted, rgb)], axis=1)


def picture(case: str, family_name: str, seed: int) -> Image.Image:  # PIL imported lazily
    from PIL import Image

    from inference import preprocess
    from inference.lesion_filter import label_lesions
    from inference.train.evaluate import painted_case

    image, _, lesion, affine = painted_case(case, seed, None if family_name != "painter" else 3, family_name)
    reo = preprocess.reorient_to_ras(affine, image.shape)
    sp = preprocess.voxel_sizes(reo.affine_ras)
    img, les = reo.forward(image), reo.forward(lesion.astype(np.uint8)) > 0
    labels, n = label_lesions(les)
    if n == 0:
        raise ValueError(f"{family_name}: seed {seed} painted no lesion into {case}; try another seed")
    biggest = int(np.bincount(labels.ravel())[1:].argmax()) + 1
    idx = np.argwhere(labels == biggest)
    cx, cy, cz = (int(round(v)) for v in np.median(idx, axis=0))
    hi = float(np.percentile(img, 99.5))
    z0, z1 = max(idx[:, 2].min() - 30, 0), min(idx[:, 2].max() + 31, img.shape[2])
    y0, y1 = max(cy - 30, 0), min(cy + 31, img.shape[1])
    sag = _to_rgb(img[cx, y0:y1, z0:z1].T[::-1], les[cx, y0:y1, z0:z1].T[::-1], hi)  # rows: superior first
    x0, x1 = max(cx - 25, 0), min(cx + 26, img.shape[0])
    ax = _to_rgb(img[x0:x1, y0:y1, cz].T[::-1], les[x0:x1, y0:y1, cz].T[::-1], hi)  # rows: anterior first
    scale = 3.0
    parts = [Image.fromarray((sag * 255).astype(np.uint8)).resize(  # to millimetres, then 3x
                 (int(sag.shape[1] * sp[1] * scale), int(sag.shape[0] * sp[2] * scale))),
             Image.fromarray((ax * 255).astype(np.uint8)).resize(
                 (int(ax.shape[1] * sp[0] * scale), int(ax.shape[0] * sp[1] * scale)))]
    out = Image.new("RGB", (parts[0].width + parts[1].width + 8, max(p.height for p in parts)), (0, 0, 0))
    out.paste(parts[0], (0, 0))
    out.paste(parts[1], (parts[0].width + 8, 0))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m inference.train.pictures", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--case", default="errsm_21", help="validation case to paint into")
    p.add_argument("--seed", type=int, default=101)
    p.add_argument("--families", nargs="+", default=list(FAMILY_NAMES))
    args = p.parse_args(argv)
    try:
        families = check_families(args.families, "--families")
        args.out.mkdir(parents=True, exist_ok=True)
        for name in families:
            path = args.out / f"{name}.png"
            picture(args.case, name, args.seed).save(path, optimize=True)
            print(f"wrote {path}")
    except (ValueError, OSError) as exc:
        print(f"pictures: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
