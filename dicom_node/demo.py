"""`dicom-node demo`: the whole product on this machine, end to end, with real peers.

Starts Orthanc on loopback as the PACS, starts the node (`dicom-node serve`) in a child
process, writes the bundled sample volumes as DICOM MR series, sends them with dcmtk's
`storescu` like a modality would, waits for the SEG and SR to arrive in Orthanc, prints
the measurements read back from the SR, and stops everything.
"""
from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import yaml
from pydicom import dcmread

from dicom_node.config import DEFAULT_CONFIG
from dicom_node.local_pacs import LocalOrthanc, free_port

SAMPLE_DIR = Path(__file__).resolve().parent / "sample"
SAMPLES = {
    "sagittal": ("errsm_21_t2.nii.gz", "T2 SAG SPINE", "DEMO^SAGITTAL", "DEMO-SAG-01"),
    "lesion": ("t2_fake_lesion.nii.gz", "T2 SAG C-SPINE LESION", "DEMO^LESION", "DEMO-LES-01"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sample", choices=[*SAMPLES, "both"], default="both", help="which bundled series to send")
    p.add_argument("--workdir", default="var/demo", help="scratch folder (emptied first)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for results")
    p.add_argument("--device", default="auto", help="inference device: auto, cpu, cuda")


def node_config(workdir: Path, pacs: LocalOrthanc, device: str) -> Path:
    """The default config with loopback ports, a scratch data dir and Orthanc as the destination."""
    cfg = yaml.safe_load(DEFAULT_CONFIG.read_text())
    cfg["node"]["port"] = free_port()
    cfg["storage"]["data_dir"] = str(workdir / "node")
    cfg["completion"]["idle_seconds"] = 5.0
    cfg["completion"]["poll_interval_s"] = 0.5
    cfg["worker"]["device"] = device
    cfg["worker"]["poll_interval_s"] = 0.5
    cfg["destinations"]["pacs"].update(ae_title=pacs.ae_title, host="127.0.0.1", port=pacs.dicom_port)
    cfg["dispatch"]["backoff_initial_s"] = 1.0
    path = workdir / "node.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def start_node(config: Path, log_path: Path) -> tuple[subprocess.Popen[str], int]:
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "dicom_node.cli", "serve", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=log, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "READY AE host:port" once the listener accepts associations
    if not line.startswith("READY"):
        proc.kill()
        raise RuntimeError(f"node did not start; see {log_path}")
    return proc, int(line.split(":")[-1])


def sr_numbers(ds: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], str, float, str]]:
    """(enclosing containers, concept name, value, unit) of every NUM item in an SR content tree."""
    for item in getattr(ds, "ContentSequence", []):
        name = item.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in item else ""
        if item.ValueType == "NUM" and "MeasuredValueSequence" in item and item.MeasuredValueSequence:
            mv = item.MeasuredValueSequence[0]
            yield path, name, float(mv.NumericValue), mv.MeasurementUnitsCodeSequence[0].CodeValue
        if item.ValueType == "CONTAINER" or "ContentSequence" in item:
            sub = path + (name,) if item.ValueType == "CONTAINER" else path
            yield from sr_numbers(item, sub)


def sr_texts(ds: Any) -> Iterator[tuple[str, str]]:
    """(concept name, value) of CODE and TEXT items: tracking ids, findings, 'no lesion' statements."""
    for item in getattr(ds, "ContentSequence", []):
        name = item.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in item else ""
        if item.ValueType == "CODE":
            yield name, item.ConceptCodeSequence[0].CodeMeaning
        elif item.ValueType == "TEXT":
            yield name, item.TextValue
        if "ContentSequence" in item:
            yield from sr_texts(item)


