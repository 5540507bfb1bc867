"""Vertebral levels of the spinal cord from a sagittal T2 image and its cord mask.

How: the image is straightened along the cord (inference.straighten) and compared with the
PAM50 T2 template, straight by construction, whose disc positions are known
(inference/reference/pam50_t2_straight.npz, built by scripts/make_reference.py).
1. Anchor: the C2-C3 disc. Each disc-like row (local match to the template's C2-C3 disc) is
   plausible if the image says so: the template's C2 to C4 region matches around it (scale
   0.85-1.15), it looks like the C2-C3 disc, and no better disc lies one C2 height above it (C2
   has none: its body runs up into the dens); together at least MIN_ANCHOR_SCORE. Plausible ones
   are ranked by three cues, equally weighted (each a correlation): the region match, the disc's
   horizontal band (the band-only match, which unlike the whole patch does not find every row
   disc-like), and the absence of such a band one C2 height above. The best must beat every other
   candidate by ANCHOR_MARGIN, the implausible ones too (a candidate the gate rejects on a near tie
   but the ranking prefers makes the anchor unsure), else the levels are unknown.
   The cord's CSA profile against the normative one (inference.vertebrae_shape) is recorded with
   each candidate but not scored: it scores neighbouring discs alike (within 0.01 on every full
   scan), so it cannot tell C2-C3 from C3-C4, and on crops of the landmark scans adding it to the
   score turned one unknown into a wrong level.
2. Counting: from the anchor down, each next disc is looked for where the template's spacing
   (scaled by the subject's own spacing so far) puts it, matched to that disc's template patch;
   then, the same way, the C1-C2 junction above the anchor (the top of the C2 level), as
   sct_label_vertebrae does. A C2-C3 disc given by the caller (as SCT's -initz) is refined to the
   best disc match within one disc half-height (SCT searches around its -initz too).
3. Levels: SCT's numbering (disc 3 = C2-C3, level 3 = C3 between discs 3 and 4); each cord
   voxel takes the level of its nearest centreline point, as sct_label_vertebrae projects
   discs onto the cord.
When the field of view cannot give a sure count (axial slices, no C2, too few discs, two
equally good anchors) the answer is "unknown" with the reason: a wrong level is worse than none.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

import numpy as np
from scipy import ndimage

from inference.straighten import Straightened, StraightenError, straighten
from inference.vertebrae_shape import cord_profile, shape_match

MAX_SI_SPACING_MM = 2.0  # discs are 4-6 mm thick: slices further apart along the cord cannot show them
MIN_CORD_LENGTH_MM = 60.0  # C2 body + two discs below it, at the smallest scale
SCALES = (0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.15)  # subject spacing / template spacing
NORM_SIGMA_MM = 6.0  # local contrast normalisation (scanner and coil shading differ from the template's)
COARSE_WINDOW_MM = (-40.0, 30.0)  # template rows around the C2-C3 disc: C4 body up to the dens
MIN_ABOVE_MM = 15.0  # of that window, the C2 body at least must be in the field of view
DISC_HALF_MM = 5.0  # half-height of a disc patch: the disc and its two end plates
DISC_COLUMNS_MM = (4.0, 25.0)  # disc patches: in front of the cord, across the vertebral bodies
DEPTH_SHIFTS_MM = tuple(range(-6, 9))  # the column sits nearer or further from the cord than the template's
MIN_DISC_MATCH = 0.5  # a row is a disc candidate from this local correlation up
ANCHOR_MARGIN = 0.1  # best anchor score minus the runner-up's, below which the anchor is ambiguous
MIN_ANCHOR_SCORE = 0.45  # on the image cues alone: the C2-C3 discs found score 0.54-0.64; a crop without C2 scored 0.36
SEARCH_FRACTION = 0.3  # next disc searched within +-30 % of the expected spacing
MIN_FOUND_MATCH = 0.3  # a disc match below this is not a disc: counting stops there
PRIOR_WEIGHT = 0.1  # match units lost at the edge of the search window
MIN_PATCH_INSIDE = 0.7  # a disc at the edge of the field of view is matched on the rows that remain
LEVEL_NAMES = {1: "C1", 2: "C2", 3: "C3", 4: "C4", 5: "C5", 6: "C6", 7: "C7"}


def level_name(level: int) -> str:
    """SCT's level number as a radiologist writes it: 1-7 = C1-C7, 8-19 = T1-T12, 20-24 = L1-L5."""
    if level in LEVEL_NAMES:
        return LEVEL_NAMES[level]
    if 8 <= level <= 19:
        return f"T{level - 7}"
    if 20 <= level <= 24:
        return f"L{level - 19}"
    raise ValueError(f"no vertebral level {level} (1 = C1 ... 24 = L5)")


