"""Training pieces: lesion synthesis, patch sampling, a 2-iteration run and its resume (fast, synthetic)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from inference.models.registry import load_model, read_meta
from inference.train import train as train_mod
from inference.train.augment import AugmentConfig, as_acquired, spatial, thick_slices
from inference.train.data import BY_KEY, CachedVolume, acquisition_slab, load_split
from inference.train.lesions import LesionConfig, paint_lesions
from inference.train.sampling import PatchSampler, SamplerConfig


def phantom(shape=(40, 40, 60), seed=0) -> tuple[np.ndarray, np.ndarray]:
    """A grey cylinder 'cord' (radius 5 vox, along Z) in bright 'CSF', in darker tissue, with noise."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    r = np.hypot(x - shape[0] / 2, y - shape[1] / 2)
    img2d = np.where(r < 5, 1.0, np.where(r < 9, 3.0, 0.5))
    cord2d = r < 5
    img = np.repeat(img2d[:, :, None], shape[2], axis=2) + 0.05 * rng.standard_normal(shape)
    cord = np.repeat(cord2d[:, :, None], shape[2], axis=2)
    return img.astype(np.float32), cord


def fake_volume(key: str, seed: int = 0) -> CachedVolume:
    img, cord = phantom(seed=seed)
    return CachedVolume(key=key, group="sag_t2", image=img, cord=cord.astype(np.uint8),
                        lesion=np.zeros(img.shape, np.uint8), air=0.0, cord_level=1.0, csf_level=3.0,
                        cord_idx=np.argwhere(cord).astype(np.int32))


def test_lesions_inside_cord_hyperintense_and_elongated():
    img, cord = phantom()
    rng = np.random.default_rng(3)
    cfg = LesionConfig(length_mm=(12.0, 20.0), width_mm=(4.0, 6.0), p_core=0.0)
    out, lesion, info = paint_lesions(img, cord, (1.0, 1.0, 1.0), rng, cfg, n_lesions=2)
    assert lesion.any() and len(info) >= 1
    assert not (lesion.astype(bool) & ~cord).any(), "lesion label must stay inside the cord"
    les = lesion.astype(bool)
    assert out[les].mean() > img[les].mean() + 0.5, "lesions are hyperintense (towards the CSF level)"
    assert np.allclose(out[~cord & (np.abs(out - img) > 0)], img[~cord & (np.abs(out - img) > 0)], atol=1.5)
    idx = np.argwhere(les)
    extent = idx.max(0) - idx.min(0) + 1
    assert extent[2] > max(extent[0], extent[1]), "lesions are elongated along the cord (Z)"
    assert all(p.voxels >= cfg.min_voxels for p in info)


def test_lesion_core_is_hypointense_and_free_cases_untouched():
    img, cord = phantom()
    cfg = LesionConfig(length_mm=(15.0, 20.0), width_mm=(7.0, 9.0), p_core=1.0, contrast=(1.0, 1.0))
    out, lesion, info = paint_lesions(img, cord, (1.0, 1.0, 1.0), np.random.default_rng(1), cfg, n_lesions=1)
    assert info and info[0].core
    assert out[lesion > 0].min() < 0.8, "a haemorrhagic core goes below the cord level"
    same, none, free = paint_lesions(img, cord, (1.0, 1.0, 1.0), np.random.default_rng(1), cfg, n_lesions=0)
    assert np.array_equal(same, img) and not none.any() and free == []


def test_lesions_in_anisotropic_grid_follow_mm():
    img, cord = phantom(shape=(40, 40, 20))
    out, lesion, info = paint_lesions(img, cord, (0.5, 0.5, 3.0), np.random.default_rng(0),
                                      LesionConfig(length_mm=(9.0, 9.0), width_mm=(3.0, 3.0)), n_lesions=1)
    idx = np.argwhere(lesion)
    assert len(idx) and (idx.max(0) - idx.min(0) + 1)[2] <= 5, "9 mm at 3 mm slices spans ~3-4 slices"


