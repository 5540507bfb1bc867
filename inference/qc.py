"""Quality-control picture: where did the model put the cord and the lesions?

One PNG a human can judge in two seconds: the mid-sagittal slice through the cord and a few
axial slices zoomed on the cord, cord in green (light fill + outline), lesions in red.
Views follow radiological display: sagittal with superior up and anterior left; axial with
anterior up and the patient's right on the screen's left. Pillow + numpy only, so the results
engineer can reuse it (e.g. for secondary-capture images).
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from inference.preprocess import reorient_to_ras, voxel_sizes

CORD_RGB = np.array([40, 220, 60], np.float32)
LESION_RGB = np.array([235, 30, 30], np.float32)
SAG_HEIGHT = 512  # pixels of the sagittal panel
AX_SIZE = 240  # pixels of one axial panel (square)
AX_FOV_MM = 48.0  # axial panels show this much around the cord
TEXT_RGB = (255, 255, 0)


def _window(image: np.ndarray) -> tuple[float, float]:
    body = image[image > 0]
    vals = body if body.size > 100 else image.ravel()
    lo, hi = np.percentile(vals, [0.5, 99.5])
    return float(lo), float(max(hi, lo + 1e-6))


def _outline(mask: np.ndarray) -> np.ndarray:
    """Mask pixels with at least one 4-neighbour outside the mask."""
    m = np.pad(mask, 1)
    inner = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return mask & ~inner


def _axial_window(shape: tuple[int, ...], centre: tuple[float, float], spacing: tuple[float, float]
                  ) -> tuple[slice, slice, tuple[int, int]]:
    """The AX_FOV_MM square around ``centre`` of an axial slice (clipped to the image), and the pixel
    size of its panel (the longer side AX_SIZE, square pixels)."""
    (cx, cy), (sx, sy) = centre, spacing
    hx, hy = AX_FOV_MM / 2 / sx, AX_FOV_MM / 2 / sy
    xs = slice(max(0, int(cx - hx)), min(shape[0], int(cx + hx) + 1))
    ys = slice(max(0, int(cy - hy)), min(shape[1], int(cy + hy) + 1))
    w_mm, h_mm = (xs.stop - xs.start) * sx, (ys.stop - ys.start) * sy
    s = AX_SIZE / max(w_mm, h_mm)
    return xs, ys, (int(round(w_mm * s)), int(round(h_mm * s)))


def _panel(gray: np.ndarray, cord: np.ndarray, lesion: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """One 2D view (rows, cols already in display order) resized to `size` (w, h) with overlays."""
    w, h = max(1, size[0]), max(1, size[1])
    g = np.asarray(Image.fromarray(gray).resize((w, h), Image.Resampling.BILINEAR), np.float32)
    c = np.asarray(Image.fromarray(cord.astype(np.uint8) * 255).resize((w, h), Image.Resampling.NEAREST)) > 0
    les = np.asarray(Image.fromarray(lesion.astype(np.uint8) * 255).resize((w, h), Image.Resampling.NEAREST)) > 0
    rgb = np.repeat(g[..., None], 3, axis=2)
    rgb[c] = 0.7 * rgb[c] + 0.3 * CORD_RGB
    rgb[_outline(c)] = CORD_RGB
    rgb[les] = 0.45 * rgb[les] + 0.55 * LESION_RGB
    rgb[_outline(les)] = LESION_RGB
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")


def _axial_slices(cord: np.ndarray, lesion: np.ndarray, n: int = 4) -> list[int]:
    """The slice with most lesion (if any) plus slices spread along the cord's extent."""
    nz = cord.shape[2]
    zs = np.nonzero(cord.any(axis=(0, 1)))[0]
    picks: list[int] = []
    if lesion.any():
        picks.append(int(lesion.sum(axis=(0, 1)).argmax()))
    if zs.size:
        for q in np.linspace(0.2, 0.8, n):
            picks.append(int(zs[int(round(q * (zs.size - 1)))]))
    else:
        picks += [int(round(q * (nz - 1))) for q in np.linspace(0.2, 0.8, n)]
    seen: list[int] = []
    for z in picks:
        if z not in seen:
            seen.append(z)
    return sorted(seen[:n], reverse=True)  # superior first


