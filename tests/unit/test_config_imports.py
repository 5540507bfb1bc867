"""config composes routing and security; neither imports config back (issue 19).

A cycle config <-> routing <-> security made the import order matter and hid which module
owns what. The check reads the source with `ast`, so an import inside a function or under
TYPE_CHECKING counts too, and follows other dicom_node modules transitively.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "dicom_node"

# routing's `dicom-node rules test` entry points stay as forwarders to dicom_node.rules_cli
# until dicom_node/cli.py's COMMANDS["rules"] names rules_cli; then delete them and this entry.
ALLOWED: set[tuple[str, str, str]] = set()  # (from, to, function): edges a test may tolerate; none today


def _imports(module: str) -> list[tuple[str, str]]:
    """(imported dicom_node module, enclosing top-level function or '') for every import in `module`."""
    path = PACKAGE / (module.split(".", 1)[1].replace(".", "/") + ".py")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[tuple[str, str]] = []
    for top in tree.body:
        where = top.name if isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef)) else ""
        for node in ast.walk(top):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                if name == "dicom_node" or not name.startswith("dicom_node."):
                    continue
                parts = name.split(".")
                candidate = ".".join(parts[:2])
                if (PACKAGE / f"{parts[1]}.py").is_file():
                    found.append((candidate, where))
    return found


def _reaches(start: str, target: str) -> list[str] | None:
    """An import path from `start` to `target` (skipping ALLOWED edges), or None."""
    todo: list[list[str]] = [[start]]
    seen = {start}
    while todo:
        chain = todo.pop()
        for mod, where in _imports(chain[-1]):
            if (chain[-1], mod, where) in ALLOWED or mod == chain[-1]:
                continue
            if mod == target:
                return chain + [mod]
            if mod not in seen:
                seen.add(mod)
                todo.append(chain + [mod])
    return None


def test_routing_and_security_do_not_import_config() -> None:
    for low in ("dicom_node.routing", "dicom_node.security", "dicom_node.config_error"):
        chain = _reaches(low, "dicom_node.config")
        assert chain is None, f"{' -> '.join(chain or [])}: {low} must not import config (config composes it)"


def test_routing_and_security_are_independent() -> None:
    for a, b in (("dicom_node.routing", "dicom_node.security"), ("dicom_node.security", "dicom_node.routing")):
        chain = _reaches(a, b)
        assert chain is None, f"{' -> '.join(chain or [])}: routing and security should not depend on each other"


def test_config_error_is_the_same_class_everywhere() -> None:
    from dicom_node import config, config_error, routing, security

    assert config.ConfigError is config_error.ConfigError
    assert routing.ConfigError is config_error.ConfigError and security.ConfigError is config_error.ConfigError
    assert config.SecuritySettings is security.SecuritySettings and config.PeerSettings is security.PeerSettings
