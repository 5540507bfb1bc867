"""Which model produced a result: shown in SEG/SR and logs.

Why a module of its own: both runtimes' results carry it (inference.pipeline for ours,
inference.sct for Spinal Cord Toolbox's models), and neither may import the other back.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelIdentity:
    """Which model produced a result: shown in SEG/SR and logs."""

    name: str
    version: str
    description: str = ""