def render_overlay(image: np.ndarray, cord: np.ndarray, lesion: np.ndarray, affine: np.ndarray,
                   title: str | None = None) -> Image.Image:
    """Mid-sagittal + axial views with cord (green) and lesion (red) overlays; arrays share a grid."""
    if not (image.shape == cord.shape == lesion.shape) or image.ndim != 3:
        raise ValueError(f"image {image.shape}, cord {cord.shape} and lesion {lesion.shape} must be "
                         f"3D arrays of one shape")
    reo = reorient_to_ras(affine, image.shape)
    img = reo.forward(np.asarray(image, np.float32))
    cd = reo.forward(np.asarray(cord) > 0)
    ls = reo.forward(np.asarray(lesion) > 0)
    sx, sy, sz = voxel_sizes(reo.affine_ras)
    lo, hi = _window(img)
    gray = (np.clip((img - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)

    # sagittal: the R-L plane holding most cord; rows = S->I, cols = A->P
    x0 = int(cd.sum(axis=(1, 2)).argmax()) if cd.any() else img.shape[0] // 2
    view = lambda a: a[x0].T[::-1, ::-1]  # noqa: E731
    ny, nz = img.shape[1], img.shape[2]
    scale = SAG_HEIGHT / (nz * sz)
    sag = _panel(view(gray), view(cd), view(ls), (int(round(ny * sy * scale)), SAG_HEIGHT))

    zs = _axial_slices(cd, ls)
    axials: list[Image.Image] = []
    for z in zs:
        sl = (slice(None), slice(None), z)
        if cd[sl].any():  # zoom on the cord
            cx, cy = np.argwhere(cd[sl]).mean(0)
        else:
            cx, cy = img.shape[0] / 2, img.shape[1] / 2
        xs, ys, size = _axial_window(img.shape, (cx, cy), (sx, sy))
        ax_gray, ax_cd, ax_ls = (a[xs, ys, z].T[::-1, ::-1] for a in (gray, cd, ls))  # rows = A->P, cols = R->L
        panel = _panel(ax_gray, ax_cd, ax_ls, size)
        ImageDraw.Draw(panel).text((4, 2), f"axial {z}", fill=TEXT_RGB)
        axials.append(panel)

    # sagittal ticks where the axial slices are
    draw = ImageDraw.Draw(sag)
    for z in zs:
        row = int((nz - 0.5 - z) * sz * scale)
        draw.line([(0, row), (8, row)], fill=TEXT_RGB, width=2)
        draw.text((10, max(0, row - 6)), str(z), fill=TEXT_RGB)
    draw.text((4, 2), f"sagittal {x0}", fill=TEXT_RGB)

    cols = 2
    rows = max(1, (len(axials) + cols - 1) // cols)
    header = 16 if title else 0
    width = sag.width + cols * AX_SIZE + 4
    height = header + max(SAG_HEIGHT, rows * AX_SIZE)
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    canvas.paste(sag, (0, header))
    for i, panel in enumerate(axials):
        r, c = divmod(i, cols)
        canvas.paste(panel, (sag.width + 4 + c * AX_SIZE, header + r * AX_SIZE))
    if title:
        ImageDraw.Draw(canvas).text((4, 2), title, fill=(255, 255, 255))
    return canvas


A_RGB = np.array([255, 170, 0], np.float32)  # first mask of a comparison: orange outline
B_RGB = np.array([0, 200, 255], np.float32)  # second: cyan outline


def render_comparison(image: np.ndarray, a: np.ndarray, b: np.ndarray, affine: np.ndarray, names: tuple[str, str],
                      max_slices: int = 6) -> Image.Image:
    """Axial slices holding lesions of either mask, each shown plain and with both masks outlined.

    Why plain beside outlined: on real data there is no truth to show, so the reader judges the
    hyperintensity itself. Zoomed AX_FOV_MM around the lesions of the slice; display as render_overlay."""
    if not (image.shape == a.shape == b.shape) or image.ndim != 3:
        raise ValueError(f"image {image.shape} and masks {a.shape}, {b.shape} must be 3D arrays of one shape")
    reo = reorient_to_ras(affine, image.shape)
    img = reo.forward(np.asarray(image, np.float32))
    ma, mb = reo.forward(np.asarray(a) > 0), reo.forward(np.asarray(b) > 0)
    sx, sy, _ = voxel_sizes(reo.affine_ras)
    lo, hi = _window(img)
    gray = (np.clip((img - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
    union = ma | mb
    zs = [int(z) for z in np.nonzero(union.any(axis=(0, 1)))[0]]
    if len(zs) > max_slices:
        zs = sorted(sorted(zs, key=lambda z: -int(union[:, :, z].sum()))[:max_slices])
    rows = []
    for z in sorted(zs, reverse=True):  # superior first
        cx, cy = np.argwhere(union[:, :, z]).mean(0)
        xs, ys, size = _axial_window(img.shape, (cx, cy), (sx, sy))
        g, pa, pb = (m[xs, ys, z].T[::-1, ::-1] for m in (gray, ma, mb))  # rows = A->P, cols = R->L
        plain = Image.fromarray(g).resize(size, Image.Resampling.BILINEAR).convert("RGB")
        rgb = np.asarray(plain, np.float32).copy()
        for mask, colour in ((pa, A_RGB), (pb, B_RGB)):
            big = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)) > 0
            rgb[_outline(big)] = colour
        outlined = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
        ImageDraw.Draw(plain).text((4, 2), f"axial {z}", fill=TEXT_RGB)
        rows.append((plain, outlined))
    header = 16
    width = 2 * AX_SIZE + 4
    canvas = Image.new("RGB", (width, header + max(1, len(rows)) * (AX_SIZE + 4)), (0, 0, 0))
    for i, (plain, outlined) in enumerate(rows):
        canvas.paste(plain, (0, header + i * (AX_SIZE + 4)))
        canvas.paste(outlined, (AX_SIZE + 4, header + i * (AX_SIZE + 4)))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 2), names[0], fill=tuple(int(v) for v in A_RGB))
    draw.text((4 + 8 * (len(names[0]) + 2), 2), names[1], fill=tuple(int(v) for v in B_RGB))
    if not rows:
        draw.text((4, header + 4), "no lesion in either mask", fill=TEXT_RGB)
    return canvas
