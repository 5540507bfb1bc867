"""`dicom-node demo`: the whole product on this machine, end to end, with real peers.

Starts Orthanc on loopback as the PACS, starts the node (`dicom-node serve`) in a child
process, writes the bundled sample volumes as DICOM MR series, sends them with dcmtk's
`storescu` like a modality would (to the node, and to the PACS as the modality also does),
waits for the SEG and SR to arrive in Orthanc, prints the measurements read back from the SR
and, last, the OHIF Viewer's link to each study (served on loopback, reading Orthanc through
its DICOMweb plugin); then stops everything, or with --keep leaves Orthanc and the viewer
running until Ctrl-C.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pydicom import dcmread

from inference.volume import Volume
from testbed.node_process import node_config, start_node
from testbed.orthanc import LocalOrthanc
from testbed.viewer import for_ohif

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "dicom_node" / "sample"  # shipped with the node
SAMPLES = {
    "sagittal": ("errsm_21_t2.nii.gz", "T2 SAG SPINE", "DEMO^SAGITTAL", "DEMO-SAG-01"),
    "lesion": ("t2_fake_lesion.nii.gz", "T2 SAG C-SPINE LESION", "DEMO^LESION", "DEMO-LES-01"),
    # errsm_11 with one lesion painted into its cord (inference.train.lesions, fixed seed) around the C5
    # body: a whole-spine series whose vertebral levels can be counted, so the lesion gets its level
    "levels": ("errsm_11_t2.nii.gz", "T2 SAG SPINE LESION", "DEMO^LEVELS", "DEMO-LEV-01"),
}
PAINT_SEED = 3
PAINT_SLICES = (134, 146)  # S-I slices of errsm_11 (axis 1) where the lesion's centre is drawn: the C5 body
PATIENT = {"levels": {"PatientSex": "M", "PatientAge": "031Y"}}  # the header the normative match reads


def painted_levels_sample() -> Volume:
    """errsm_11 with one painted intramedullary lesion, as the demo sends it."""
    import numpy as np

    from inference.train.lesions import LesionConfig, paint_lesions
    from inference.volume import load_nifti

    volume = load_nifti(SAMPLE_DIR / "errsm_11_t2.nii.gz")
    cord = load_nifti(SAMPLE_DIR / "errsm_11_t2_seg-manual.nii.gz").array > 0.5
    shape = volume.array.shape
    focus = (slice(0, shape[0]), slice(*PAINT_SLICES), slice(0, shape[2]))
    cfg = LesionConfig(length_mm=(12.0, 18.0), width_mm=(4.0, 6.0), contrast=(0.8, 1.0), p_core=0.0,
                       p_border=0.0)
    image, _, _ = paint_lesions(volume.array, cord, volume.spacing, np.random.default_rng(PAINT_SEED), cfg,
                                n_lesions=1, focus=focus)
    return Volume(array=image, affine=volume.affine)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sample", choices=[*SAMPLES, "all", "both"], default="all",
                   help="which bundled series to send (both: the two first, as before levels)")
    p.add_argument("--workdir", default="var/demo", help="scratch folder (emptied first)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for results")
    p.add_argument("--device", default="auto", help="inference device: auto, cpu, cuda")
    p.add_argument("--keep", action="store_true",
                   help="leave Orthanc and the OHIF viewer running after the demo, until Ctrl-C")
    p.add_argument("--viewer-port", type=int, default=0, help="the OHIF viewer's port (default: a free one)")


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
    from testbed.series import write_series

    storescu = shutil.which("storescu")
    if storescu is None:
        print("demo: dcmtk's storescu is not installed (make peers)", file=sys.stderr)
        return 2
    workdir = Path(args.workdir).resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    names = {"all": list(SAMPLES), "both": ["sagittal", "lesion"]}.get(args.sample, [args.sample])

    print(f"[demo] writing DICOM series from the bundled volumes into {workdir / 'series'}")
    studies: dict[str, str] = {}
    series_dirs = []
    for name in names:
        nifti, desc, patient, pid = SAMPLES[name]
        out = workdir / "series" / name
        source = painted_levels_sample() if name == "levels" else SAMPLE_DIR / nifti
        files = write_series(source, out, series_description=desc, patient_name=patient,
                             patient_id=pid, uid_seed=f"demo-{name}", extra=PATIENT.get(name))
        studies[dcmread(files[0], stop_before_pixels=True).StudyInstanceUID] = name
        series_dirs.append(out)
        print(f"[demo]   {name}: {len(files)} instances, '{desc}'")

    with LocalOrthanc(workdir / "orthanc", dicomweb=True) as pacs:
        print(f"[demo] Orthanc (the PACS) up: DICOM {pacs.ae_title}@127.0.0.1:{pacs.dicom_port}, REST {pacs.url}, "
              f"DICOMweb {pacs.dicomweb_url}")
        config = for_ohif(node_config(workdir, pacs, args.device))  # the demo's PACS is read with OHIF
        node, port = start_node(config, workdir / "node.log")
        try:
            print(f"[demo] node up: SPINE_NODE@127.0.0.1:{port} (log {workdir / 'node.log'})")
            t0 = time.monotonic()
            for d in series_dirs:
                cmd = [storescu, "-aet", "DEMO_MR", "-aec", "SPINE_NODE", "+sd", "+r", "127.0.0.1", str(port), str(d)]
                subprocess.run(cmd, check=True, capture_output=True, timeout=300)
            print(f"[demo] storescu sent {len(series_dirs)} series in {time.monotonic() - t0:.1f} s; "
                  "waiting for SEG + SR")
            for d in series_dirs:  # the modality also sends its images to the PACS, where the viewer reads them
                cmd = [storescu, "-aet", "DEMO_MR", "-aec", pacs.ae_title, "+sd", "+r", "127.0.0.1",
                       str(pacs.dicom_port), str(d)]
                subprocess.run(cmd, check=True, capture_output=True, timeout=300)
            results = wait_for_results(pacs, set(studies), args.timeout)
            print(f"[demo] SEG and SR stored in Orthanc {time.monotonic() - t0:.1f} s after the first C-STORE\n")
            for study_uid, name in studies.items():
                print_study(pacs, name, results[study_uid], workdir / "received" / name)
        finally:
            node.terminate()
            node.wait(timeout=60)
        print(f"[demo] done. Results also on disk under {workdir / 'node' / 'results'}; "
              f"`dicom-node status --config {config}` lists the jobs.")
        show_in_viewer(pacs, studies, args, workdir)
    return 0


def show_in_viewer(pacs: LocalOrthanc, studies: dict[str, str], args: argparse.Namespace, workdir: Path) -> None:
    """The OHIF viewer on this Orthanc: print each study's link; with --keep, serve until Ctrl-C."""
    from testbed.ohif import OhifMissing
    from testbed.viewer import ViewerServer, wait_for_interrupt

    viewer = ViewerServer(pacs, port=args.viewer_port or None, access_log=workdir / "viewer-access.log")
    try:
        viewer.start()
    except OhifMissing as exc:
        print(f"[demo] viewer: {exc}")
        return
    try:
        print(f"[demo] OHIF viewer (DICOMweb root {pacs.dicomweb_url}, proxied as {viewer.url}/dicom-web):")
        for study_uid, name in studies.items():
            print(f"[demo]   {name}: {viewer.study_url(study_uid)}")
        if not args.keep:
            print("[demo] (`dicom-node demo --keep` leaves Orthanc and the viewer running to open these links)")
            return
        print("[demo] Orthanc and the viewer keep running; Ctrl-C stops them")
        wait_for_interrupt()
        print("\n[demo] stopping Orthanc and the viewer")
    finally:
        viewer.stop()