@dataclass(frozen=True)
class Template:
    image: np.ndarray  # (rows, columns), rows inferior first
    row_mm: float
    depth_mm: np.ndarray
    disc_mm: dict[int, float]  # disc label -> position from the template's inferior end

    def gap(self, upper: int, lower: int) -> float:
        return self.disc_mm[upper] - self.disc_mm[lower]


@lru_cache(maxsize=1)
def load_template() -> Template:
    """The straight PAM50 T2 slab shipped with the package (see scripts/make_reference.py)."""
    ref = resources.files("inference").joinpath("reference").joinpath("pam50_t2_straight.npz")
    with ref.open("rb") as fh, np.load(fh) as data:
        labels = [int(v) for v in data["disc_labels"]]
        return Template(
            image=np.asarray(data["image"], dtype=np.float64),
            row_mm=float(data["row_mm"]),
            depth_mm=np.asarray(data["depth_mm"], dtype=np.float64),
            disc_mm={lab: float(v) for lab, v in zip(labels, data["disc_mm"])},
        )


@dataclass(frozen=True)
class Disc:
    label: int  # SCT disc label: 3 = C2-C3, 4 = C3-C4, ...
    arc_mm: float  # position along the cord (straightened row)
    match: float  # local correlation with the template's disc (NaN: placed by spacing only)


@dataclass
class VertebralLevels:
    """Discs found along the cord, or the reason there are none. ``known`` is False for "unknown"."""

    known: bool
    reason: str  # why unknown, or how the anchor was found
    discs: tuple[Disc, ...] = ()
    scale: float = math.nan  # subject / template spacing
    straight: Straightened | None = None
    evidence: list[dict[str, float]] = field(default_factory=list)  # anchor candidates and their cues

    def disc_arc(self, label: int) -> float | None:
        for d in self.discs:
            if d.label == label:
                return d.arc_mm
        return None

    def level_at_arc(self, arc: np.ndarray) -> np.ndarray:
        """Level number at each arc position (0 = not labelled: above C1 or below the last disc found)."""
        arc = np.asarray(arc, dtype=np.float64)
        out = np.zeros(arc.shape, dtype=np.int16)
        if not self.known or not self.discs:
            return out
        bounds = self.level_bounds()
        for level, (lo, hi) in bounds.items():
            out[(arc > lo) & (arc <= hi)] = level
        return out

    def level_bounds(self) -> dict[int, tuple[float, float]]:
        """Level -> (inferior, superior] arc range; the level below the last disc ends one spacing further."""
        discs = sorted(self.discs, key=lambda d: d.label)
        bounds: dict[int, tuple[float, float]] = {}
        template = load_template()
        for upper, lower in zip(discs, discs[1:]):
            bounds[upper.label] = (lower.arc_mm, upper.arc_mm)
        top = discs[0]
        if top.label - 1 in template.disc_mm:  # the level above the top disc (C2 above C2-C3: up to "disc 2")
            height = template.gap(top.label - 1, top.label) * self.scale
            bounds[top.label - 1] = (top.arc_mm, top.arc_mm + height)
        last = discs[-1]
        if last.label + 1 in template.disc_mm:
            height = template.gap(last.label, last.label + 1) * self.scale
            bounds[last.label] = (last.arc_mm - height, last.arc_mm)
        return bounds

    def body_centre_arc(self, level: int) -> float | None:
        """Arc position of the middle of a level (the vertebral body's centre projected on the cord)."""
        bounds = self.level_bounds()
        if level not in bounds:
            return None
        lo, hi = bounds[level]
        return (lo + hi) / 2

    def label_cord(self, cord: np.ndarray) -> np.ndarray:
        """Cord mask (input grid) with each voxel set to its level (0 = cord outside the labelled levels)."""
        out = np.zeros(cord.shape, dtype=np.int16)
        if not self.known or self.straight is None:
            return out
        frame = self.straight.frame
        mask_rpi = frame.to_rpi(np.asarray(cord)) > 0.5
        pts = np.argwhere(mask_rpi).astype(np.float64) * np.asarray(frame.spacing)
        levels_rpi = np.zeros(mask_rpi.shape, dtype=np.int16)
        if pts.size:
            levels_rpi[mask_rpi] = self.level_at_arc(self.straight.arc_of_points(pts))
        return np.ascontiguousarray(frame.from_rpi(levels_rpi))

    def slice_levels(self, cord: np.ndarray) -> list[int]:
        """Level of each RPI axial slice, SCT's rule: the rounded mean level of its labelled cord voxels (0: none)."""
        if self.straight is None:
            return []
        labelled = self.straight.frame.to_rpi(self.label_cord(cord)).astype(np.float64)
        out = []
        for z in range(labelled.shape[2]):
            values = labelled[:, :, z][labelled[:, :, z] > 0]
            out.append(int(math.floor(values.mean() + 0.5)) if values.size else 0)
        return out