def wait_for_results(pacs: LocalOrthanc, study_uids: set[str], timeout: float) -> dict[str, dict[str, Any]]:
    """Poll Orthanc until every study has a SEG and an SR; returns {study_uid: {'SEG': info, 'SR': info}}."""
    deadline = time.monotonic() + timeout
    found: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        found = {}
        for modality, infos in pacs.series_by_modality().items():
            for info in infos:
                study = pacs.get(f"/studies/{info['ParentStudy']}")["MainDicomTags"]["StudyInstanceUID"]
                found.setdefault(study, {})[modality] = info
        if all({"SEG", "SR"} <= set(found.get(s, {})) for s in study_uids):
            return found
        time.sleep(1.0)
    raise TimeoutError(f"results did not arrive in Orthanc within {timeout:.0f} s")


def run(args: argparse.Namespace) -> int:
    from inference.nifti_to_dicom import write_series

    storescu = shutil.which("storescu")
    if storescu is None:
        print("demo: dcmtk's storescu is not installed (make peers)", file=sys.stderr)
        return 2
    workdir = Path(args.workdir).resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    names = list(SAMPLES) if args.sample == "both" else [args.sample]

    print(f"[demo] writing DICOM series from the bundled volumes into {workdir / 'series'}")
    studies: dict[str, str] = {}
    series_dirs = []
    for name in names:
        nifti, desc, patient, pid = SAMPLES[name]
        out = workdir / "series" / name
        files = write_series(SAMPLE_DIR / nifti, out, series_description=desc, patient_name=patient,
                             patient_id=pid, uid_seed=f"demo-{name}")
        studies[dcmread(files[0], stop_before_pixels=True).StudyInstanceUID] = name
        series_dirs.append(out)
        print(f"[demo]   {name}: {len(files)} instances, '{desc}'")

    with LocalOrthanc(workdir / "orthanc") as pacs:
        print(f"[demo] Orthanc (the PACS) up: DICOM {pacs.ae_title}@127.0.0.1:{pacs.dicom_port}, REST {pacs.url}")
        config = node_config(workdir, pacs, args.device)
        node, port = start_node(config, workdir / "node.log")
        try:
            print(f"[demo] node up: SPINE_NODE@127.0.0.1:{port} (log {workdir / 'node.log'})")
            t0 = time.monotonic()
            for d in series_dirs:
                cmd = [storescu, "-aet", "DEMO_MR", "-aec", "SPINE_NODE", "+sd", "+r", "127.0.0.1", str(port), str(d)]
                subprocess.run(cmd, check=True, capture_output=True, timeout=300)
            print(f"[demo] storescu sent {len(series_dirs)} series in {time.monotonic() - t0:.1f} s; waiting for SEG + SR")
            results = wait_for_results(pacs, set(studies), args.timeout)
            print(f"[demo] SEG and SR stored in Orthanc {time.monotonic() - t0:.1f} s after the first C-STORE\n")
            for study_uid, name in studies.items():
                print_study(pacs, name, results[study_uid])
        finally:
            node.terminate()
            node.wait(timeout=60)
    print(f"[demo] done. Results also on disk under {workdir / 'node' / 'results'}; "
          f"`dicom-node status --config {config}` lists the jobs.")
    return 0


def print_study(pacs: LocalOrthanc, name: str, series: dict[str, Any]) -> None:
    seg = dcmread(io.BytesIO(pacs.instance_files(series["SEG"])[0]), stop_before_pixels=True)
    sr = dcmread(io.BytesIO(pacs.instance_files(series["SR"])[0]))
    print(f"== {name}: {seg.SeriesDescription} ({len(seg.SegmentSequence)} segments) + {sr.SeriesDescription}")
    for group, concept, value, unit in sr_numbers(sr):
        where = " / ".join(g for g in group[2:] if g) or "report"
        print(f"   {where:<28} {concept:<44} {value:12.4f} {unit}")
    for concept, value in sr_texts(sr):
        if concept in ("Finding", "Tracking Identifier") or "lesion" in value.lower():
            print(f"   {concept:<73} {value}")
    print()
