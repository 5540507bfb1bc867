"""SCT's lesion models in the config: sct:NAME entries, sct_data_dir, pipelines that are off without the
files, /health, and what a job of such a pipeline asks inference for."""
from __future__ import annotations

from pathlib import Path

import pytest

from dicom_node.catalog import Catalog
from dicom_node.config import ConfigError, load_config
from dicom_node.health import HealthChecker
from inference.api import LesionModelSpec
from tests.helpers.env import require_shared

FILES = ("t2_ax_lesion.h5", "t2_ctr.h5", "t2s_lesion.h5", "t2s_ctr.h5")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.yaml"
    path.write_text(text)
    return path


def _sct_install(root: Path) -> Path:
    """An SCT_DIR laid out as SCT installs its models (data/deepseg_lesion_models, data/deepseg_sc_models),
    the files linked from ../shared."""
    models = require_shared("sct-models")
    for name in FILES:
        sub = "deepseg_sc_models" if "ctr" in name else "deepseg_lesion_models"
        (root / "data" / sub).mkdir(parents=True, exist_ok=True)
        (root / "data" / sub / name).symlink_to(models / name)
    return root


def test_without_sct_the_ms_pipelines_are_off_and_health_says_why(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("SCT_DIR", raising=False)
    cfg = load_config()
    off = cfg.pipelines_off()
    assert set(off) == {"ms_axial_t2", "ms_axial_t2s"}
    assert "t2_ax_lesion.h5" in off["ms_axial_t2"] and "models.sct_t2_ax_lesion.sct_data_dir" in off["ms_axial_t2"]
    assert {r.pipeline for r in cfg.routing_rules()} == {"spinal_cord", None}
    assert cfg.pipeline_lesion_models() == {}
    checks = {c.name: c for c in HealthChecker(cfg, Catalog(tmp_path / "c.sqlite")).model_checks()}
    assert checks["pipeline:ms_axial_t2"].ok and checks["pipeline:ms_axial_t2"].detail.startswith("off: ")
    assert "model:sct_t2_ax_lesion" not in checks


def test_sct_dir_turns_them_on(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SCT_DIR", str(_sct_install(tmp_path / "sct")))
    cfg = load_config()
    assert cfg.pipelines_off() == {}
    assert [r.name for r in cfg.routing_rules()][:2] == ["ms-axial-t2star", "ms-axial-t2"]
    request = cfg.analysis_request("ms_axial_t2")
    assert request.lesion_model == LesionModelSpec("sct:t2_ax_lesion")
    assert str(request.model) == "builtin:spinecord-t2"  # the cord stays ours
    lesion, ctr = request.lesion_model.files()
    assert lesion.endswith("deepseg_lesion_models/t2_ax_lesion.h5") and ctr.endswith("deepseg_sc_models/t2_ctr.h5")
    assert cfg.analysis_request("spinal_cord").lesion_model is None
    checks = {c.name: c for c in HealthChecker(cfg, Catalog(tmp_path / "c.sqlite")).model_checks()}
    assert checks["model:sct_t2s_lesion"].ok and "t2s_lesion.h5" in checks["model:sct_t2s_lesion"].detail


def test_sct_data_dir_relative_to_the_config_and_a_list(tmp_path) -> None:
    models = require_shared("sct-models")
    (tmp_path / "lesion").mkdir()
    (tmp_path / "ctr").mkdir()
    (tmp_path / "lesion" / "t2_ax_lesion.h5").symlink_to(models / "t2_ax_lesion.h5")
    (tmp_path / "ctr" / "t2_ctr.h5").symlink_to(models / "t2_ctr.h5")
    cfg = load_config(_write(tmp_path, """
models:
  default: {path: builtin:spinecord-t2}
  sct: {path: "sct:t2_ax_lesion", sct_data_dir: [lesion, ctr]}
pipelines:
  ms: {model: default, lesion_model: sct}
"""))
    spec = cfg.lesion_model_spec("sct")
    assert spec.folders == (str(tmp_path / "lesion"), str(tmp_path / "ctr"))
    assert cfg.pipelines_off() == {}


@pytest.mark.parametrize(("yaml_text", "message"), [
    ("models: {default: {path: builtin:spinecord-t2}, sct: {path: 'sct:t2_ax_lesion', sct_data_dir: empty}}",
     r"models\.sct\.sct_data_dir: SCT model file t2_ax_lesion\.h5 not found in .*empty"),
    ("models: {default: {path: builtin:spinecord-t2}, sct: {path: 'sct:t1_lesion'}}",
     r"models\.sct\.path: unknown SCT model 'sct:t1_lesion' \(known: sct:t2_ax_lesion, sct:t2s_lesion\)"),
    ("models: {default: {path: builtin:spinecord-t2}, sct: {path: 'sct:t2_ax_lesion', folds: [0]}}",
     r"models\.sct\.folds: only nnU-Net v2 folders take it"),
    ("models: {default: {path: builtin:spinecord-t2, sct_data_dir: x}}",
     r"models\.default\.sct_data_dir: only SCT lesion models"),
    ("models: {default: {path: builtin:spinecord-t2}, sct: {path: 'sct:t2_ax_lesion', sct_data_dir: [1]}}",
     r"models\.sct\.sct_data_dir: a folder or a list of folders"),
    ("models: {default: {path: builtin:spinecord-t2}, sct: {path: 'sct:t2_ax_lesion'}}\n"
     "pipelines: {ms: {model: sct}}",
     r"pipelines\.ms\.model: 'sct' is one of SCT's lesion models"),
    ("models: {default: {path: builtin:spinecord-t2}}\npipelines: {ms: {model: default, lesion_model: default}}",
     r"pipelines\.ms\.lesion_model: 'default' must be an SCT lesion model"),
    ("models: {default: {path: builtin:spinecord-t2}}\npipelines: {ms: {model: default, lesion_model: nope}}",
     r"pipelines\.ms\.lesion_model: 'nope' is not a key of models"),
])
def test_config_errors_name_the_key(tmp_path, yaml_text: str, message: str) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=message):
        load_config(_write(tmp_path, yaml_text + "\n"))


def test_own_models_without_sct_leave_the_shipped_ms_pipelines_off(tmp_path) -> None:
    """A file that lists its own models and no pipelines (as before SCT's models existed) still loads."""
    cfg = load_config(_write(tmp_path, "models: {default: {path: builtin:spinecord-t2}}\n"))
    assert set(cfg.pipelines_off()) == {"ms_axial_t2", "ms_axial_t2s"}
    assert "not a key of models" in cfg.pipelines_off()["ms_axial_t2"]