def test_painted_change_is_seen_through_the_source_slices():
    """A lesion painted at 1 mm into a volume made from 3 mm slices is averaged along the slice axis
    (as the scanner and the engine's resampling make a real one look), and only along it."""
    img, cord = phantom()
    out, lesion, _ = paint_lesions(img, cord, (1.0, 1.0, 1.0), np.random.default_rng(2),
                                   LesionConfig(length_mm=(6.0, 10.0), width_mm=(4.0, 6.0), p_core=0.0), n_lesions=2)
    assert lesion.any()
    assert np.array_equal(as_acquired(img, out, (1.0, 1.0, 1.0)), out), "1 mm sources keep the painted lesion"
    assert np.array_equal(as_acquired(img, out, (0.42, 0.42, 1.2)), out), "finer or near-1 mm voxels change nothing"
    seen = as_acquired(img, out, (0.5, 0.5, 3.0))
    change, painted = seen - img, out - img
    expected = thick_slices(torch.from_numpy(painted)[None], 2, 3.0)[0].numpy()
    assert np.allclose(change, expected, atol=1e-5)

    def roughness(d: np.ndarray) -> float:  # mean |second difference| along Z over the mean |change|
        return float(np.abs(np.diff(d, 2, axis=2)).mean() / np.abs(d).mean())

    assert roughness(change) < 0.6 * roughness(painted), "sharp 1 mm edges along Z are gone"
    columns = np.abs(painted).sum(2) > 0
    assert not (np.abs(change).sum(2) > 1e-6)[~columns].any(), "nothing moves in-plane"
    assert abs(change.sum() - painted.sum()) < 0.05 * np.abs(painted).sum(), "the lesion's total signal is kept"


def test_acquisition_slab_reads_the_source_voxels():
    assert acquisition_slab(BY_KEY["errsm_21"], (1.0, 1.0, 1.0)) == pytest.approx((1.0, 1.0, 1.0))
    assert acquisition_slab(BY_KEY["t2s_9584"], (1.0, 1.0, 1.0)) == pytest.approx((0.4167, 0.4167, 3.0), abs=1e-3)
    assert acquisition_slab(BY_KEY["t2s_9584"], (0.5, 0.5, 1.5)) == pytest.approx((0.8333, 0.8333, 2.0), abs=1e-3)


def test_spatial_identity_matches_plain_crop():
    img = torch.randn(1, 30, 32, 40)
    lab = (torch.rand(2, 30, 32, 40) > 0.5).float()
    c = np.array([14.3, 15.0, 20.6])
    plain = spatial(img, lab, (16, 16, 24), c, np.random.default_rng(0),
                    AugmentConfig(p_rotate=0, p_scale=0, p_elastic=0), 0.0)
    warped = spatial(img, lab, (16, 16, 24), c, np.random.default_rng(0),
                     AugmentConfig(p_rotate=1, rot_deg=(0, 0, 0), p_scale=0, p_elastic=0), 0.0)
    assert torch.allclose(plain[0], warped[0], atol=1e-4) and torch.allclose(plain[1], warped[1], atol=1e-4)
    thick = thick_slices(img, 2, 4.0)
    assert thick.shape == img.shape and thick.std() < img.std()


def test_sampler_patches_are_binary_and_mostly_cord():
    sampler = PatchSampler([fake_volume("a"), fake_volume("b", 1)], SamplerConfig(patch=(16, 16, 32)), seed=0)
    hits = 0
    for _ in range(12):
        x, y = sampler.sample()
        assert x.shape == (1, 16, 16, 32) and y.shape == (2, 16, 16, 32)
        assert set(torch.unique(y).tolist()) <= {0.0, 1.0}
        assert not ((y[1] > 0) & (y[0] == 0)).any(), "cord label includes the lesion"
        hits += int(y[0].any())
    assert hits >= 6


def test_split_keeps_people_together():
    split = load_split()
    people = {side: {BY_KEY[k].subject for k in split[side]} for side in ("train", "val")}
    assert not people["train"] & people["val"]
    assert "errsm_21" in split["val"] and "t2s_9584" in split["val"]
    assert {"sct_example", "lesion_example"} <= set(split["train"])


