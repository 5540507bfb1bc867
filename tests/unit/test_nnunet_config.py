"""nnU-Net folder settings in the node's config: checked at load with the key named, carried to
the loaded model through the model spec (worker, Ray actor and /health see the same string).

Most tests need only the folder's JSON and file names (checkpoints are empty files: nothing is
unpickled when settings are checked); the last one loads real random-weight folds made by
nnunetv2 and compares with nnUNetPredictor run with the same folds, checkpoint and mirroring.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from dicom_node.config import ConfigError, load_config
from testbed.nnunet_folder import dataset_dict, plans_dict

TRAINER = "nnUNetTrainer__nnUNetPlans__3d_fullres"


def _json_folder(root: Path, folds=("0", "1", "all"), checkpoints=("checkpoint_final.pth",),
                 configuration: str = "3d_fullres", regions: bool = True) -> Path:
    """plans.json + dataset.json + fold_X/<checkpoint> placeholders (enough for settings checks)."""
    folder = root / f"nnUNetTrainer__nnUNetPlans__{configuration}"
    folder.mkdir(parents=True)
    plans = plans_dict([1.0, 0.9, 2.8], [32, 48, 8], [4, 8, 16], [[1, 1, 1], [2, 2, 1], [2, 2, 2]])
    if configuration != "3d_fullres":
        plans["configurations"][configuration] = plans["configurations"].pop("3d_fullres")
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(dataset_dict(regions, None)))
    for f in folds:
        (folder / f"fold_{f}").mkdir()
        for c in checkpoints:
            (folder / f"fold_{f}" / c).write_bytes(b"")
    return folder


def _config(tmp_path: Path, entry: str, extra: str = "") -> Path:
    cfg = tmp_path / "node.yaml"
    cfg.write_text(f"models:\n  seg:\n{entry}\npipelines:\n  spinal_cord:\n    model: seg\n{extra}")
    return cfg


def test_spec_round_trip() -> None:
    from inference.models.registry import nnunet_spec, split_spec

    spec = nnunet_spec("/m/x", configuration="3d_lowres", folds=[0, "all"], checkpoint="checkpoint best.pth",
                       use_mirroring=False, cord_labels=[1, "spinal cord"], lesion_labels=["a,b&c=d"], fast_cpu=True)
    folder, options = split_spec(spec)
    assert folder == "/m/x"
    assert options == {"configuration": "3d_lowres", "folds": [0, "all"], "checkpoint": "checkpoint best.pth",
                       "use_mirroring": False, "cord_labels": [1, "spinal cord"], "lesion_labels": ["a,b&c=d"],
                       "fast_cpu": True}
    assert nnunet_spec("/m/x", folds=[], configuration="", use_mirroring=None) == "/m/x"
    assert split_spec("/odd?dir/x") == ("/odd?dir/x", {})  # not settings: part of the folder name
    assert split_spec("/odd?name=1") == ("/odd?name=1", {})
    assert split_spec("builtin:spinecord-t2") == ("builtin:spinecord-t2", {})


def test_settings_travel_in_the_model_spec(tmp_path: Path) -> None:
    folder = _json_folder(tmp_path, checkpoints=("checkpoint_final.pth", "checkpoint_best.pth"))
    cfg = load_config(_config(tmp_path, f"    path: {folder}\n    folds: [1, 0]\n    checkpoint: checkpoint_best.pth\n"
                                        "    use_mirroring: false\n    lesion_labels: [lesion]"))
    from inference.models.registry import read_meta, split_spec

    spec = cfg.model_path("seg")
    path, options = split_spec(spec)
    assert path == str(folder) and options == {"folds": [1, 0], "checkpoint": "checkpoint_best.pth",
                                               "use_mirroring": False, "lesion_labels": ["lesion"]}
    meta = read_meta(spec)
    assert meta.extra["folds"] == ["1", "0"] and meta.extra["checkpoints"] == [
        "fold_1/checkpoint_best.pth", "fold_0/checkpoint_best.pth"]
    # a plain entry stays a plain path (no settings to carry), as before
    plain = load_config(_config(tmp_path, f"    path: {folder}"))
    assert plain.model_path("seg") == str(folder)
    # /health judges the spec like the worker loads it: settings included
    from dicom_node.health import model_state

    ok, _, detail = model_state(spec)
    assert ok, detail


def test_default_folds_are_nnunets_own_choice(tmp_path: Path) -> None:
    """nnUNetPredictor's auto-detection takes fold_0..N and skips fold_all beside them."""
    from inference.models.nnunet import resolve_settings

    assert resolve_settings(_json_folder(tmp_path / "a")).folds == ("0", "1")
    assert resolve_settings(_json_folder(tmp_path / "b", folds=("all",))).folds == ("all",)
    assert resolve_settings(_json_folder(tmp_path / "c", folds=("10", "2", "all"))).folds == ("2", "10")
    choice = resolve_settings(tmp_path / "a" / TRAINER, folds=["all", 0])
    assert choice.folds == ("all", "0")
    assert choice.cord_labels == {1, 2} and choice.lesion_labels == {2}


