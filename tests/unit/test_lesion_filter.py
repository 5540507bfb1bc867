"""Minimum lesion volume: which components go (18-connectivity, as measured), what the SEG, SR,
measurements and config say about it."""
from __future__ import annotations

import dataclasses

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from dicom_node.config import ConfigError, load_config
from dicom_node.results.seg import build_seg
from dicom_node.results.sr import build_sr
from dicom_node.results.validate import validate_dicom, write_result
from inference import pipeline
from inference.biomarkers import analyze_lesions
from inference.lesion_filter import drop_small_lesions
from inference.measurements import Measurements
from inference.volume import Volume
from testbed.tiny_model import pass_through_model
from tests.helpers.env import require_shared, require_tool
from tests.helpers.results_cases import make_case
from tests.unit.test_engine import PSR, _phantom, _ras_spacing, _z_threshold
from tests.unit.test_pipeline import _sigmoid

HALF = np.diag([0.5, 0.5, 2.0, 1.0])  # 0.5 mm3 voxels


def _specks() -> tuple[np.ndarray, dict[str, tuple[int, int, int]]]:
    """A 20^3 grid with: a lone voxel, an edge-joined pair (one 18-connected component), a
    corner-joined pair (two components: corners join only in 26-connectivity), a 3x3x3 cube."""
    m = np.zeros((20, 20, 20), np.uint8)
    at = {"lone": (2, 2, 2), "edge": (8, 2, 2), "corner": (14, 2, 2), "cube": (10, 10, 10)}
    m[at["lone"]] = 1
    m[8, 2, 2] = m[9, 3, 2] = 1  # share an edge
    m[14, 2, 2] = m[15, 3, 3] = 1  # share a corner only
    m[10:13, 10:13, 10:13] = 1
    return m, at


def test_components_under_the_minimum_go_and_one_of_exactly_the_minimum_stays() -> None:
    mask, at = _specks()
    before = mask.copy()
    out, dropped = drop_small_lesions(mask, HALF, 1.0)  # edge pair = 2 voxels = exactly 1.0 mm3
    assert dropped == 3  # the lone voxel and both halves of the corner pair (0.5 mm3 each)
    assert out[at["lone"]] == 0 and out[at["corner"]] == 0 and out[15, 3, 3] == 0
    assert out[8, 2, 2] == 1 and out[9, 3, 2] == 1 and out[10:13, 10:13, 10:13].all()
    assert int(out.sum()) == 2 + 27 and out.dtype == mask.dtype
    assert np.array_equal(mask, before)  # the input is not modified

    out, dropped = drop_small_lesions(mask, HALF, 13.5)  # the cube: 27 x 0.5 = 13.5 mm3, kept
    assert dropped == 4 and int(out.sum()) == 27
    out, dropped = drop_small_lesions(mask, HALF, 13.6)
    assert dropped == 5 and not out.any()


def test_a_minimum_of_zero_changes_nothing_and_bad_minimums_are_refused() -> None:
    mask, _ = _specks()
    out, dropped = drop_small_lesions(mask, HALF, 0.0)
    assert out is mask and dropped == 0
    for bad in (-1.0, float("nan"), float("inf"), "5mm3"):
        with pytest.raises(ValueError, match="min_volume_mm3"):
            drop_small_lesions(mask, HALF, bad)


def test_every_kept_component_is_one_measured_lesion_of_at_least_the_minimum() -> None:
    rng = np.random.default_rng(7)
    lesion = (rng.random((30, 30, 24)) > 0.93).astype(np.uint8)  # many specks, some joined
    cord = np.ones_like(lesion)
    affine = np.diag([0.8, 0.9, 1.5, 1.0])
    voxel = 0.8 * 0.9 * 1.5
    all_lesions = analyze_lesions(lesion, cord, affine).lesions
    for minimum in (2 * voxel, 3.5 * voxel):
        kept, dropped = drop_small_lesions(lesion, affine, minimum)
        report = analyze_lesions(kept, cord, affine)
        assert len(report.lesions) + dropped == len(all_lesions)
        assert min(les.volume_mm3 for les in report.lesions) >= minimum - 1e-9
        assert sum(les.volume_mm3 >= minimum - 1e-9 for les in all_lesions) == len(report.lesions)


def test_analyze_drops_small_lesions_before_measuring_and_says_so(tmp_path) -> None:
    shape = (56, 70, 14)
    img, _ = _phantom(PSR, shape)
    spacing = _ras_spacing(PSR)
    model = pass_through_model(tmp_path, spacing=spacing)
    model = dataclasses.replace(model, meta=dataclasses.replace(model.meta, thresholds=(
        _sigmoid(_z_threshold(img, PSR, spacing, 30.0)), _sigmoid(_z_threshold(img, PSR, spacing, 45.0)))))
    volume = Volume(img, PSR)
    lesion_mm3 = float((img >= 45.0).sum()) * 0.8 * 0.9 * 3.0

    kept = pipeline.analyze(volume, model, min_lesion_volume_mm3=lesion_mm3)
    assert kept.measurements["lesion_count"] == 1 and kept.measurements["lesions_below_minimum"] == 0
    assert kept.measurements["min_lesion_volume_mm3"] == lesion_mm3

    gone = pipeline.analyze(volume, model, min_lesion_volume_mm3=lesion_mm3 + 0.01)
    m = gone.measurements
    assert m["lesion_count"] == 0 and m["lesions"] == [] and m["lesions_below_minimum"] == 1
    assert not gone.lesion_mask.any() and not gone.lesion_labels.any()
    assert np.array_equal(gone.cord_mask, kept.cord_mask)  # the voxels stay cord

    default = pipeline.analyze(volume, model)
    assert default.measurements["min_lesion_volume_mm3"] == 0.0
    assert default.measurements["lesions_below_minimum"] == 0


