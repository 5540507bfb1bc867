"""The gate before dispatch: a result is written atomically, passes dciodvfy, and reads back.

dciodvfy (dicom3tools) is the conformance judge named in DESIGN.md. Its "Error" lines block
sending; its "Warning" lines are kept for the log (our private coding scheme 99SPINE always
gives one per use: dciodvfy only knows a fixed list of private schemes, declared or not).
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pydicom

from dicom_node.results.readback import (  # noqa: F401  (re-exported: the worker imports from here)
    ResultValidationError,
    readback_seg,
    readback_sr,
)
from dicom_node.results.viewer_rules import ohif_sr_problems
from inference.api import atomic_write

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
COMPREHENSIVE_3D_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.34"
SECONDARY_CAPTURE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"


@dataclass
class ValidationReport:
    """dciodvfy's findings for one object; ``ok`` means no errors (warnings allowed)."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def find_dciodvfy() -> str:
    """Path of dciodvfy, or an error that says how to get it."""
    path = shutil.which("dciodvfy")
    if path is None:
        raise ResultValidationError(
            "dciodvfy not found: install dicom3tools (apt-get install dicom3tools); "
            "results are not sent unvalidated"
        )
    return path


def parse_dciodvfy(output: str) -> ValidationReport:
    """Split dciodvfy output into error and warning lines (other lines are context)."""
    report = ValidationReport()
    for line in output.splitlines():
        line = line.strip()
        if line.startswith("Error"):
            report.errors.append(line)
        elif line.startswith("Warning"):
            report.warnings.append(line)
    return report


def validate_dicom(ds_or_path: pydicom.Dataset | str | Path, *, timeout_s: float = 120.0) -> ValidationReport:
    """Run dciodvfy on a written file (a Dataset is first written to a temporary file)."""
    tool = find_dciodvfy()
    if isinstance(ds_or_path, pydicom.Dataset):
        with tempfile.TemporaryDirectory(prefix="dciodvfy-") as tmp:
            path = Path(tmp) / "object.dcm"
            ds_or_path.save_as(path, enforce_file_format=True)
            return validate_dicom(path, timeout_s=timeout_s)
    path = Path(ds_or_path)
    if not path.is_file():
        raise ResultValidationError(f"{path}: no such file to validate")
    try:
        proc = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=timeout_s,
                              errors="replace")
    except subprocess.TimeoutExpired as exc:
        raise ResultValidationError(f"dciodvfy did not finish on {path} within {timeout_s:.0f} s") from exc
    report = parse_dciodvfy(proc.stdout + "\n" + proc.stderr)
    if proc.returncode != 0 and not report.errors:
        report.errors.append(f"Error - dciodvfy exited with status {proc.returncode}: {proc.stderr.strip()[:200]}")
    return report


def check_result(path: str | Path) -> ValidationReport:
    """The full gate for one written SEG or SR: dciodvfy without errors, then highdicom read-back
    (and for an SR, what OHIF's loader needs: ``viewer_rules``).

    dciodvfy is another process: it runs (once) on the other core while this one reads the file
    back (issue 21). Its errors still come first, as if it had run first: a file it rejects is
    named for its dciodvfy errors, whatever the read-back says.

    Raises ResultValidationError naming the first errors; returns the report (warnings) if fine.
    """
    path = Path(path)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dciodvfy") as pool:
        verdict = pool.submit(validate_dicom, path)
        try:
            read_back(path)
        except Exception:
            _raise_for_errors(path, verdict.result())
            raise
        report = verdict.result()
    _raise_for_errors(path, report)
    return report


def _raise_for_errors(path: Path, report: ValidationReport) -> None:
    if report.errors:
        raise ResultValidationError(
            f"{path.name}: {len(report.errors)} dciodvfy error(s), not sent: " + "; ".join(report.errors[:5])
        )


def read_back(path: Path) -> None:
    """The file as a receiver reads it: highdicom parses a SEG or an SR (and OHIF's loader must be
    able to show the SR), a Secondary Capture's pixels decode. Raises ResultValidationError if not."""
    sop_class = str(pydicom.dcmread(str(path), stop_before_pixels=True).SOPClassUID)
    if sop_class == SEG_STORAGE:
        readback_seg(path)
    elif sop_class == COMPREHENSIVE_3D_SR_STORAGE:
        problems = ohif_sr_problems(readback_sr(path))  # the parsed SR: the file is read once here
        if problems:  # OHIF would blank the radiologist's viewport (issue 20): not sent
            raise ResultValidationError(f"{path.name}: viewers cannot show this SR: " + "; ".join(problems[:5]))
    elif sop_class == SECONDARY_CAPTURE_STORAGE:
        try:  # the burned-in overlay must decode
            _ = pydicom.dcmread(str(path)).pixel_array
        except Exception as exc:
            raise ResultValidationError(f"{path.name}: Secondary Capture pixels do not decode: {exc}") from None
    else:
        raise ResultValidationError(
            f"{path.name}: SOP class {sop_class} is not SEG, Comprehensive 3D SR or Secondary Capture")


def write_result(ds: pydicom.Dataset, path: str | Path) -> Path:
    """Write a Part-10 file with `atomic_write` (temp name in the same folder, fsync, rename,
    fsync folder): a crash leaves either the old file or the complete new one, never half a result.
    """
    def save(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            ds.save_as(fh, enforce_file_format=True)

    return atomic_write(path, save)