def level_lines(m: dict[str, Any]) -> list[str]:
    """The vertebral levels as the SR gives them: each lesion's span and the C2-C3 CSA among healthy adults."""
    rows = m.get("cord_csa_mm2_per_level")
    if not rows:
        return ["vertebral levels: unknown (none in the SR; the node log says why)"]
    out = [f"vertebral levels: {rows[0]['name']} to {rows[-1]['name']} (cord CSA per level in the SR)"]
    for les in m["lesions"]:
        out.append(f"lesion {les['label']}: level {les.get('level_span') or 'unknown'}")
    if m.get("cord_csa_c2c3_mm2") is not None:
        line = f"C2-C3 CSA {m['cord_csa_c2c3_mm2']:.1f} mm2"
        if m.get("cord_csa_c2c3_z_score") is not None:
            line += (f", z-score {m['cord_csa_c2c3_z_score']:+.2f} "
                     f"({m.get('cord_csa_c2c3_percentile', float('nan')):.0f}th percentile of healthy adults)")
        out.append(line)
    if m.get("compression_level") is not None:
        from inference.vertebrae import level_name

        out.append(f"narrowest level {level_name(int(m['compression_level']))}: compression ratio "
                   f"{m.get('compression_ratio_normalized_pct', float('nan')):.1f} % normalised to healthy adults")
    return out


def print_study(pacs: LocalOrthanc, name: str, series: dict[str, Any], save_dir: Path) -> None:
    """What reached the PACS: the SEG's segments and the SR's numbers, read back from Orthanc."""
    from dicom_node.results.readback import measurements_from_sr

    save_dir.mkdir(parents=True, exist_ok=True)
    (save_dir / "seg.dcm").write_bytes(pacs.instance_files(series["SEG"])[0])
    (save_dir / "sr.dcm").write_bytes(pacs.instance_files(series["SR"])[0])
    seg = dcmread(save_dir / "seg.dcm", stop_before_pixels=True)
    sr = dcmread(save_dir / "sr.dcm")
    m = measurements_from_sr(sr)
    labels = ", ".join(s.SegmentLabel for s in seg.SegmentSequence)
    print(f"== {name}: SEG '{seg.SeriesDescription}' [{labels}]; SR '{sr.SeriesDescription}'")
    print(f"   cord: volume {m.get('cord_volume_mm3', float('nan')):.0f} mm3, "
          f"mean cross-sectional area {m.get('cord_csa_mm2_mean', float('nan')):.1f} mm2")
    if not m.get("lesion_found", bool(m["lesions"])):
        print("   lesions: none found (stated explicitly in the SR)")
    for les in m["lesions"]:
        print(f"   lesion {les['label']}: volume {les.get('volume_mm3', float('nan')):.1f} mm3, "
              f"length {les.get('length_mm', float('nan')):.1f} mm, width {les.get('width_mm', float('nan')):.1f} mm, "
              f"max axial damage ratio {les.get('max_axial_damage_ratio', float('nan')):.3f}, "
              f"tissue bridges dorsal {les.get('dorsal_bridge_mm', float('nan')):.2f} / "
              f"ventral {les.get('ventral_bridge_mm', float('nan')):.2f} mm")
    if m["lesions"]:
        print(f"   total: {m.get('lesion_count', 0):.0f} lesion(s), {m.get('total_volume_mm3', 0):.1f} mm3, "
              f"max axial damage ratio {m.get('max_axial_damage_ratio', 0):.3f}")
    for line in level_lines(m):
        print(f"   {line}")
    print(f"   as stored in the PACS: {save_dir / 'seg.dcm'}, {save_dir / 'sr.dcm'} (dsrdump shows the SR)\n")
