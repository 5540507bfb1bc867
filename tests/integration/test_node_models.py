"""The node loads every pipeline's model when it starts (local executor), not on the first job,
and a model that cannot load is in the log at once while the listener keeps running."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from dicom_node.config import Config, ModelSettings, StorageSettings
from dicom_node.health import model_state
from dicom_node.service import Node
from testbed.node_process import wait_until
from testbed.tiny_model import make_tiny_model


def _config(tmp_path: Path, model_path: str) -> Config:
    cfg = Config(storage=StorageSettings(data_dir=str(tmp_path / "node"), fsync=False),
                 models={"default": ModelSettings(path=model_path)})
    cfg.node.port = 0
    cfg.worker.device = "cpu"
    return cfg


def test_pipeline_models_are_loaded_at_start_without_a_job(tmp_path: Path) -> None:
    model = make_tiny_model(tmp_path / "model", patch=(32, 32, 32))
    cfg = _config(tmp_path, str(model))
    assert model_state(cfg.model_path("default"))[1] is False
    node = Node(cfg)
    node.start()
    try:
        wait_until(lambda: model_state(cfg.model_path("default"))[1], 60, what="model loaded at start")
        assert node.catalog.query("SELECT COUNT(*) FROM jobs")[0][0] == 0
    finally:
        node.stop()


def test_a_model_that_cannot_load_is_logged_at_start_and_the_listener_stays(tmp_path: Path, caplog) -> None:
    broken = make_tiny_model(tmp_path / "model", patch=(32, 32, 32))
    (broken / "weights.pt").write_bytes(b"not a checkpoint")
    cfg = _config(tmp_path, str(broken))
    node = Node(cfg)
    with caplog.at_level(logging.ERROR, logger="dicom_node"):
        node.start()
        try:
            wait_until(lambda: any("not loaded at start" in r.getMessage() for r in caplog.records), 60,
                       what="the load error in the log")
            message = next(r.getMessage() for r in caplog.records if "not loaded at start" in r.getMessage())
            assert str(broken) in message and "cannot be read as a PyTorch state dict" in message
            assert all(node.alive().values())  # the listener and every loop still run
        finally:
            node.stop()


def test_a_truncated_nnunet_checkpoint_is_a_model_error(tmp_path: Path) -> None:
    from inference.models.nnunet import load_checkpoint
    from inference.models.registry import ModelError

    path = tmp_path / "checkpoint_final.pth"
    path.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ModelError, match="cannot be read as a PyTorch checkpoint"):
        load_checkpoint(path)


def test_weights_that_do_not_fit_the_architecture_are_a_model_error(tmp_path: Path) -> None:
    import torch

    from inference.models.registry import ModelError, load_model

    model = make_tiny_model(tmp_path / "model", patch=(32, 32, 32))
    torch.save({"nothing": torch.zeros(1)}, model / "weights.pt")
    with pytest.raises(ModelError, match="do not fit the architecture"):
        load_model(str(model), device="cpu")