@pytest.mark.parametrize("entry, message", [
    ("    folds: [0, 7]", r"models\.seg\.folds: fold_7 is not in .* \(folds there: 0, 1, all\)"),
    ("    folds: [0, 0]", r"models\.seg\.folds: fold 0 is listed twice"),
    ("    folds: [first]", r"models\.seg\.folds: 'first' is not a fold"),
    ("    folds: [[0]]", r"models\.seg\.folds\[0\]: expected a number or a name"),
    ("    checkpoint: checkpoint_best.pth",
     r"models\.seg\.checkpoint: no fold_\*/checkpoint_best\.pth in .* \(checkpoints there: checkpoint_final\.pth\)"),
    ("    folds: [1]\n    checkpoint: checkpoint_best.pth",
     r"models\.seg\.checkpoint: fold_1/checkpoint_best\.pth is missing .* \(fold_1 holds: checkpoint_final\.pth\)"),
    ("    checkpoint: ../fold_0/checkpoint_final.pth", r"models\.seg\.checkpoint: .* must be a file name"),
    ("    configuration: 3d_lowres", r"models\.seg\.configuration: '3d_lowres', but .* is the '3d_fullres' folder"),
    ("    cord_labels: [spine]", r"models\.seg\.cord_labels: 'spine' is neither a label number nor a label name"),
    ("    lesion_labels: [5]", r"models\.seg\.lesion_labels: label 5 is not a foreground label"),
    ("    use_mirroring: maybe", r"models\.seg\.use_mirroring: expected true or false"),
])
def test_wrong_settings_name_the_key(tmp_path: Path, entry: str, message: str) -> None:
    folder = _json_folder(tmp_path)
    with pytest.raises(ConfigError, match=message):
        load_config(_config(tmp_path, f"    path: {folder}\n{entry}"))


