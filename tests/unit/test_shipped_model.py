"""The shipped model segments a real validation cord it never saw (CPU, a couple of minutes at most).

Why a crop: the test must stay fast on 2 shared cores; 90 mm of the sagittal errsm_21
volume around the cervical/upper-thoracic cord is enough to show the model works on real
anatomy, and the crop goes through the engine exactly like a whole series.
"""
from __future__ import annotations

import numpy as np
import pytest

from inference.models.registry import BUILTIN_DIR, load_model, read_meta
from inference.train.data import BY_KEY, DATA_ROOT, load_labelled, load_split

MODEL = "builtin:spinecord-t2"


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * float((a & b).sum()) / max(int(a.sum()) + int(b.sum()), 1)


@pytest.fixture(scope="module")
def model():
    if not (BUILTIN_DIR / "spinecord-t2" / "model.json").is_file():
        pytest.fail("inference/models/spinecord-t2 is missing: "
                    "train it (python -m inference.train.train) and commit it")
    return load_model(MODEL, device="cpu")


def test_shipped_model_metadata(model):
    meta = read_meta(MODEL)
    assert meta.trained and meta.name == "spinecord-t2"
    assert meta.regions[:2] == ("cord", "lesion") and meta.activation == "sigmoid"
    weights = meta.folder / meta.weights
    assert weights.stat().st_size < 30 * 1024 * 1024
    assert set(meta.extra["training"]["val_volumes"]) == set(load_split()["val"])


def test_shipped_model_on_real_validation_cord(model):
    from inference.engine import segment
    from inference.volume import Volume

    key = "errsm_21"
    assert key in load_split()["val"], "the test volume must be a validation subject"
    image, cord, _, affine = load_labelled(BY_KEY[key], DATA_ROOT)
    # PSR volume: axis 1 runs S->I; keep 90 mm of cord, and the A-P band around it (+/- 40 mm)
    ap = np.nonzero(cord.any(axis=(1, 2)))[0]
    sl = (slice(max(0, ap.min() - 40), ap.max() + 40), slice(40, 130), slice(None))
    sub_img, sub_cord = image[sl], cord[sl]
    offset = np.array([s.start or 0 for s in sl] + [1.0])
    sub_aff = affine.copy()
    sub_aff[:3, 3] = (affine @ offset)[:3]
    seg = segment(Volume(array=np.ascontiguousarray(sub_img), affine=sub_aff), model)
    d = _dice(seg.cord_mask, sub_cord)
    assert d >= 0.85, f"cord Dice {d:.3f} on real validation volume {key} (crop {sub_img.shape})"
    assert (seg.lesion_mask <= seg.cord_mask).all()


def test_health_judges_the_shipped_model_without_importing_torch() -> None:
    """/health and the config check read model.json through inference.models.meta, never torch."""
    from tests.helpers.env import assert_runs_without_torch

    assert_runs_without_torch(
        f"from dicom_node.health import model_state\nok, loaded, detail = model_state({MODEL!r})\n"
        "assert ok and not loaded and detail.startswith('spinecord-t2 '), detail\n")
