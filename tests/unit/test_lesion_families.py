"""Lesion families, appearance randomisation and the leave-one-family-out evaluation (fast, synthetic)."""
from __future__ import annotations

import numpy as np
import pytest

from inference.train import train as train_mod
from inference.train.appearance import AppearanceConfig, randomize
from inference.train.families import FAMILY_NAMES, Painted, check_families, contusion, cyst, demyelination, family
from inference.train.families.cordframe import cord_frame, radial_warp, stretch_profile
from inference.train.sampling import PatchSampler, SamplerConfig
from tests.unit.test_train import fake_volume

LEVELS = (1.0, 3.0)  # cord, CSF (the phantom's)


def phantom(shape=(40, 40, 160), radius=5.0, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """A cord (1.0) of `radius` vox in CSF (3.0) in tissue (0.5), along Z, 1 mm voxels, with noise."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    r = np.hypot(x - shape[0] / 2, y - shape[1] / 2)
    img2d = np.where(r < radius, 1.0, np.where(r < radius + 4, 3.0, 0.5))
    img = np.repeat(img2d[:, :, None], shape[2], axis=2) + 0.02 * rng.standard_normal(shape)
    return img.astype(np.float32), np.repeat((r < radius)[:, :, None], shape[2], axis=2)


def z_extent_mm(mask: np.ndarray) -> int:
    zs = np.flatnonzero(mask.any(axis=(0, 1)))
    return int(zs.max() - zs.min() + 1) if len(zs) else 0


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_every_family_labels_inside_its_cord_repeatably_and_paints_nothing_when_asked(name):
    img, cord = phantom()
    paint = family(name)
    a = paint(img, cord, (1.0, 1.0, 1.0), np.random.default_rng(5), LEVELS)
    b = paint(img, cord, (1.0, 1.0, 1.0), np.random.default_rng(5), LEVELS)
    assert a.count >= 1 and a.lesion.any()
    assert not (a.lesion.astype(bool) & ~a.cord).any(), "the label stays in the (possibly swollen) cord"
    assert np.array_equal(a.image, b.image) and np.array_equal(a.instances, b.instances), "same seed, same lesion"
    none = paint(img, cord, (1.0, 1.0, 1.0), np.random.default_rng(5), LEVELS, n_lesions=0)
    assert none.count == 0 and np.array_equal(none.image, img) and np.array_equal(none.cord, cord)


def test_family_names_are_checked():
    assert check_families(["cyst", "painter"], "x") == ("painter", "cyst")
    with pytest.raises(ValueError, match="unknown lesion families \\['syrinx'\\]"):
        check_families(["syrinx"], "--families")
    with pytest.raises(ValueError, match="choose from painter"):
        family("syrinx")


def test_contusion_is_fusiform_central_swollen_and_keeps_its_core_in_the_label():
    img, cord = phantom()
    r = contusion.ContusionRanges(length_mm=(30.0, 30.0), swelling=(0.3, 0.3), p_core=1.0, core=(1.0, 1.0),
                                  edema=(1.0, 1.0), off_centre=0.0)
    p = contusion.paint(img, cord, (1.0, 1.0, 1.0), np.random.default_rng(1), LEVELS, n_lesions=1, r=r)
    les = p.lesion.astype(bool)
    assert 15 <= z_extent_mm(les) <= 32, "about the drawn 30 mm along the cord"
    zs = np.flatnonzero(les.any(axis=(0, 1)))
    mid = int(np.median(zs))
    assert p.cord[:, :, mid].sum() > 1.3 * cord[:, :, mid].sum(), "the cord is swollen at the lesion"
    far = (mid + 60) % img.shape[2]
    assert p.cord[:, :, far].sum() == cord[:, :, far].sum(), "and unchanged far from it"
    idx = np.argwhere(les)
    assert np.allclose(idx[:, :2].mean(0), [20, 20], atol=1.5), "centred in the cord"
    assert p.image[les].max() > 2.0 and p.image[les].min() < 0.5, "bright edema and a dark core, one label"


def test_cyst_is_csf_bright_with_a_rim_in_a_thinner_cord():
    img, cord = phantom(radius=6.0)
    r = cyst.CystRanges(length_mm=(20.0, 20.0), loculi=(1, 1), width_of_cord=(0.6, 0.6), atrophy=(0.3, 0.3),
                        cavity=(1.0, 1.0), rim=(0.4, 0.4), off_centre=0.0, rim_mm=(1.0, 1.0))
    p = cyst.paint(img, cord, (1.0, 1.0, 1.0), np.random.default_rng(2), LEVELS, n_lesions=1, r=r)
    les = p.lesion.astype(bool)
    zs = np.flatnonzero(les.any(axis=(0, 1)))
    mid = int(np.median(zs))
    assert p.cord[:, :, mid].sum() < 0.85 * cord[:, :, mid].sum(), "atrophy: a thinner cord at the cyst"
    centre = p.image[19:22, 19:22, mid]
    assert centre.mean() > 2.5, "the cavity is as bright as the CSF"
    rim = les & (p.image < 2.4) & (p.image > 1.3)
    assert rim.any(), "a gliotic rim between cord and CSF levels is part of the label"


def test_demyelination_ms_is_small_and_eccentric_nmosd_long_and_central():
    img, cord = phantom()
    ms = demyelination.DemyelinationRanges(p_nmosd=0.0, ms_width_mm=(3.0, 3.0))
    p = demyelination.paint(img, cord, (1.0, 1.0, 1.0), np.random.default_rng(3), LEVELS, n_lesions=1, r=ms)
    les = p.lesion.astype(bool)
    assert 2 <= z_extent_mm(les) <= 16
    off = np.argwhere(les)[:, :2].mean(0) - 20
    assert np.hypot(*off) > 1.0, "MS lesions sit in a white-matter column, off the centre"
    nmo = demyelination.DemyelinationRanges(p_nmosd=1.0, nmosd_length_mm=(70.0, 70.0))
    p = demyelination.paint(img, cord, (1.0, 1.0, 1.0), np.random.default_rng(4), LEVELS, r=nmo)
    les = p.lesion.astype(bool)
    assert p.count == 1 and z_extent_mm(les) >= 45, "three vertebral segments or more"
    assert np.allclose(np.argwhere(les)[:, :2].mean(0), [20, 20], atol=1.0), "central"


def test_families_follow_millimetres_in_an_anisotropic_grid():
    img, cord = phantom(shape=(40, 40, 40))  # read as 0.5 x 0.5 x 3 mm: radius 2.5 mm, 120 mm long
    r = contusion.ContusionRanges(length_mm=(30.0, 30.0), swelling=(0.0, 0.0))
    p = contusion.paint(img, cord, (0.5, 0.5, 3.0), np.random.default_rng(0), LEVELS, n_lesions=1, r=r)
    assert 5 <= z_extent_mm(p.lesion.astype(bool)) <= 11, "30 mm at 3 mm slices is ~10 slices"


def test_radial_warp_round_trip_and_identity():
    img, cord = phantom()
    frame = cord_frame(cord, (1.0, 1.0, 1.0))
    same_img, same_cord = radial_warp(img, cord, frame, np.ones(img.shape[2]))
    assert same_img is img and same_cord is cord
    g = stretch_profile(img.shape[2], 80, 20, 0.3)
    big_img, big_cord = radial_warp(img, cord, frame, g)
    assert big_cord.sum() > cord.sum()
    back_img, back_cord = radial_warp(big_img, big_cord, cord_frame(big_cord, (1.0, 1.0, 1.0)), 1.0 / g)
    inter = (back_cord & cord).sum()
    assert 2 * inter / (back_cord.sum() + cord.sum()) > 0.97, "swelling then the inverse atrophy gives the cord back"


def test_appearance_sets_the_lesion_to_cord_ratio_and_keeps_the_label():
    img, cord = phantom()
    base = contusion.paint(img, cord, (1.0, 1.0, 1.0), np.random.default_rng(1), LEVELS, n_lesions=1,
                           r=contusion.ContusionRanges(p_core=0.0, swelling=(0.0, 0.0)))
    les = base.lesion.astype(bool)
    for ratio in (1.1, 3.0):
        cfg = AppearanceConfig(ratio=(ratio, ratio), p_rescale=1.0, p_hypo=0.0, p_blur=0.0)
        out = randomize(img, base, LEVELS, 0.0, np.random.default_rng(0), cfg=cfg)
        assert np.array_equal(out.instances, base.instances) and np.array_equal(out.cord, base.cord)
        assert np.mean(out.image[les] - img[les]) == pytest.approx((ratio - 1.0) * 1.0, rel=0.02)
    keep = randomize(img, base, LEVELS, 0.0, np.random.default_rng(0),
                     cfg=AppearanceConfig(p_rescale=0.0, p_hypo=0.0, p_blur=0.0))
    assert np.allclose(keep.image, base.image, atol=1e-6), "nothing drawn: the family's own look"
    dark = randomize(img, base, LEVELS, 0.0, np.random.default_rng(0),
                     cfg=AppearanceConfig(p_rescale=0.0, p_hypo=1.0, hypo=(0.5, 0.5), p_blur=0.0))
    assert dark.image[les].min() < 0.7, "a hypointense part whatever the family"
    empty = Painted(img, cord, np.zeros(img.shape, np.uint8))
    assert randomize(img, empty, LEVELS, 0.0, np.random.default_rng(0)) is empty


def test_sampler_draws_only_the_families_it_is_given():
    cfg = SamplerConfig(patch=(16, 16, 32), families=("cyst",))
    sampler = PatchSampler([fake_volume("a")], cfg, seed=0)
    for _ in range(6):
        x, y = sampler.sample()
        assert not ((y[1] > 0) & (y[0] == 0)).any(), "cord label includes the lesion"


def test_training_families_leave_one_out():
    args = train_mod.parse_args(["--out", "x", "--minutes", "1", "--exclude-family", "cyst"])
    assert train_mod.training_families(args) == ("painter", "contusion", "demyelination")
    with pytest.raises(SystemExit, match="--exclude-family: unknown lesion families"):
        train_mod.training_families(train_mod.parse_args(["--out", "x", "--minutes", "1", "--exclude-family", "x"]))
    with pytest.raises(SystemExit, match="no lesion family left"):
        train_mod.training_families(train_mod.parse_args(["--out", "x", "--minutes", "1", "--families", "cyst",
                                                          "--exclude-family", "cyst"]))


def test_simulated_axial_case_puts_each_slab_where_its_source_slices_are():
    """Geometry round trip: a thick axial slab's centre in world coordinates is the mean of its
    source slices' centres, and the slab's cord is the source cord seen through it."""
    from inference import preprocess
    from inference.train.data import BY_KEY, load_labelled
    from inference.train.evaluate import load_case

    image, cord, affine = load_case("errsm_21@ax5mm")
    src_img, src_cord, _, src_aff = load_labelled(BY_KEY["errsm_21"])
    reo = preprocess.reorient_to_ras(src_aff, src_img.shape)
    assert preprocess.voxel_sizes(affine) == pytest.approx((1.0, 1.0, 5.0))
    ras = reo.forward(src_img).astype(np.float32)
    for k in (0, 7, image.shape[2] - 1):
        world = affine @ np.array([10.0, 20.0, k, 1.0])
        sources = [reo.affine_ras @ np.array([10.0, 20.0, 5 * k + j, 1.0]) for j in range(5)]
        assert np.allclose(world, np.mean(sources, axis=0), atol=1e-6)
        assert np.allclose(image[:, :, k], ras[:, :, 5 * k:5 * k + 5].mean(axis=2))
    assert 0.15 < cord.sum() * 5 / src_cord.sum() < 1.2


def test_per_lesion_volumes_speck_sweep_and_family_summary():
    from inference.train.evaluate import per_lesion, speck_summary, speck_sweep, summarize

    truth = np.zeros((30, 30, 60), bool)
    truth[10:14, 10:14, 5:15] = True  # 160 vox
    truth[10:13, 10:13, 40:42] = True  # 18 vox: small, under the 20 mm³ of the volume criterion
    pred = np.zeros_like(truth)
    pred[10:14, 10:14, 6:15] = True  # 144 of 160: -10 %
    pred[20, 20, 50] = True  # a one-voxel speck
    rows = per_lesion(pred, truth, 1.0)
    assert rows == [{"true_mm3": 160.0, "pred_mm3": 144.0}, {"true_mm3": 18.0, "pred_mm3": 0.0}]
    sweep = speck_sweep(pred, truth, np.eye(4))
    assert sweep["0"]["n_pred"] == 2 and sweep["2"]["n_pred"] == 1 and sweep["2"]["tp_pred"] == 1
    free = speck_sweep(pred, np.zeros_like(truth), np.eye(4))
    assert free["0"]["largest_mm3"] == 144.0 and free["30"]["n_pred"] == 1, "144 mm³ is over every rule"
    case = {"case": "a", "family": "cyst", "group": "sag_t2", "lesions_painted": 2, "seconds": 1.0, "lesion_dice": 0.8,
            "cord_dice": 0.9, "n_true": 2, "n_pred": 2, "tp_true": 1, "tp_pred": 1, "per_lesion": rows,
            "speck_sweep": sweep}
    unpainted = {"case": "b", "group": "sag_t2", "lesions_painted": 0, "seconds": 1.0, "cord_dice": 0.93,
                 "cord_rve": 0.0, "largest_false_lesion_mm3": 1.0,
                 "speck_sweep": speck_sweep(pred & (np.arange(60) == 50), np.zeros_like(truth), np.eye(4))}
    s = summarize([unpainted, case, dict(case, family="painter", lesion_dice=0.6)])
    assert s["by_family"]["cyst"]["lesion_dice"] == 0.8 and s["by_family"]["painter"]["lesion_dice"] == 0.6
    assert s["by_family"]["cyst"]["volume_error_median"] == pytest.approx(0.1)
    assert s["by_family"]["cyst"]["volume_within_25pct"] == 1.0 and s["by_family"]["cyst"]["lesions_20mm3"] == 1
    assert s["by_group"]["sag_t2"]["copies"] == 2 and s["lesion_dice"] == pytest.approx(0.7)
    sw = speck_summary([unpainted, case])
    assert sw["0"]["false_lesions_unpainted"] == 1 and sw["2"]["false_lesions_unpainted"] == 0
    assert sw["2"]["lesion_ppv"] == 1.0 and sw["0"]["lesion_ppv"] == 0.5


def test_card_tables_show_each_family_the_held_out_runs_and_the_speck_rule(tmp_path):
    import json

    from inference.train.model_card import family_tables, lofo_table, speck_table

    fam = {"copies": 4, "lesion_dice": 0.71, "lesion_dice_min": 0.4, "lesion_sensitivity": 0.9, "lesion_ppv": 0.8,
           "lesion_f1": 0.85, "volume_error_median": 0.12, "volume_error_worst": -0.5, "volume_within_25pct": 0.75,
           "lesions_20mm3": 8, "length_mm_mean_abs_error": 2.5, "length_mm_worst_abs_error": 6.0,
           "max_axial_damage_ratio_mean_abs_error": 0.05}
    assert "| cyst (never seen in training) | 4 |" in family_tables({"by_family": {"cyst": fam}}, ["painter"])
    text = family_tables({"by_family": {"cyst": fam}, "by_group": {"sag_t2": fam}})
    assert "| cyst | 4 | 0.710 (0.400) | 0.90 | 0.80 | 0.85 | 12 % (-50 %) | 75 % of 8 | 2.5 (6.0) | 0.050 |" in text
    assert "| sag_t2 |" in text
    assert lofo_table(tmp_path) == ""
    (tmp_path / "lofo.json").write_text(json.dumps({"runs": {"cyst": {
        "pooled": fam, "by_group": {"ax_t2star": fam}, "baseline": dict(fam, lesion_dice=0.5),
        "trained_on": ["painter", "contusion", "demyelination"], "init": "inference/models/spinecord-t2",
        "init_saw": ["painter"], "command": "python -m inference.train.lofo"}}}))
    text = lofo_table(tmp_path)
    assert "| cyst | 4 |" in text and "| cyst, ax_t2star |" in text
    assert "| cyst, by the starting weights | 4 | 0.500 (0.400) |" in text
    assert "without cyst: trained on painter, contusion, demyelination" in text and "had seen: painter" in text
    sweep = speck_table({"speck_sweep": {"0": {"lesion_f1": 0.5, "false_lesions_unpainted": 2,
                                              "largest_false_lesion_mm3": 3.0}}})
    assert "| 0 | 0.500 |" in sweep and "| 2 (3.0) |" in sweep


def test_lofo_knows_which_families_the_starting_weights_saw():
    from inference.train.lofo import seen_by

    assert seen_by("inference/models/spinecord-t2") == ["painter"], "1.2.1 predates the families"


def test_family_picture_is_written_for_the_card(tmp_path):
    from PIL import Image

    from inference.train.pictures import main

    assert main(["--out", str(tmp_path), "--families", "cyst"]) == 0
    im = Image.open(tmp_path / "cyst.png")
    pixels = np.asarray(im.convert("RGB")).astype(int)
    assert im.width > 200 and im.height > 100
    assert ((pixels[..., 0] - pixels[..., 1]) > 60).any(), "the label is drawn in red"
    assert main(["--out", str(tmp_path), "--families", "nope"]) == 1


def test_the_card_command_reproduces_the_families_and_the_look(tmp_path):
    from inference.models.registry import read_meta
    from inference.train.model_card import train_command

    common = ["--minutes", "5", "--patch", "16", "16", "32", "--filters", "4", "8", "16", "--batch", "1",
              "--workers", "0", "--threads", "1", "--val-minutes", "100", "--max-iters", "1"]
    vols = ([fake_volume("a")], [fake_volume("v", 2)])
    run = train_mod.train(train_mod.parse_args(["--out", str(tmp_path / "a"), "--exclude-family", "cyst",
                                                "--no-appearance"] + common), volumes=vols)
    meta = read_meta(run)
    assert meta.extra["training"]["sampler"]["families"] == ["painter", "contusion", "demyelination"]
    assert meta.extra["training"]["sampler"]["appearance"] is None
    assert "--families painter contusion demyelination --no-appearance" in train_command(meta)
    run = train_mod.train(train_mod.parse_args(["--out", str(tmp_path / "b"), "--appearance-ratio", "1.3", "3"]
                                               + common), volumes=vols)
    cmd = train_command(read_meta(run))
    assert "--families" not in cmd and cmd.endswith("--appearance-ratio 1.3 3")
