"""config/default.yaml states every setting, each with the value the dataclasses default to.

The dataclasses (dicom_node.config, and dicom_node.security for `security:` and a
destination's `tls:`) are the one source of default values: a key left out of a config file
takes the dataclass default. config/default.yaml is the commented file admins copy, so it must
say the same thing, or a node run on the shipped file would behave differently from one whose
file leaves the key out. These tests keep the two equal (issue 19).
"""
from __future__ import annotations

import dataclasses
import re
import typing
from typing import Any

import yaml

from dicom_node.config import DEFAULT_CONFIG, Config, ModelSettings, _build, load_config
from dicom_node.routing import RULE_KEYS, parse_rules

TEXT = DEFAULT_CONFIG.read_text(encoding="utf-8")
RAW: dict[str, Any] = yaml.safe_load(TEXT)

# Sections whose entries are the admin's own (a destination per PACS, a routing rule per kind of
# series): the dataclass default holds none, the shipped file holds examples. An example entry
# is not a default; what is checked is that each key it states equals the default of the entry
# type (DestinationSettings(), ...), so an example never shows a value that differs from what
# the same entry gets when the key is left out. (models and pipelines are not in this set:
# Config's defaults hold the same `default` model and `spinal_cord` pipeline as the file, and
# they are compared whole.)
EXAMPLE_MAPS = {"destinations"}


def _entry_type(tp: Any) -> type | None:
    """The dataclass of a dict[str, X] / list[X] setting's entries, if X is one."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (dict, list) and args and dataclasses.is_dataclass(args[-1]):
        return args[-1]
    return None


def _commented(name: str) -> bool:
    """`name:` appears in a comment of the file (an example of an entry's key)."""
    return re.search(rf"^\s*#.*\b{re.escape(name)}:", TEXT, re.MULTILINE) is not None


def _check_stated_defaults(raw: dict[str, Any], built: Any, default: Any, where: str) -> list[str]:
    """Differences between the stated keys of `raw` (as loaded: `built`) and `default`."""
    problems: list[str] = []
    hints = typing.get_type_hints(type(default))
    for f in dataclasses.fields(default):
        if f.name == "source":
            continue
        key = f"{where}{f.name}"
        if f.name not in raw:
            problems.append(f"{key}: not stated in config/default.yaml; add it with its default and a comment")
            continue
        b, d = getattr(built, f.name), getattr(default, f.name)
        if dataclasses.is_dataclass(d):
            problems += _check_stated_defaults(raw[f.name] or {}, b, d, f"{key}.")
        elif f.name == "routing":
            continue  # example rules, no per-key defaults: see test_example_routing_rules_...
        elif f.name in EXAMPLE_MAPS:
            entry = _entry_type(hints[f.name])
            assert entry is not None
            for name, item in b.items():
                problems += _check_entry(raw[f.name][name] or {}, item, entry(), f"{key}.{name}.")
        elif b != d:
            problems.append(f"{key}: config/default.yaml says {b!r}, the dataclass default is {d!r}; "
                            "make them agree (the default belongs in the dataclass)")
    return problems


def _check_entry(raw: dict[str, Any], built: Any, default: Any, where: str) -> list[str]:
    """An example entry: only the keys it states, each against the entry type's default."""
    problems: list[str] = []
    for name in raw:
        b, d = getattr(built, name), getattr(default, name)
        if dataclasses.is_dataclass(d):
            problems += _check_entry(raw[name] or {}, b, d, f"{where}{name}.")
        elif b != d:
            problems.append(f"{where}{name}: the example says {b!r}, an entry that leaves it out gets {d!r}")
    return problems


def test_default_yaml_states_every_setting_with_its_dataclass_default() -> None:
    problems = _check_stated_defaults(RAW, load_config(DEFAULT_CONFIG), Config(), "")
    assert not problems, "\n".join(problems)


def _entry_types(cls: type, seen: set[type]) -> None:
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        for sub in (tp, _entry_type(tp)):
            if sub is not None and dataclasses.is_dataclass(sub) and sub not in seen:
                seen.add(sub)
                _entry_types(sub, seen)


def test_every_key_of_user_entries_is_shown() -> None:
    """Entries of user maps and lists (models, destinations, allowed_peers) need not state every
    key, but each key of the entry type is shown somewhere: stated in an entry, or in a comment
    (the commented nnU-Net example under models, the allowed_peers example)."""
    stated: set[str] = set()

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            stated.update(str(k) for k in node)
            for v in node.values():
                collect(v)
        elif isinstance(node, list):
            for v in node:
                collect(v)

    collect(RAW)
    types: set[type] = set()
    _entry_types(Config, types)
    missing = sorted(f"{t.__name__}.{f.name}" for t in types for f in dataclasses.fields(t)
                     if f.name != "source" and f.name not in stated and not _commented(f.name))
    assert not missing, f"keys shown nowhere in config/default.yaml (state them or show them in a comment): {missing}"


def test_example_routing_rules_are_valid_and_use_only_rule_keys() -> None:
    """Routing rules have no per-key defaults to compare (a rule's condition, pipeline and
    destinations are the admin's choice); the shipped ones must parse and name only rule keys."""
    assert parse_rules(RAW["routing"])
    for rule in RAW["routing"]:
        assert set(rule) <= set(RULE_KEYS), rule


def test_a_file_that_leaves_out_every_default_loads_as_the_shipped_one(tmp_path: Any) -> None:
    """The point of the above: the shipped file and an empty one give the same node, apart from
    the example destinations and routing rules (which an empty file does not have)."""
    empty = tmp_path / "config" / "node.yaml"
    empty.parent.mkdir()
    empty.write_text("{}\n", encoding="utf-8")
    shipped, bare = load_config(DEFAULT_CONFIG), load_config(empty)
    for f in dataclasses.fields(Config):
        if f.name in {"source", "destinations", "routing"}:
            continue
        assert getattr(shipped, f.name) == getattr(bare, f.name), f.name
    assert bare.destinations == {} and bare.routing == []


def test_commented_nnunet_example_shows_the_defaults() -> None:
    """The commented `sciseg:` entry under models shows each nnU-Net key with its value; apart from
    the path (an example), each is what ModelSettings defaults to, i.e. what leaving it out runs."""
    m = re.search(r"^  # sciseg:\n((?:  #.*\n)+)", TEXT, re.MULTILINE)
    assert m, "config/default.yaml: the commented `# sciseg:` models example is gone"
    example = yaml.safe_load("".join(line[4:] + "\n" for line in m.group(1).splitlines()))
    entry = _build(ModelSettings, example, "models.sciseg")
    # every key but sct_data_dir, which only sct:NAME models take (the sct_* entries above it state it)
    assert set(example) == {f.name for f in dataclasses.fields(ModelSettings)} - {"sct_data_dir"}, sorted(example)
    problems = _check_entry({k: v for k, v in example.items() if k != "path"}, entry, ModelSettings(), "models.sciseg.")
    assert not problems, "\n".join(problems)