def test_nnunet_keys_on_other_models_and_missing_folders(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"models\.seg\.folds: only nnU-Net v2 folders take folds"):
        load_config(_config(tmp_path, "    path: builtin:spinecord-t2\n    folds: [0]"))
    with pytest.raises(ConfigError, match=r"models\.seg\.use_mirroring: only nnU-Net v2 folders"):
        load_config(_config(tmp_path, "    path: builtin:spinecord-t2\n    use_mirroring: false"))
    with pytest.raises(ConfigError, match=r"models\.seg\.path: .*gone does not exist"):
        load_config(_config(tmp_path, f"    path: {tmp_path / 'gone'}\n    folds: [0]"))
    # on a remote Ray cluster the folder may exist on the workers only: not judged here
    ray = "worker:\n  executor: ray\n  ray:\n    address: 10.0.0.5:6379\n"
    cfg = load_config(_config(tmp_path, f"    path: {tmp_path / 'gone'}\n    folds: [0]", ray))
    assert cfg.model_path("seg").endswith("gone?folds=0")
    # a plain missing folder is reported by /health, as for model.json folders (unchanged)
    load_config(_config(tmp_path, f"    path: {tmp_path / 'gone'}"))
    broken = _json_folder(tmp_path / "broken")
    (broken / "plans.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"models\.seg\.path: .*plans\.json: not valid JSON"):
        load_config(_config(tmp_path, f"    path: {broken}"))
    no_cord = _json_folder(tmp_path / "nocord")
    ds = json.loads((no_cord / "dataset.json").read_text())
    ds["labels"] = {"background": 0, "structure": [1, 2], "lesion": 2}
    (no_cord / "dataset.json").write_text(json.dumps(ds))
    with pytest.raises(ConfigError, match=r"models\.seg\.cord_labels: no label .* named like the spinal cord"):
        load_config(_config(tmp_path, f"    path: {no_cord}"))
    cfg = load_config(_config(tmp_path, f"    path: {no_cord}\n    cord_labels: [structure]"))
    from inference.models.registry import split_spec

    assert split_spec(cfg.model_path("seg"))[1] == {"cord_labels": ["structure"]}


def test_dataset_folder_picks_the_configuration(tmp_path: Path) -> None:
    from inference.models.nnunet import resolve_settings

    dataset = tmp_path / "Dataset901_RandomCord"
    full = _json_folder(dataset)
    low = _json_folder(dataset, configuration="3d_lowres")
    assert resolve_settings(dataset).folder == full  # 3d_fullres unless told otherwise
    assert resolve_settings(dataset, "3d_lowres").folder == low
    assert resolve_settings(low).plan.configuration == "3d_lowres"  # a trainer folder runs its own
    with pytest.raises(ConfigError, match=r"models\.seg\.configuration: '2d': no 2d folder in .*found: "):
        load_config(_config(tmp_path, f"    path: {dataset}\n    configuration: 2d"))
    cfg = load_config(_config(tmp_path, f"    path: {dataset}\n    configuration: 3d_lowres"))
    from inference.models.registry import read_meta

    assert read_meta(cfg.model_path("seg")).folder == low
    with pytest.raises(ConfigError, match=r"models\.seg\.path: .* is not an nnU-Net v2 trained-model folder"):
        load_config(_config(tmp_path, f"    path: {tmp_path}\n    folds: [0]"))


def test_settings_reach_the_loaded_model_and_match_nnunet(tmp_path: Path) -> None:
    """folds / checkpoint / use_mirroring from the config change what runs, exactly as the same
    choices change nnUNetPredictor's output."""
    pytest.importorskip("nnunetv2")
    import shutil

    import torch

    from inference.models.registry import load_model
    from inference.pipeline import analyze
    from inference.volume import Volume, load_nifti
    from testbed.nnunet_folder import make_folder, nnunet_predict
    from tests.helpers.env import require_shared

    plans = plans_dict([1.0, 0.9, 2.8], [32, 48, 8], [4, 8, 16], [[1, 1, 1], [2, 2, 1], [2, 2, 2]])
    folder = make_folder(tmp_path / TRAINER, plans, dataset_dict(True, None), ["0", "1"], (0, 1, 2))
    other = make_folder(tmp_path / "other" / TRAINER, plans, dataset_dict(True, None), ["0", "1"], (0, 1, 2), seed=5)
    shutil.copy(other / "fold_1" / "checkpoint_final.pth", folder / "fold_1" / "checkpoint_best.pth")
    vol = load_nifti(require_shared("lesion-example/t2_fake_lesion.nii.gz"))
    vol = Volume(array=vol.array[:, :60].copy(), affine=vol.affine)
    cfg = load_config(_config(tmp_path, f"    path: {folder}\n    folds: [1]\n    checkpoint: checkpoint_best.pth\n"
                                        "    use_mirroring: false"))
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = load_model(cfg.model_path("seg"), device="cpu")
        assert model.folds == ("1",) and not model.use_mirroring and model.mirror_axes == (0, 1, 2)
        result = analyze(vol, model=cfg.model_path("seg"), device="cpu")
        seg_ref, _ = nnunet_predict(other, vol.array.transpose(2, 1, 0), vol.spacing[::-1], ["1"], mirroring=False)
    finally:
        torch.set_num_threads(old)
    ref = seg_ref.transpose(2, 1, 0)
    assert len(np.unique(ref)) == 3
    assert float((result.cord_mask == np.isin(ref, [1, 2])).mean()) >= 0.999
    assert float((result.lesion_mask == (ref == 2)).mean()) >= 0.999
    # the default entry on the same folder is a different model (both folds, final checkpoint, mirroring)
    default = load_model(load_config(_config(tmp_path, f"    path: {folder}")).model_path("seg"), device="cpu")
    assert default is not model and default.folds == ("0", "1") and default.use_mirroring


def test_config_check_does_not_import_torch(tmp_path: Path) -> None:
    """The node's process reads its config without torch (dicom_node never imports it): checking
    an nnU-Net entry's settings reads JSON and file names only."""
    from tests.helpers.env import assert_runs_without_torch

    folder = _json_folder(tmp_path)
    cfg = _config(tmp_path, f"    path: {folder}\n    folds: [0]")
    assert_runs_without_torch(
        f"from dicom_node.config import load_config\ncfg = load_config({str(cfg)!r})\n"
        "assert cfg.model_path('seg').endswith('?folds=0')\n"
        "from dicom_node.health import model_state\nassert model_state(cfg.model_path('seg'))[0]\n")


def test_health_judges_nnunet_settings(tmp_path: Path) -> None:
    """/health resolves the spec's settings against the folder as the worker's load would: a
    setting that does not fit is not loadable, with the setting named."""
    from dicom_node.health import model_state
    from inference.models.spec import nnunet_spec

    dataset = tmp_path / "Dataset901_RandomCord"
    _json_folder(dataset)
    ok, loaded, detail = model_state(nnunet_spec(dataset, folds=[1]))
    assert ok and not loaded, detail
    assert "Dataset901_RandomCord" in detail and "3d_fullres" in detail and "folds 1 " in detail
    assert "folds 0,1 " in model_state(str(dataset))[2]  # nnU-Net's own default folds
    for spec, message in [
        (nnunet_spec(dataset, folds=[7]), r"setting folds: fold_7 is not in .* \(folds there: 0, 1, all\)"),
        (nnunet_spec(dataset, configuration="2d"), r"setting configuration: '2d': no 2d folder in "),
        (nnunet_spec(dataset, checkpoint="checkpoint_best.pth"), r"setting checkpoint: no fold_\*/checkpoint_best"),
        (nnunet_spec(dataset, lesion_labels=[5]), r"setting lesion_labels: label 5 is not a foreground label"),
        (nnunet_spec(tmp_path / "gone", folds=[0]), r"setting path: .*gone does not exist"),
    ]:
        ok, loaded, detail = model_state(spec)
        assert not ok and not loaded
        assert re.search(message, detail), detail
    (dataset / TRAINER / "plans.json").write_text("{not json")
    ok, _, detail = model_state(str(dataset))
    assert not ok and re.search(r"plans\.json: not valid JSON", detail), detail


def test_health_sees_the_loaded_nnunet_model(tmp_path: Path) -> None:
    """Loaded: this process's nnU-Net loader holds the spec's folder with the same settings."""
    pytest.importorskip("nnunetv2")
    from dicom_node.health import model_state
    from inference.models import registry
    from inference.models.spec import nnunet_spec
    from testbed.nnunet_folder import make_folder

    plans = plans_dict([1.0, 0.9, 2.8], [32, 48, 8], [4, 8, 16], [[1, 1, 1], [2, 2, 1], [2, 2, 2]])
    dataset = tmp_path / "Dataset901_RandomCord"
    make_folder(dataset / TRAINER, plans, dataset_dict(True, None), ["0", "1"], (0, 1, 2))
    spec = nnunet_spec(dataset, folds=[1], use_mirroring=False)
    ok, loaded, detail = model_state(spec)
    assert ok and not loaded, detail
    registry.load_model(spec, device="cpu")
    ok, loaded, detail = model_state(spec)
    assert ok and loaded, detail
    assert "folds 1 " in detail
    # other settings on the same folder are another model, not loaded yet
    assert not model_state(nnunet_spec(dataset, folds=[1]))[1]
    assert not model_state(nnunet_spec(dataset, folds=[0, 1], use_mirroring=False))[1]
    assert model_state(str(dataset / TRAINER) + "?folds=1&use_mirroring=false")[1]  # same folder, named directly
