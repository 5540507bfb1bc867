"""Per-level cord CSA against healthy adults: the reference table's provenance, the group matching,
z-score / percentile / compression arithmetic, the level-span rule, and real scans end to end."""
from __future__ import annotations

import importlib.util
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest

from inference import levels_csa as L
from inference.csa import cord_csa
from inference.demographics import Demographics, parse_age
from inference.vertebrae import label_levels
from inference.volume import Volume
from tests.helpers.env import REPO, SHARED_DATA, require_shared

SCRIPT = REPO / "scripts" / "make_reference.py"


def _load(rel: str) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    img = nib.load(require_shared(rel))
    return np.asanyarray(img.dataobj), img.affine


def _script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("make_reference", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "OUT", tmp_path)
    return module


def test_shipped_reference_is_what_the_script_derives(tmp_path, monkeypatch):
    """Nothing in inference/reference is typed by hand: the script rebuilds both files identically."""
    require_shared("pam50-normalized-metrics")
    script = _script(tmp_path, monkeypatch)
    shipped = REPO / "inference" / "reference"
    assert (tmp_path / "x").parent == tmp_path
    built_csa = script.build_csa(SHARED_DATA)
    assert json.loads(built_csa.read_text()) == json.loads((shipped / "csa_normative.json").read_text())
    built_tpl = script.build_template(SHARED_DATA)
    with np.load(built_tpl) as a, np.load(shipped / "pam50_t2_straight.npz") as b:
        assert set(a.files) == set(b.files)
        for key in a.files:
            assert np.array_equal(a[key], b[key]), key


def test_reference_counts_everyone_once():
    ref = L.load_reference()
    groups = ref["groups"]
    assert ref["subjects"] == groups["all"]["3"]["n"]
    assert groups["sex=M"]["3"]["n"] + groups["sex=F"]["3"]["n"] == groups["all"]["3"]["n"]
    bands = [k for k in groups if k.startswith("age=")]
    assert sum(groups[k]["3"]["n"] for k in bands) == groups["all"]["3"]["n"]
    assert "Imaging Neuroscience" in ref["source"]


@pytest.mark.parametrize("sex,age,expected_prefix", [
    ("F", "035Y", "sex=F,age=30-39"),  # a full cell
    (None, None, "all"),  # nothing in the header: all adults
    ("M", None, "sex=M"),
    ("O", "025Y", "age=18-29"),  # "O" is not matched on
])
def test_reference_group_follows_the_header(sex, age, expected_prefix):
    who = Demographics.from_header(sex, age)
    got = L.reference("3", who)
    assert got is not None and got.group == expected_prefix
    stats = L.load_reference()["groups"][expected_prefix]["3"]
    assert (got.mean, got.sd, got.n) == (stats["mean"], stats["sd"], stats["n"])


def test_small_groups_fall_back_to_broader_ones():
    groups = L.load_reference()["groups"]
    small = groups["sex=F,age=40+"]["3"]["n"]
    assert small < L.REFERENCE_MIN_N  # the cohort has few women over 40: their cell is not used alone
    got = L.reference("3", Demographics("F", 45.0))
    assert got is not None and got.group == "sex=F" and got.n >= L.REFERENCE_MIN_N


def test_z_score_and_percentile():
    ref = L.Reference(mean=72.0, sd=7.0, n=100, group="all")
    assert ref.z_and_percentile(72.0) == (0.0, 50.0)
    z, pct = ref.z_and_percentile(79.0)
    assert z == pytest.approx(1.0) and pct == pytest.approx(84.1345, abs=1e-3)
    z, pct = ref.z_and_percentile(58.0)
    assert z == pytest.approx(-2.0) and pct == pytest.approx(2.275, abs=1e-3)


def test_compression_ratio_normalised_by_healthy_adults():
    who = Demographics()
    healthy = {n: L.reference(str(n), who).mean for n in range(2, 9)}  # type: ignore[union-attr]
    # a cord exactly as healthy adults: C4-C5's natural bulge is a raw "compression" of C7 vs C6 and T1,
    # but normalised it is 0
    levels = {n: [healthy[n]] * 5 for n in healthy}
    level, raw, normalised = L._compression(levels, who)
    assert level is not None and normalised == pytest.approx(0.0, abs=1e-9)
    assert raw == pytest.approx((1 - healthy[level] / ((healthy[level - 1] + healthy[level + 1]) / 2)) * 100)
    # 20 % less cord at C5: the narrowest level relative to health, normalised ratio 20 %
    levels[5] = [healthy[5] * 0.8] * 5
    level, raw, normalised = L._compression(levels, who)
    assert level == 5 and normalised == pytest.approx(20.0)
    # a neighbour cut by the field of view to two slices: C5 is not compared with it
    levels[6] = levels[6][:2]
    assert L._compression(levels, who)[0] != 5


def test_level_span_names_levels_superior_first():
    assert L.level_span(np.array([4, 5, 4])) == "C4-C5"
    assert L.level_span(np.array([7, 8])) == "C7-T1"
    assert L.level_span(np.array([9])) == "T2"
    assert L.level_span(np.array([4, 0])) is None  # part of the lesion lies where levels are unknown
    assert L.level_span(np.array([], dtype=int)) is None