def _normalise(image: np.ndarray, valid: np.ndarray, sigma_rows: float, sigma_cols: float) -> np.ndarray:
    """Local zero-mean unit-variance contrast, so template and subject compare whatever their scanners."""
    sig = (sigma_rows, sigma_cols)
    weight = ndimage.gaussian_filter(valid.astype(np.float64), sig) + 1e-6
    mean = ndimage.gaussian_filter(image * valid, sig) / weight
    var = ndimage.gaussian_filter((image - mean) ** 2 * valid, sig) / weight
    return np.where(valid, (image - mean) / np.sqrt(var + 1e-6), 0.0)


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else -1.0


class _Matcher:
    """Template rows resampled at a subject scale, compared with straightened subject rows."""

    def __init__(self, straight: Straightened, template: Template) -> None:
        self.subject = _normalise(straight.image.astype(np.float64), straight.inside, NORM_SIGMA_MM, NORM_SIGMA_MM)
        self.inside = straight.inside
        self.rows = straight.image.shape[0]
        self.template = template
        valid = template.image > 0
        self.tnorm = _normalise(template.image, valid, NORM_SIGMA_MM / template.row_mm, NORM_SIGMA_MM)
        self.depth = straight.depth_mm
        self._cache: dict[tuple[float, float, float, int], np.ndarray] = {}
        if not np.allclose(self.depth, template.depth_mm):
            raise ValueError("template and straightened columns differ: rebuild with scripts/make_reference.py")

    def template_rows(self, centre_mm: float, offsets: np.ndarray, scale: float) -> np.ndarray:
        """Template rows at centre + offsets/scale (offsets in subject mm from the matching subject row)."""
        key = (centre_mm, float(offsets[0]), scale, offsets.size)
        if key in self._cache:
            return self._cache[key]
        rows = (centre_mm + offsets / scale) / self.template.row_mm
        cols = np.arange(self.tnorm.shape[1], dtype=np.float64)
        grid = np.meshgrid(rows, cols, indexing="ij")
        out = np.asarray(ndimage.map_coordinates(self.tnorm, grid, order=1, mode="nearest"))
        self._cache[key] = out
        return out

    def window(self, anchor_row: int, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        rows = anchor_row + offsets.astype(int)
        if rows[0] < 0 or rows[-1] >= self.rows:
            return None
        return self.subject[rows], self.inside[rows]

    def partial_window(self, anchor_row: int, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """The rows of a patch that lie in the field of view (a disc at its edge), if most of them do."""
        rows = anchor_row + offsets.astype(int)
        keep = (rows >= 0) & (rows < self.rows)
        if keep.mean() < MIN_PATCH_INSIDE:
            return None
        return self.subject[rows[keep]], keep

    def coarse(self, anchor_row: int) -> tuple[float, float]:
        """Best correlation (and its scale) of the template's C2-C4 region centred on this row's disc."""
        best, best_scale = -1.0, math.nan
        d3 = self.template.disc_mm[3]
        for scale in SCALES:
            offsets = np.arange(math.ceil(COARSE_WINDOW_MM[0] * scale), math.floor(COARSE_WINDOW_MM[1] * scale) + 1)
            rows_idx = anchor_row + offsets
            if rows_idx[0] < 0 or anchor_row + MIN_ABOVE_MM * scale > self.rows - 1:
                continue  # C4 below or the base of C2 above is outside the field of view
            keep = rows_idx < self.rows  # the dens may be cut by the top of the field of view
            rows, inside = self.subject[rows_idx[keep]], self.inside[rows_idx[keep]]
            tmpl = self.template_rows(d3, offsets.astype(np.float64), scale)[keep]
            value = _ncc(rows[inside], tmpl[inside])
            if value > best:
                best, best_scale = value, scale
        return best, best_scale

    def disc_match(self, row: int, label: int, scale: float, bands_only: bool = False) -> float:
        """Correlation of the template's disc `label` with the subject around `row`, best over column shifts.

        bands_only: each column's mean over the patch is removed first, so only what changes from row to
        row (a disc's horizontal band) is compared, not the columns' own profile (cord, CSF, the front of
        the vertebral bodies), which every row shares and which makes any row look 0.6-0.9 disc-like.
        """
        half = int(round(DISC_HALF_MM))
        offsets = np.arange(-half, half + 1)
        got = self.partial_window(row, offsets)
        if got is None:
            return -1.0
        cols = np.nonzero((self.depth >= DISC_COLUMNS_MM[0]) & (self.depth <= DISC_COLUMNS_MM[1]))[0]
        rows, keep = got
        tmpl = self.template_rows(self.template.disc_mm[label], offsets.astype(np.float64), scale)[keep][:, cols]
        if bands_only:
            tmpl = tmpl - tmpl.mean(axis=0)
        best = -1.0
        for shift in DEPTH_SHIFTS_MM:
            c = cols + shift
            if c[0] < 0 or c[-1] >= rows.shape[1]:
                continue
            patch = rows[:, c] - rows[:, c].mean(axis=0) if bands_only else rows[:, c]
            best = max(best, _ncc(patch, tmpl))
        return best


def _local_maxima(values: np.ndarray, threshold: float, min_distance: int) -> list[int]:
    order = np.argsort(-values)
    picked: list[int] = []
    for i in order:
        if values[i] < threshold:
            break
        if all(abs(int(i) - p) >= min_distance for p in picked):
            picked.append(int(i))
    return sorted(picked)


def _max_above(values: np.ndarray, row: int, gap: float) -> float:
    """Best value one C2 height (`gap`, +-25 %) above `row`: where C2, which has no disc, should be."""
    lo, hi = int(math.floor(row + 0.75 * gap)), int(math.ceil(row + 1.25 * gap))
    seg = values[max(lo, 0):min(hi, values.size - 1) + 1]
    return float(seg.max()) if seg.size else 0.0


def _find_anchor(m: _Matcher, csa: np.ndarray) -> tuple[int | None, float, str, list[dict[str, float]]]:
    """Row of the C2-C3 disc and the scale, or None with the reason (csa: the cord's CSA per row).

    Whether there is a C2-C3 disc at all is judged on the whole-patch disc match (the rule and
    thresholds as calibrated); which candidate it is, on the band-only match (inference of the disc
    from its horizontal band alone, far more specific: non-disc rows score about 0.1-0.3 instead of
    0.6-0.9) and the region match. The cord's shape is recorded, not scored (module docstring).
    """
    t = m.template
    coarse = np.full(m.rows, -1.0)
    scales = np.full(m.rows, math.nan)
    for r in range(m.rows):
        coarse[r], scales[r] = m.coarse(r)
    if not np.isfinite(scales).any():
        return None, math.nan, ("the field of view does not reach from C4 up to the dens along the cord "
                                f"({m.rows} mm of cord; C2-C3 is found only with "
                                f"{-COARSE_WINDOW_MM[0]:.0f} mm below and {COARSE_WINDOW_MM[1]:.0f} mm above it)"), []
    all_disc = np.array([m.disc_match(r, 3, 1.0) for r in range(m.rows)])
    all_band = np.array([m.disc_match(r, 3, 1.0, bands_only=True) for r in range(m.rows)])
    disc = np.where(np.isfinite(scales), all_disc, -1.0)
    candidates = _local_maxima(disc, MIN_DISC_MATCH, min_distance=5)
    if not candidates:
        return None, math.nan, "no row looks like the C2-C3 disc (the column is not visible beside the cord)", []
    evidence: list[dict[str, float]] = []
    gap_c2 = t.gap(2, 3)
    for r in candidates:
        scale = float(scales[r])
        disc_above = _max_above(all_disc, r, gap_c2 * scale)
        band_above = _max_above(all_band, r, gap_c2 * scale)
        shape = shape_match(csa, r, SCALES)
        evidence.append({"row": float(r), "coarse": float(coarse[r]), "disc": float(disc[r]),
                         "disc_above": disc_above, "band": float(all_band[r]), "band_above": band_above,
                         "shape": shape, "scale": scale,
                         "image": float(coarse[r]) + float(disc[r]) - max(disc_above, 0.0),
                         "score": float(coarse[r]) + float(all_band[r]) - max(band_above, 0.0)})
    evidence.sort(key=lambda e: -e["score"])
    # C2 has no disc above it within one C2 height (its body runs up into the dens): a candidate with a
    # better disc there than itself is a lower disc; and a weak overall match is no anchor at all
    plausible = [e for e in evidence if e["image"] >= MIN_ANCHOR_SCORE and e["disc"] >= e["disc_above"]]
    if not plausible:
        top = max(evidence, key=lambda e: e["image"])
        return None, math.nan, (f"no C2-C3 disc: the best candidate ({top['row']:.0f} mm along the cord) scores "
                                f"{top['image']:.2f} on the image (needs {MIN_ANCHOR_SCORE}) and has a disc "
                                f"{'as' if top['disc_above'] <= top['disc'] else 'more'} disc-like one C2 height "
                                "above it: is C2 in the field of view?"), evidence
    best = plausible[0]
    # rivals: every other disc, not only the plausible ones: a candidate the gate rejected (often on a
    # near tie of disc and disc_above) but the ranking prefers means the image cues disagree
    rivals = [e for e in evidence if e is not best and abs(e["row"] - best["row"]) >= 0.5 * gap_c2 * best["scale"]]
    if rivals and best["score"] - rivals[0]["score"] < ANCHOR_MARGIN:
        return None, math.nan, (f"C2-C3 disc ambiguous: {best['score']:.2f} at {best['row']:.0f} mm vs "
                                f"{rivals[0]['score']:.2f} at {rivals[0]['row']:.0f} mm along the cord"), evidence
    margin = best["score"] - rivals[0]["score"] if rivals else math.inf
    return int(best["row"]), float(best["scale"]), f"C2-C3 found automatically (margin {margin:.2f})", evidence


def _search_disc(m: _Matcher, label: int, expect: float, half: float, scale: float) -> Disc | None:
    """Best match to the template's disc `label` within +-half mm of `expect`, or None if no disc is there."""
    lo, hi = int(math.ceil(expect - half)), int(math.floor(expect + half))
    rows = np.arange(max(lo, 0), min(hi, m.rows - 1) + 1)
    if rows.size == 0:
        return None  # the disc lies outside the field of view
    matches = np.array([m.disc_match(int(r), label, scale) for r in rows])
    # a mild pull towards the expected place: a clear disc a few mm off still wins
    penalty = PRIOR_WEIGHT * ((rows - expect) / half) ** 2
    pick = int(np.argmax(matches - penalty))
    if matches[pick] < MIN_FOUND_MATCH:
        return None
    return Disc(label, float(rows[pick]), float(matches[pick]))


def _count_down(m: _Matcher, anchor: Disc, scale: float) -> tuple[list[Disc], float]:
    """Discs below C2-C3, each where the template's spacing (at the subject's running scale) expects it."""
    t = m.template
    found = [anchor]
    ratios: list[float] = []
    running = scale
    label = anchor.label + 1
    while label in t.disc_mm:
        prev = found[-1]
        gap = t.gap(label - 1, label) * running
        disc = _search_disc(m, label, prev.arc_mm - gap, SEARCH_FRACTION * gap, running)
        if disc is None:
            break
        found.append(disc)
        ratios.append((prev.arc_mm - disc.arc_mm) / t.gap(label - 1, label))
        running = float(np.median(ratios))
        label += 1
    return found, running


def _count_up(m: _Matcher, anchor: Disc, scale: float) -> Disc | None:
    """The C1-C2 junction above the C2-C3 disc (the top of the C2 level), or None if not found."""
    gap = m.template.gap(2, 3) * scale
    return _search_disc(m, 2, anchor.arc_mm + gap, SEARCH_FRACTION * gap, scale)


def _count(m: _Matcher, anchor: Disc, scale: float) -> tuple[list[Disc], float]:
    """All discs from C1-C2 down, and the subject's spacing scale measured below the anchor."""
    below, running = _count_down(m, anchor, scale)
    top = _count_up(m, anchor, running)
    return ([top] if top is not None else []) + below, running


def label_levels(image: np.ndarray, cord: np.ndarray, affine: np.ndarray,
                 c2c3_slice: float | None = None) -> VertebralLevels:
    """Vertebral levels along the cord of a sagittal (or coronal/3D) T2 image.

    ``c2c3_slice``: an RPI axial slice index where the C2-C3 disc is known to be (as
    sct_label_vertebrae -initz): it replaces the automatic anchor, not the counting.
    """
    try:
        straight = straighten(np.asarray(image, dtype=np.float32), cord, affine)
    except StraightenError as exc:
        return VertebralLevels(False, f"no centreline: {exc}")
    pz = straight.frame.spacing[2]
    if pz > MAX_SI_SPACING_MM:
        return VertebralLevels(False, f"slices {pz:.1f} mm apart along the cord (axial acquisition): "
                                      f"intervertebral discs are not resolved (needs <= {MAX_SI_SPACING_MM} mm)",
                               straight=straight)
    length = float(straight.arc_mm[-1])
    m = _Matcher(straight, load_template())
    if c2c3_slice is not None:
        row = int(round(straight.arc_of_slice(c2c3_slice)))
        given = _search_disc(m, 3, float(row), DISC_HALF_MM, 1.0) or Disc(3, float(row), m.disc_match(row, 3, 1.0))
        discs, scale = _count(m, given, 1.0)
        reason = f"C2-C3 given at axial slice {c2c3_slice:g}"
        evidence: list[dict[str, float]] = []
    else:
        if length < MIN_CORD_LENGTH_MM:
            return VertebralLevels(False, f"{length:.0f} mm of cord in the field of view: too few discs to count "
                                          f"(needs {MIN_CORD_LENGTH_MM:.0f} mm including C2)", straight=straight)
        anchor, scale0, reason, evidence = _find_anchor(m, cord_profile(straight, straight.frame.to_rpi(cord) > 0.5))
        if anchor is None:
            return VertebralLevels(False, reason, straight=straight, evidence=evidence)
        discs, scale = _count(m, Disc(3, float(anchor), m.disc_match(anchor, 3, scale0)), scale0)
    if sum(d.label >= 3 for d in discs) < 2:
        return VertebralLevels(False, f"{reason}, but no disc found below it: too few discs to count",
                               straight=straight, evidence=evidence)
    return VertebralLevels(True, reason, tuple(discs), scale, straight, evidence)
