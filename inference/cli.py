"""Offline tools on files: `dicom-node segment` and `dicom-node analyze-lesion`.

Each command has `add_*_arguments(parser)` and `run_*(args) -> exit code`; dicom_node.cli wires
them into the one `dicom-node` console script.
"""
from __future__ import annotations

import argparse


def add_segment_arguments(p: argparse.ArgumentParser) -> None:
    raise NotImplementedError  # filled by the inference runtime work


def run_segment(args: argparse.Namespace) -> int:
    raise NotImplementedError


def add_analyze_lesion_arguments(p: argparse.ArgumentParser) -> None:
    raise NotImplementedError  # filled by the metrics work


def run_analyze_lesion(args: argparse.Namespace) -> int:
    raise NotImplementedError