@pytest.mark.parametrize("text,years", [("045Y", 45.0), ("006M", 0.5), ("052W", 52 * 7 / 365.25),
                                         ("", None), (None, None), ("45", None), ("abcY", None)])
def test_patient_age_strings(text, years):
    got = parse_age(text)
    assert got == (None if years is None else pytest.approx(years))


def test_patient_sex_only_m_or_f():
    assert Demographics.from_header("m", "030Y") == Demographics("M", 30.0)
    assert Demographics.from_header("O", "").sex is None


def test_per_level_csa_on_a_real_cord_follows_sct_slice_rule():
    """errsm_11 (manual mask): each level's CSA is the mean of the slices whose labelled voxels average to it."""
    image, affine = _load("spine-t2-sag/errsm_11/t2.nii.gz")
    cord, _ = _load("spine-t2-sag/errsm_11/t2_seg-manual.nii.gz")
    cord = (cord > 0.5).astype(np.uint8)
    levels = label_levels(image, cord, affine)
    if not levels.known:
        pytest.fail(f"errsm_11 is labelled in test_vertebrae; here: {levels.reason}")
    csa = cord_csa(cord, affine).per_slice_mm2
    result = L.level_measurements(levels, cord, csa, Demographics())
    assert result.known and result.csa_reference_group == "all (n=203)"
    labelled = levels.straight.frame.to_rpi(levels.label_cord(cord)).astype(float)  # type: ignore[union-attr]
    for row in result.cord_csa_mm2_per_level:
        slices = [z for z in range(labelled.shape[2])
                  if (labelled[:, :, z] > 0).any()
                  and math.floor(labelled[:, :, z][labelled[:, :, z] > 0].mean() + 0.5) == row.level]
        values = [csa[z] for z in slices if csa[z] is not None]
        assert row.slices == len(values) and row.csa_mm2 == pytest.approx(float(np.mean(values)))
    c2, c3 = result.level(2), result.level(3)
    assert c2 is not None and c3 is not None
    expected = (c2.csa_mm2 * c2.slices + c3.csa_mm2 * c3.slices) / (c2.slices + c3.slices)
    assert result.cord_csa_c2c3_mm2 == pytest.approx(expected)
    assert result.cord_csa_c2c3_z_score is not None and abs(result.cord_csa_c2c3_z_score) < 3  # a healthy adult
    assert [r.level for r in result.cord_csa_mm2_per_level] == sorted(r.level for r in result.cord_csa_mm2_per_level)


def test_node_cord_mask_matches_the_manual_one_at_c2c3():
    """The shipped model's cord on SCT's labelled crop: C2-C3 CSA within 5 % of the manual mask's (SCT's levels)."""
    from inference.pipeline import analyze
    from inference.rpi import RpiFrame
    from inference.volume import load_volume

    volume = load_volume(require_shared("sct-testing/t2/t2.nii.gz"))
    manual, affine = _load("sct-testing/t2/t2_seg-manual.nii.gz")
    labelled, _ = _load("sct-testing/t2/t2_seg-manual_labeled.nii.gz")
    node = analyze(volume).cord_mask
    frame = RpiFrame.from_affine(affine, manual.shape)
    lab = frame.to_rpi(np.rint(labelled))
    slice_levels = [int(math.floor(lab[:, :, z][lab[:, :, z] > 0].mean() + 0.5)) if (lab[:, :, z] > 0).any() else 0
                    for z in range(lab.shape[2])]

    def c2c3(mask: np.ndarray) -> float:
        grouped = L.per_level_csa(cord_csa(mask, affine).per_slice_mm2, slice_levels)
        return float(np.mean(grouped[2] + grouped[3]))

    ours, theirs = c2c3(node), c2c3(manual)
    assert abs(ours - theirs) / theirs < 0.05, (ours, theirs)


def test_axial_series_gets_unknown_levels_a_log_line_and_everything_else(caplog):
    from inference.pipeline import measure, measure_levels

    image, affine = _load("spine-t2-sag/errsm_21/t2.nii.gz")
    cord, _ = _load("spine-t2-sag/errsm_21/t2_seg-manual.nii.gz")
    step = 5
    slab_affine = affine.copy()
    slab_affine[:3, 1] *= step  # axis 1 is inferior-superior: 5 mm axial slices
    cord = (cord[:, ::step] > 0.5).astype(np.uint8)
    volume = Volume(image[:, ::step].astype(np.float32), slab_affine)
    lesion = np.zeros_like(cord)
    before, labels = measure(cord, lesion, slab_affine)
    with caplog.at_level(logging.INFO, logger="inference.pipeline"):
        after = measure_levels(before, labels, cord, volume)
    assert after.levels is not None and not after.levels.known
    assert "axial" in after.levels.vertebral_levels_reason
    assert any("vertebral levels unknown" in r.getMessage() for r in caplog.records)
    assert after.to_json() | {k: None for k in after.levels.to_json()} == before.to_json() | {
        k: None for k in after.levels.to_json()}
