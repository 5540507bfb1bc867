"""Routing rules: which complete series go to which pipeline, and why.

The grammar is documented in config/default.yaml (section `routing`). Rules are parsed once
at start (`parse_rules`, errors name the rule and the key) and evaluated on the first
instance of a series (`route`), first match wins. Every decision carries an explanation, one
line per condition with what the attribute held, so an operator can see why a series was or
was not processed (`dicom-node rules test`, series.routing_reason).

This module does not import dicom_node.config (config imports it to validate `routing`);
`dicom-node rules test`, which loads a config, lives in dicom_node.rules_cli.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from dicom_node.config_error import ConfigError
from inference.api import orientation_label  # one definition of 'sagittal' for routing and geometry

DERIVED = ("orientation", "calling_ae")
OPERATORS = ("equals", "iequals", "matches", "contains", "in", "lt", "le", "gt", "ge", "between", "exists")
GROUPS = ("all", "any", "not")
RULE_KEYS = ("name", "when", "pipeline", "destinations")

Lookup = Callable[[str], list[Any]]


# -- derived attributes -----------------------------------------------------------------

def _orientation_vector(ds: Dataset) -> list[float] | None:
    """ImageOrientationPatient, from the top level or (Enhanced MR) the functional groups."""
    iop = ds.get("ImageOrientationPatient")
    if iop is None:
        for group in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
            try:
                iop = ds[group][0].PlaneOrientationSequence[0].ImageOrientationPatient
                break
            except (KeyError, IndexError, AttributeError):
                continue
    try:
        values = [float(v) for v in iop] if iop is not None else None
    except (TypeError, ValueError):
        return None
    return values if values is not None and len(values) == 6 else None


def attribute_values(ds: Dataset, keyword: str, calling_ae: str) -> list[Any]:
    """The values of an attribute as a list: [] when absent or empty; each item of a multi-value."""
    if keyword == "calling_ae":
        return [calling_ae] if calling_ae else []
    if keyword == "orientation":
        iop = _orientation_vector(ds)
        try:
            return [orientation_label(iop)] if iop is not None else []
        except ValueError:  # VolumeError: degenerate orientation counts as absent
            return []
    try:
        value = ds.get(keyword)
    except Exception:  # a malformed value counts as absent rather than stopping routing
        return []
    if value is None or value == "":
        return []
    if isinstance(value, (MultiValue, list, tuple)):
        return [v for v in value if v is not None and v != ""]
    if isinstance(value, pydicom.Sequence):
        return [value] if len(value) else []
    return [value]


# -- conditions ---------------------------------------------------------------------------

def _number(v: Any) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _show(values: list[Any]) -> str:
    if not values:
        return "absent"
    text = "\\".join(str(v) for v in values)
    return repr(text if len(text) <= 60 else text[:57] + "...")


class Condition:
    """A node of a rule's `when`; `evaluate` returns (held, explanation lines)."""

    def evaluate(self, lookup: Lookup, depth: int = 0) -> tuple[bool, list[str]]:
        raise NotImplementedError


@dataclass
class Always(Condition):
    def evaluate(self, lookup: Lookup, depth: int = 0) -> tuple[bool, list[str]]:
        return True, ["  " * depth + "always: yes"]


@dataclass
class Group(Condition):
    kind: str  # all | any
    items: list[Condition]

    def evaluate(self, lookup: Lookup, depth: int = 0) -> tuple[bool, list[str]]:
        results = [c.evaluate(lookup, depth + 1) for c in self.items]
        held = all(r[0] for r in results) if self.kind == "all" else any(r[0] for r in results)
        n_true = sum(r[0] for r in results)
        lines = ["  " * depth + f"{self.kind} of {len(results)} ({n_true} held): {'yes' if held else 'no'}"]
        for _, sub in results:
            lines.extend(sub)
        return held, lines


@dataclass
class Not(Condition):
    item: Condition

    def evaluate(self, lookup: Lookup, depth: int = 0) -> tuple[bool, list[str]]:
        held, sub = self.item.evaluate(lookup, depth + 1)
        return not held, ["  " * depth + f"not: {'yes' if not held else 'no'}"] + sub


@dataclass
class Test(Condition):
    """{attribute: KEYWORD, OP: VALUE}; multi-valued attributes hold if any item does."""

    attribute: str
    op: str
    value: Any
    pattern: re.Pattern[str] | None = field(default=None, repr=False)

    def holds(self, values: list[Any]) -> bool:
        op, target = self.op, self.value
        if op == "exists":
            return bool(values) == target
        if op in ("lt", "le", "gt", "ge", "between"):
            nums = [x for x in (_number(v) for v in values) if x is not None]
            check = {
                "lt": lambda x: x < target, "le": lambda x: x <= target,
                "gt": lambda x: x > target, "ge": lambda x: x >= target,
                "between": lambda x: target[0] <= x <= target[1],
            }[op]
            return any(check(x) for x in nums)
        texts = [str(v).strip() for v in values]
        if op == "equals":
            if isinstance(target, (int, float)):
                return any(_number(v) == target for v in values)
            return any(t == str(target) for t in texts)
        if op == "iequals":
            return any(t.casefold() == str(target).casefold() for t in texts)
        if op == "contains":
            return any(str(target).casefold() in t.casefold() for t in texts)
        if op == "in":
            wanted = {str(w).strip().casefold() for w in target}
            wanted_nums = {_number(w) for w in target if isinstance(w, (int, float))}
            return any(t.casefold() in wanted or (wanted_nums and _number(t) in wanted_nums) for t in texts)
        if op == "matches":
            assert self.pattern is not None
            return any(self.pattern.search(t) for t in texts)
        raise AssertionError(op)

    def evaluate(self, lookup: Lookup, depth: int = 0) -> tuple[bool, list[str]]:
        values = lookup(self.attribute)
        held = self.holds(values)
        return held, ["  " * depth + f"{self.attribute} {self.op} {self.value!r}: "
                      f"{'yes' if held else 'no'} ({_show(values)})"]


