"""`dicom-node`'s command table: a missing optional package is reported, a real error is not hidden."""
from __future__ import annotations

import importlib
from types import ModuleType

import pytest

from dicom_node import cli


def _importing(monkeypatch: pytest.MonkeyPatch, module: str, error: BaseException) -> None:
    """Make importing `module` (one command's) raise `error`; every other import is real."""
    real = importlib.import_module

    def fake(name: str, package: str | None = None) -> ModuleType:
        if name == module:
            raise error
        return real(name, package)

    monkeypatch.setattr(cli.importlib, "import_module", fake)


def test_a_missing_optional_package_makes_the_command_unavailable(monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    _importing(monkeypatch, "dicom_node.backup", ModuleNotFoundError("No module named 'ray.util'", name="ray.util"))
    assert cli.main(["backup", "somewhere"]) == 2
    err = capsys.readouterr().err
    assert "backup: not available in this build" in err and "optional package ray" in err
    assert "spine-dicom-node[ray]" in err


def test_the_demo_without_the_dev_tools_says_where_they_are(monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    # the node's container image has dicom_node and inference but not testbed/
    _importing(monkeypatch, "testbed.demo", ModuleNotFoundError("No module named 'testbed'", name="testbed"))
    assert cli.main(["demo"]) == 2
    err = capsys.readouterr().err
    assert "demo: not available in this build" in err and "source checkout" in err


@pytest.mark.parametrize("error", [
    ModuleNotFoundError("No module named 'yaml'", name="yaml"),  # a required dependency
    ModuleNotFoundError("No module named 'dicom_node.gone'", name="dicom_node.gone"),  # our own module
    ImportError("cannot import name 'nothing' from 'dicom_node.store'", name="dicom_node.store"),  # a broken import
    ModuleNotFoundError("No module named 'rayon'", name="rayon"),  # a prefix is not the optional package
])
def test_any_other_import_error_propagates(monkeypatch: pytest.MonkeyPatch, error: ImportError) -> None:
    _importing(monkeypatch, "dicom_node.backup", error)
    with pytest.raises(type(error)) as raised:
        cli.main(["backup", "somewhere"])
    assert raised.value is error


def test_a_missing_function_in_the_table_propagates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(cli.COMMANDS, "backup", ("dicom_node.backup", "no_such_function", "run", "help"))
    with pytest.raises(AttributeError, match="no_such_function"):
        cli.build_parser("backup")


def test_other_commands_do_not_import_the_broken_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the named command's module is imported, so a broken one does not stop the others."""
    _importing(monkeypatch, "dicom_node.backup", ModuleNotFoundError("No module named 'yaml'", name="yaml"))
    assert cli.build_parser("rules").parse_args(["rules", "test", "x"]).command == "rules"