def test_two_iterations_then_resume(tmp_path):
    out = tmp_path / "run"
    common = ["--out", str(out), "--minutes", "5", "--patch", "16", "16", "32", "--filters", "4", "8", "16",
              "--batch", "1", "--workers", "0", "--threads", "1", "--val-minutes", "100"]
    vols = ([fake_volume("a"), fake_volume("b", 1)], [fake_volume("v", 2)])
    folder = train_mod.train(train_mod.parse_args(common + ["--max-iters", "2"]), volumes=vols)
    meta = read_meta(folder)
    assert meta.trained and meta.name == "spinecord-t2" and meta.extra["training"]["iterations"] == 2
    assert (out / "checkpoint.pt").is_file()
    load_model(folder, device="cpu")
    train_mod.train(train_mod.parse_args(common + ["--max-iters", "3", "--resume"]), volumes=vols)
    ck = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ck["state"]["iteration"] == 3
    events = [json.loads(line)["event"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert events.count("start") == 2 and events.count("val") == 2


def test_resume_without_checkpoint_says_what_to_do(tmp_path):
    args = train_mod.parse_args(["--out", str(tmp_path / "none"), "--minutes", "1", "--resume"])
    with pytest.raises(SystemExit, match="no checkpoint"):
        train_mod.train(args, volumes=([fake_volume("a")], [fake_volume("v")]))


def test_fine_tune_records_its_parent_and_the_card_shows_both_stages(tmp_path):
    from inference.train.model_card import train_command, write_card

    common = ["--minutes", "5", "--patch", "16", "16", "32", "--filters", "4", "8", "16", "--batch", "1",
              "--workers", "0", "--threads", "1", "--val-minutes", "100", "--max-iters", "1"]
    vols = ([fake_volume("a")], [fake_volume("v", 2)])
    parent = train_mod.train(train_mod.parse_args(["--out", str(tmp_path / "s1")] + common), volumes=vols)
    child = train_mod.train(train_mod.parse_args(
        ["--out", str(tmp_path / "s2"), "--init", str(parent), "--lr", "0.001", "--p-foreground", "0.9",
         "--p-lesion-free", "0.1", "--version", "1.1.0"] + common), volumes=vols)
    meta = read_meta(child)
    tr = meta.extra["training"]
    assert tr["init_from"]["version"] == "1.0.0" and tr["init_from"]["training"]["iterations"] == 1
    assert tr["sampler"]["p_foreground"] == 0.9 and tr["sampler"]["lesions"]["p_lesion_free"] == 0.1
    first, second = train_command(meta).splitlines()
    assert "--out var/train/stage1" in first and "--init" not in first
    assert "--init var/train/stage1/model_last --lr 0.001 --p-foreground 0.9 --p-lesion-free 0.1" in second
    text = write_card(meta, {"summary": {}, "rows": []}).read_text()
    assert "**Stage 1** (spinecord-t2 1.0.0)" in text and "0 (10 % of patches)" in text
    assert "test-time mirroring along left-right" in text  # the trainer flipped left-right
    assert meta.extra["test_time_mirroring"] == [0]

    # a fine-tune of the fine-tune keeps the whole chain: three stages, three commands
    grandchild = train_mod.train(train_mod.parse_args(
        ["--out", str(tmp_path / "s3"), "--init", str(child), "--lr", "0.0005", "--p-lesion-free", "0.25",
         "--version", "1.2.0"] + common), volumes=vols)
    meta3 = read_meta(grandchild)
    assert meta3.extra["training"]["init_from"]["training"]["init_from"]["version"] == "1.0.0"
    cmds = train_command(meta3).splitlines()
    assert len(cmds) == 3 and "--out var/train/stage3" in cmds[2]
    assert "--init var/train/stage2/model_last --lr 0.0005" in cmds[2]
    assert "--init var/train/stage1/model_last --lr 0.001" in cmds[1]
    text = write_card(meta3, {"summary": {}, "rows": []}).read_text()
    assert "**Stage 2** (spinecord-t2 1.1.0, fine-tuned from stage 1's final weights)" in text
    assert "**Stage 3** (this version)" in text and "var/train/stage3/model_last" in text


def test_calibration_takes_the_best_dice_within_the_false_lesion_limit():
    from inference.train.calibrate import best_lesion_threshold

    cord = np.zeros((20, 20, 40), bool)
    cord[6:14, 6:14, :] = True
    cord_p = cord.astype(np.float32)
    les = np.zeros_like(cord)
    les[8:12, 8:12, 10:20] = True
    les_p = np.where(les, 0.9, 0.0).astype(np.float32)
    les_p[7:13, 7:13, 9:21] = np.maximum(les_p[7:13, 7:13, 9:21], 0.3)  # a halo: low thresholds over-segment
    free_p = np.zeros_like(les_p)
    free_p[8:11, 8:11, 30:33] = 0.45  # 27 mm³ false lesion below threshold 0.5 in a healthy cord
    cases = [(np.stack([cord_p, les_p]), cord, les), (np.stack([cord_p, free_p]), cord, np.zeros_like(les))]
    best, scores, false_mm3 = best_lesion_threshold(cases)
    assert false_mm3[0.4] == 27.0 and false_mm3[0.5] == 0.0
    assert scores[0.3] < scores[0.4] == scores[0.5] == 1.0 and best == 0.5
    best_any, _, _ = best_lesion_threshold(cases, max_false_mm3=1000.0)
    assert best_any == 0.35  # without the limit the first threshold with Dice 1.0 wins


def test_lesion_f1_is_the_harmonic_mean_computed_exactly():
    from inference.train.evaluate import lesion_f1

    assert lesion_f1(8, 9, 8, 11) == 0.8, "8/9 and 8/11 are exactly 0.8, not a hair under"
    sens, ppv = 3 / 7, 5 / 6
    assert lesion_f1(3, 7, 5, 6) == pytest.approx(2 * sens * ppv / (sens + ppv), rel=1e-12)
    assert lesion_f1(0, 3, 0, 2) == 0.0 and lesion_f1(0, 0, 0, 0) == 0.0 and lesion_f1(2, 2, 0, 0) == 0.0