@dataclass
class Rule:
    name: str
    when: Condition
    pipeline: str | None = None
    destinations: list[str] = field(default_factory=list)


@dataclass
class RoutingDecision:
    rule: Rule | None  # the first rule that matched, None when none did
    matched: bool
    explanation: list[str]


# -- parsing --------------------------------------------------------------------------------

def _parse_condition(raw: Any, where: str) -> Condition:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a condition is a mapping, got {raw!r}")
    if not raw:
        return Always()
    groups = [k for k in GROUPS if k in raw]
    if groups:
        if len(raw) != 1:
            raise ConfigError(f"{where}: {groups[0]!r} must be the only key of its condition, found {sorted(raw)}")
        kind = groups[0]
        body = raw[kind]
        if kind == "not":
            return Not(_parse_condition(body, f"{where}.not"))
        if not isinstance(body, list) or not body:
            raise ConfigError(f"{where}.{kind}: expected a non-empty list of conditions")
        return Group(kind, [_parse_condition(c, f"{where}.{kind}[{i}]") for i, c in enumerate(body)])
    if "attribute" not in raw:
        raise ConfigError(f"{where}: unknown condition keys {sorted(raw)}; use all, any, not, or attribute + "
                          f"one of {', '.join(OPERATORS)}")
    keyword = raw["attribute"]
    if not isinstance(keyword, str) or (keyword not in DERIVED and tag_for_keyword(keyword) is None):
        raise ConfigError(f"{where}.attribute: {keyword!r} is not a DICOM keyword nor one of {', '.join(DERIVED)}")
    ops = [k for k in raw if k != "attribute"]
    unknown = [k for k in ops if k not in OPERATORS]
    if unknown:
        raise ConfigError(f"{where}: unknown operator {unknown[0]!r} (use one of {', '.join(OPERATORS)})")
    if len(ops) != 1:
        raise ConfigError(f"{where}: exactly one operator per attribute test, found {ops or 'none'}")
    op = ops[0]
    return _make_test(keyword, op, raw[op], f"{where}.{op}")


def _make_test(keyword: str, op: str, value: Any, where: str) -> Test:
    def is_num(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if op == "exists":
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
    elif op in ("lt", "le", "gt", "ge"):
        if not is_num(value):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
    elif op == "between":
        if not (isinstance(value, list) and len(value) == 2 and all(is_num(v) for v in value) and value[0] <= value[1]):
            raise ConfigError(f"{where}: expected [low, high] numbers with low <= high, got {value!r}")
    elif op == "in":
        if not isinstance(value, list) or not value or not all(isinstance(v, (str, int, float)) for v in value):
            raise ConfigError(f"{where}: expected a non-empty list of strings or numbers, got {value!r}")
    elif op == "equals":
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string or number, got {value!r}")
    elif not isinstance(value, str):  # iequals, contains, matches
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    pattern = None
    if op == "matches":
        try:
            pattern = re.compile(value, re.IGNORECASE)
        except re.error as exc:
            raise ConfigError(f"{where}: {value!r} is not a valid regular expression ({exc})") from None
    return Test(keyword, op, value, pattern)


def parse_rules(raw: list[dict[str, Any]]) -> list[Rule]:
    """Validate the `routing` section into Rules; ConfigError names the rule and the key."""
    if not isinstance(raw, list):
        raise ConfigError(f"routing: expected a list of rules, got {type(raw).__name__}")
    rules: list[Rule] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        where = f"routing[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: a rule is a mapping with {', '.join(RULE_KEYS)}")
        name = item.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{where}.name: every rule needs a non-empty name")
        where = f"routing[{i}] ({name!r})"
        if name in seen:
            raise ConfigError(f"{where}.name: duplicate rule name")
        seen.add(name)
        unknown = sorted(set(item) - set(RULE_KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(RULE_KEYS)})")
        if "when" not in item:
            raise ConfigError(f"{where}.when: missing (use {{}} for a rule that always matches)")
        when = _parse_condition(item["when"] if item["when"] is not None else {}, f"{where}.when")
        pipeline = item.get("pipeline")
        if pipeline is not None and (not isinstance(pipeline, str) or not pipeline):
            raise ConfigError(f"{where}.pipeline: a pipeline name or null, got {pipeline!r}")
        dests = item.get("destinations", []) or []
        if not isinstance(dests, list) or not all(isinstance(d, str) and d for d in dests):
            raise ConfigError(f"{where}.destinations: expected a list of destination names, got {dests!r}")
        rules.append(Rule(name=name, when=when, pipeline=pipeline, destinations=list(dests)))
    return rules


# -- evaluation ------------------------------------------------------------------------------

def route(rules: list[Rule], ds: Dataset, calling_ae: str) -> RoutingDecision:
    """The first rule whose condition holds for `ds` (a series' first instance), with the why."""
    cache: dict[str, list[Any]] = {}

    def lookup(keyword: str) -> list[Any]:
        if keyword not in cache:
            cache[keyword] = attribute_values(ds, keyword, calling_ae)
        return cache[keyword]

    explanation: list[str] = []
    for rule in rules:
        held, lines = rule.when.evaluate(lookup, depth=1)
        explanation.append(f"rule {rule.name!r}: {'matched' if held else 'not matched'}")
        explanation.extend(lines)
        if held:
            return RoutingDecision(rule=rule, matched=True, explanation=explanation)
    explanation.append("no rule matched")
    return RoutingDecision(rule=None, matched=False, explanation=explanation)
