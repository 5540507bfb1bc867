"""`dicom-node rules test FILE_OR_DIR`: which routing rule matches each series, and why.

Apart from dicom_node.routing because it loads the config, and config imports routing (to
validate the `routing` section): here both are imported, one way.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Iterator

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from dicom_node.config import ConfigError, load_config
from dicom_node.routing import route


def add_rules_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="rules_command", required=True)
    t = sub.add_parser("test", help="show which rule matches each series of FILE_OR_DIR and why")
    t.add_argument("path", metavar="FILE_OR_DIR", type=Path, help="a DICOM file or a folder (searched recursively)")
    t.add_argument("--config", type=Path, default=None,
                   help="config file (default: $DICOM_NODE_CONFIG or the bundled one)")
    t.add_argument("--calling-ae", default="", help="the sender's AE title, for rules on calling_ae")


def _dicom_files(path: Path) -> Iterator[tuple[Path, Dataset]]:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        try:
            yield f, pydicom.dcmread(f, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError):
            continue


def run_rules(args: argparse.Namespace) -> int:
    if not args.path.exists():
        print(f"rules test: {args.path} does not exist", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config)
        rules = config.routing_rules()
    except ConfigError as exc:
        print(f"rules test: {exc}", file=sys.stderr)
        return 2
    for name, why in config.pipelines_off().items():
        print(f"pipeline {name} is off (its rules are skipped): {why}")
    series: dict[str, tuple[Path, Dataset, int]] = {}
    for f, ds in _dicom_files(args.path):
        uid = str(ds.get("SeriesInstanceUID", "")) or f"(no SeriesInstanceUID: {f})"
        first, first_ds, n = series.get(uid, (f, ds, 0))
        series[uid] = (first, first_ds, n + 1)
    if not series:
        print(f"rules test: no DICOM files under {args.path}", file=sys.stderr)
        return 2
    for uid, (first, ds, n) in series.items():
        decision = route(rules, ds, args.calling_ae)
        rule = decision.rule
        if rule is None:
            verdict = "no rule matched: stored only"
        elif rule.pipeline is None:
            verdict = f"rule {rule.name!r}: stored only (no pipeline)"
        else:
            destinations = ", ".join(rule.destinations) or "-"
            verdict = f"rule {rule.name!r}: pipeline {rule.pipeline}, destinations {destinations}"
        print(f"series {uid}  {ds.get('Modality', '')} {str(ds.get('SeriesDescription', ''))!r}  "
              f"{n} file(s), first {first}")
        print(f"  -> {verdict}")
        for line in decision.explanation:
            print(f"    {line}")
    return 0
