"""A sagittal view of the spine straightened along the spinal cord.

Why straighten: the vertebral column runs beside the cord, so once the image is resampled in
planes perpendicular to the cord's centreline, every intervertebral disc becomes a horizontal
band at a known distance in front of the cord, whatever the neck's curvature. Disc search and
template matching then work on rows (arc length along the cord, 1 mm apart) and columns
(distance from the centreline along the anterior normal, in mm), the same frame in which the
PAM50 template is already straight.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import interpolate, ndimage, spatial

from inference.rpi import RpiFrame, slice_centres

ROW_STEP_MM = 1.0  # arc-length spacing of the straightened rows
DEPTH_MM = (-25.0, 45.0)  # columns: posterior (negative) to anterior of the centreline
LATERAL_HALF_MM = 2  # average this many mm either side of the mid-sagittal plane (noise)
CENTRELINE_SMOOTHING_MM2 = 1.0  # spline smoothing per cord slice (mm^2): follows the lordosis, not the voxels


class StraightenError(ValueError):
    """The cord mask cannot carry a centreline (empty, one slice, shape mismatch)."""


@dataclass(frozen=True)
class Straightened:
    """Rows = arc length along the cord from its inferior end; columns = depth from the centreline."""

    image: np.ndarray  # (rows, columns) float32, 0 outside the field of view
    inside: np.ndarray  # (rows, columns) bool: the sample fell inside the image
    arc_mm: np.ndarray  # (rows,) arc length of each row
    depth_mm: np.ndarray  # (columns,) signed distance along the anterior normal
    centre_mm: np.ndarray  # (rows, 3) centreline point of each row, RPI millimetres (index * spacing)
    frame: RpiFrame

    def arc_of_points(self, points_mm: np.ndarray) -> np.ndarray:
        """Arc length of the centreline sample nearest to each RPI point (mm): a voxel's position along the cord."""
        tree = spatial.cKDTree(self.centre_mm)
        _, idx = tree.query(np.asarray(points_mm, dtype=np.float64).reshape(-1, 3))
        return np.asarray(self.arc_mm[idx], dtype=np.float64)

    def arc_of_slice(self, z_rpi: float) -> float:
        """Arc length where the centreline crosses RPI axial slice index z_rpi (clamped to the cord)."""
        pz = self.frame.spacing[2]
        return float(np.interp(z_rpi * pz, self.centre_mm[:, 2], self.arc_mm))

    def slice_of_arc(self, arc: float) -> float:
        """RPI axial slice index (fractional) where the centreline is at arc length `arc`."""
        return float(np.interp(arc, self.arc_mm, self.centre_mm[:, 2])) / self.frame.spacing[2]

    def point_of_arc(self, arc: float) -> np.ndarray:
        """Centreline point (RPI mm) at arc length `arc`."""
        return np.array([np.interp(arc, self.arc_mm, self.centre_mm[:, i]) for i in range(3)])


def straighten(image: np.ndarray, cord: np.ndarray, affine: np.ndarray) -> Straightened:
    """Resample `image` in planes perpendicular to the centreline of `cord` (both in the same grid)."""
    if image.shape != cord.shape or image.ndim != 3:
        raise StraightenError(f"image {image.shape} and cord mask {cord.shape} must be 3D and of the same shape")
    frame = RpiFrame.from_affine(np.asarray(affine, dtype=np.float64), image.shape)
    img = np.ascontiguousarray(frame.to_rpi(image), dtype=np.float32)
    mask = frame.to_rpi(np.asarray(cord)) > 0.5
    px, py, pz = frame.spacing
    zs, x_mean, y_mean = slice_centres(mask)
    if zs.size < 4:
        raise StraightenError(f"the cord mask covers {zs.size} axial slices; a centreline needs at least 4")
    x_mm, y_mm, z_mm = x_mean * px, y_mean * py, zs * pz
    spline_x = interpolate.UnivariateSpline(z_mm, x_mm, s=zs.size * CENTRELINE_SMOOTHING_MM2)
    spline_y = interpolate.UnivariateSpline(z_mm, y_mm, s=zs.size * CENTRELINE_SMOOTHING_MM2)

    # arc length on a fine z grid, then rows at uniform arc steps
    z_fine = np.linspace(z_mm[0], z_mm[-1], max(int((z_mm[-1] - z_mm[0]) / 0.25), 2) + 1)
    speed = np.sqrt(1 + spline_x.derivative()(z_fine) ** 2 + spline_y.derivative()(z_fine) ** 2)
    arc_fine = np.concatenate([[0.0], np.cumsum((speed[1:] + speed[:-1]) / 2 * np.diff(z_fine))])
    arc = np.arange(0.0, arc_fine[-1] + 1e-9, ROW_STEP_MM)
    z_rows = np.interp(arc, arc_fine, z_fine)
    cx, cy = spline_x(z_rows), spline_y(z_rows)
    slope_y = spline_y.derivative()(z_rows)
    # anterior normal in the sagittal (y, z) plane, perpendicular to the tangent (dy/dz, 1)
    norm = np.sqrt(slope_y**2 + 1)
    ny, nz = 1 / norm, -slope_y / norm

    depth = np.arange(DEPTH_MM[0], DEPTH_MM[1] + 1e-9, ROW_STEP_MM)
    total = np.zeros((arc.size, depth.size), dtype=np.float64)
    inside = np.ones((arc.size, depth.size), dtype=bool)
    shape = np.array(img.shape) - 1
    offsets = np.arange(-LATERAL_HALF_MM, LATERAL_HALF_MM + 1, dtype=np.float64)
    for off in offsets:
        coords = np.stack([
            np.broadcast_to((cx[:, None] + off) / px, total.shape),
            (cy[:, None] + depth[None, :] * ny[:, None]) / py,
            (z_rows[:, None] + depth[None, :] * nz[:, None]) / pz,
        ])
        inside &= np.all((coords >= 0) & (coords <= shape[:, None, None]), axis=0)
        total += ndimage.map_coordinates(img, coords, order=1, mode="nearest")
    sampled = np.where(inside, total / offsets.size, 0.0).astype(np.float32)
    centre = np.stack([cx, cy, z_rows], axis=1)
    return Straightened(sampled, inside, arc, depth, centre, frame)