def test_seg_and_sr_name_the_minimum_as_an_algorithm_parameter(tmp_path) -> None:
    require_tool("dciodvfy")
    shared = require_shared("lesion-example")
    case = make_case(shared.parent, tmp_path / "src", "sagittal")
    meas = dict(case.analysis.measurements, min_lesion_volume_mm3=5.0, lesions_below_minimum=2)
    analysis = dataclasses.replace(case.analysis, metrics=Measurements.from_json(meas))
    seg = build_seg(case.source, case.frames, analysis, series_uid=generate_uid(), sop_instance_uid=generate_uid())
    sr = build_sr(case.source, analysis, seg, frames=case.frames,
                  series_uid=generate_uid(), sop_instance_uid=generate_uid(),
                  image_library=False)
    seg_path, sr_path = write_result(seg, tmp_path / "seg.dcm"), write_result(sr, tmp_path / "sr.dcm")
    assert validate_dicom(seg_path).errors == [] and validate_dicom(sr_path).errors == []
    algo = pydicom.dcmread(seg_path).SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algo.AlgorithmParameters == "min_lesion_volume_mm3=5"
    texts = [str(e.value) for e in pydicom.dcmread(sr_path).iterall() if e.keyword == "TextValue"]
    assert "min_lesion_volume_mm3=5" in texts

    plain = build_seg(case.source, case.frames, case.analysis, series_uid=generate_uid(),
                      sop_instance_uid=generate_uid())
    assert "AlgorithmParameters" not in plain.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]


def test_config_reads_the_minimum_per_pipeline_and_refuses_a_negative_one(tmp_path) -> None:
    path = tmp_path / "node.yaml"
    from inference.lesion_filter import DEFAULT_MIN_LESION_VOLUME_MM3

    path.write_text("pipelines:\n  spinal_cord:\n    model: default\n    min_lesion_volume_mm3: 12\n")
    assert load_config(path).pipelines["spinal_cord"].min_lesion_volume_mm3 == 12.0
    assert load_config(None).pipelines["spinal_cord"].min_lesion_volume_mm3 == DEFAULT_MIN_LESION_VOLUME_MM3
    path.write_text("pipelines:\n  spinal_cord:\n    model: default\n    min_lesion_volume_mm3: -1\n")
    with pytest.raises(ConfigError, match=r"pipelines\.spinal_cord\.min_lesion_volume_mm3"):
        load_config(path)


def test_the_speck_rule_is_one_default_for_the_node_the_config_file_and_the_offline_tool() -> None:
    """The chosen minimum (model card, "Speck rule") is the pipelines' default, what
    config/default.yaml states, and `dicom-node segment`'s default: the node and the offline tool
    report the same lesions."""
    import argparse
    from pathlib import Path

    from dicom_node.config import PipelineSettings
    from inference.cli import add_segment_arguments
    from inference.lesion_filter import DEFAULT_MIN_LESION_VOLUME_MM3

    assert DEFAULT_MIN_LESION_VOLUME_MM3 > 0, "one-voxel components are not reported by default"
    assert PipelineSettings().min_lesion_volume_mm3 == DEFAULT_MIN_LESION_VOLUME_MM3
    repo = Path(__file__).resolve().parents[2]
    for name in ("config/default.yaml", "deploy/node.yaml"):
        cfg = load_config(repo / name) if name == "config/default.yaml" else None
        text = (repo / name).read_text()
        assert f"min_lesion_volume_mm3: {DEFAULT_MIN_LESION_VOLUME_MM3:g} " in text, name
        if cfg is not None:
            assert cfg.pipelines["spinal_cord"].min_lesion_volume_mm3 == DEFAULT_MIN_LESION_VOLUME_MM3
    parser = argparse.ArgumentParser()
    add_segment_arguments(parser)
    assert parser.parse_args(["x.nii.gz", "--out", "o"]).min_lesion_volume == DEFAULT_MIN_LESION_VOLUME_MM3


@pytest.mark.slow
def test_the_default_rule_leaves_no_speck_on_the_demo_samples() -> None:
    """What `make demo` shows: no lesion in the healthy volunteer, one in the lesion sample (SCT
    measures its ground truth at 83.5 mm³), with the shipped model and the default speck rule."""
    from pathlib import Path

    from inference.lesion_filter import DEFAULT_MIN_LESION_VOLUME_MM3
    from inference.pipeline import resolve_model
    from inference.volume import load_volume

    sample = Path(__file__).resolve().parents[2] / "dicom_node" / "sample"
    model = resolve_model("builtin:spinecord-t2", device="cpu")
    healthy = pipeline.analyze(load_volume(sample / "errsm_21_t2.nii.gz"), model,
                               min_lesion_volume_mm3=DEFAULT_MIN_LESION_VOLUME_MM3).measurements
    assert healthy["lesion_count"] == 0, healthy["lesions"]
    lesion = pipeline.analyze(load_volume(sample / "t2_fake_lesion.nii.gz"), model,
                              min_lesion_volume_mm3=DEFAULT_MIN_LESION_VOLUME_MM3).measurements
    assert lesion["lesion_count"] == 1
    assert lesion["lesions"][0]["volume_mm3"] == pytest.approx(83.5, rel=0.25)
