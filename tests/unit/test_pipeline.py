"""analyze(): masks + metrics in the input grid, model identity, refusal of untrained models."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from inference import pipeline
from inference.models import registry
from inference.volume import Volume
from testbed.tiny_model import make_tiny_model, pass_through_model
from tests.unit.test_engine import PSR, _phantom, _ras_spacing, _z_threshold

torch.set_num_threads(min(2, torch.get_num_threads()))


def _sigmoid(z: float) -> float:
    return float(1.0 / (1.0 + np.exp(-z)))


def test_analyze_measures_the_segmented_cord_and_lesion(tmp_path) -> None:
    shape = (56, 70, 14)
    img, _ = _phantom(PSR, shape)
    spacing = _ras_spacing(PSR)
    cord_z = _z_threshold(img, PSR, spacing, 30.0)
    lesion_z = _z_threshold(img, PSR, spacing, 45.0)  # the bright core of the blob plays the lesion
    model = pass_through_model(tmp_path, spacing=spacing)
    model = dataclasses.replace(model, meta=dataclasses.replace(
        model.meta, thresholds=(_sigmoid(cord_z), _sigmoid(lesion_z))))
    stages: list[str] = []
    result = pipeline.analyze(Volume(img, PSR), model, progress=lambda s, d, t: stages.append(s))

    cord, lesion = img >= 30.0, img >= 45.0
    assert np.array_equal(result.cord_mask.astype(bool), cord)
    assert np.array_equal(result.lesion_mask.astype(bool), lesion)
    assert result.lesion_labels.dtype == np.int32 and set(np.unique(result.lesion_labels)) == {0, 1}
    assert np.array_equal(result.lesion_labels > 0, lesion)
    assert result.cord_prob.shape == shape and np.array_equal(result.affine, PSR)
    m = result.measurements
    json.dumps(m, allow_nan=False)  # valid JSON as it stands
    voxel = 0.8 * 0.9 * 3.0
    assert m["lesion_count"] == 1 and len(m["lesions"]) == 1
    assert m["cord_volume_mm3"] == pytest.approx(cord.sum() * voxel)
    assert m["total_volume_mm3"] == pytest.approx(lesion.sum() * voxel, rel=1e-6)
    assert m["cord_csa_mm2_mean"] > 0
    assert any(v is not None for v in m["cord_csa_mm2_per_slice"])
    assert result.model == pipeline.ModelIdentity("tiny-test", "0.0.1", "random weights, tests only")
    assert set(result.timings) == {"preprocess", "network", "postprocess", "metrics", "levels"}
    assert "metrics" in stages
    # a 14-slice phantom has no spine to count: levels unknown, with the reason
    assert m["vertebral_levels_status"] == "unknown" and m["vertebral_levels_reason"]
    assert m["cord_csa_mm2_per_level"] == [] and m["lesions"][0]["level_span"] is None


def test_analyze_loads_a_model_folder_by_path(tmp_path) -> None:
    make_tiny_model(tmp_path / "m")
    img, _ = _phantom(PSR, (40, 50, 12))
    result = pipeline.analyze(Volume(img, PSR), str(tmp_path / "m"), device="cpu")
    assert result.cord_mask.shape == img.shape and result.lesion_labels.shape == img.shape
    assert result.measurements["lesion_count"] == int(result.lesion_labels.max())


def test_analyze_refuses_an_untrained_model(tmp_path) -> None:
    make_tiny_model(tmp_path, trained=False)
    vol = Volume(np.ones((8, 8, 8), np.float32), np.eye(4))
    with pytest.raises(registry.ModelError, match="not trained"):
        pipeline.analyze(vol, str(tmp_path))
    loaded = registry.load_model(tmp_path, device="cpu")  # a LoadedModel is vetted the same way
    with pytest.raises(registry.ModelError, match="not trained"):
        pipeline.analyze(vol, loaded)


def test_missing_shipped_model_says_so(tmp_path, monkeypatch) -> None:
    from inference.models import meta

    monkeypatch.setattr(meta, "BUILTIN_DIR", tmp_path)  # where resolve_folder looks
    with pytest.raises(registry.ModelError, match="shipped model builtin:spinecord-t2 is not installed"):
        pipeline.resolve_model(pipeline.DEFAULT_MODEL)


def test_shipped_model_finds_the_cord_on_real_data() -> None:
    """Engine + shipped weights together: the real cord of the lesion example is found in place."""
    from tests.helpers.env import require_shared

    try:
        meta = registry.read_meta(pipeline.DEFAULT_MODEL)
    except registry.ModelError:
        pytest.skip("the shipped model is not in this checkout yet (inference/models/spinecord-t2)")
    if not meta.trained:
        pytest.fail(f"{meta.folder} is shipped with trained: false")
    from inference.volume import load_nifti

    folder = require_shared("lesion-example")
    vol = load_nifti(folder / "t2_fake_lesion.nii.gz")
    ref = load_nifti(folder / "t2_fake_lesion_sc_seg.nii.gz").array > 0.5
    result = pipeline.analyze(vol, device="cpu")
    got = result.cord_mask > 0
    assert got.shape == ref.shape
    # lenient on purpose: this guards the integration (a flip or shift gives ~0), the model's
    # accuracy is judged by inference.train.evaluate
    assert 2 * (got & ref).sum() / (got.sum() + ref.sum()) > 0.3
