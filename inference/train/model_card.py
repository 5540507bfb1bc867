"""MODEL_CARD.md for a trained model, written from model.json and the evaluation result.

Why generated: the card's table must be the numbers evaluate.py measured, never typed in.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from inference.models.registry import ModelMeta, mirror_axes

ATTRIBUTION = """\
| folder | what | labels | source (licence) | used for |
|---|---|---|---|---|
| `spine-t2-sag/errsm_11`, `errsm_18`, `errsm_21` | sagittal 3D T2w spine, healthy adults, 1 mm iso | manual cord | Spinal Cord Toolbox test data, 2014 (MIT) | training (11, 18); validation (21) |
| `spine-t2-sag/sct_example` | same protocol, another subject | semi-automatic cord | Spinal Cord Toolbox example data (MIT) | training |
| `lesion-example/` | T2w crop of the same person as `sct_example` with a synthetic lesion | cord + lesion | Spinal Cord Toolbox test data (MIT) | training |
| `t2star-axial/sub-*` | axial T2*w cervical cord, several sites, 1.5/3/7 T | manual cord | Spinal Cord Grey Matter Challenge (CC0) | training (10062 Ses1/Ses2, 9418, 9669); validation (9584) |
| `multi-contrast/sub-unf01_*` | T2w, T2*w, T1w crops of one subject, 1 mm iso | manual cord | spine-generic via ivadomed test data (CC0) | training |
| `multi-contrast/sct_testing_t1w*` | T1w crop, 1 mm iso | manual cord | Spinal Cord Toolbox test data (MIT) | training |
"""  # noqa: E501 (a Markdown table row cannot wrap)


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def results_table(summary: dict[str, Any]) -> str:
    """The headline table: metric, value, target, met."""
    t, met = summary.get("targets", {}), summary.get("met", {})
    lines = ["| metric (validation subjects only) | value | target | met |", "|---|---|---|---|"]

    def row(label: str, key: str, digits: int = 3, cmp: str = ">=") -> None:
        if key in summary:
            target = f"{cmp} {t[key]}" if key in t else ""
            was_met = _fmt(met.get(key)) if key in met else ""
            lines.append(f"| {label} | {_fmt(summary[key], digits)} | {target} | {was_met} |")

    row("cord Dice, real sagittal T2w (errsm_21, manual mask)", "cord_dice_sag_t2")
    row("cord relative volume error, sagittal T2w", "cord_rve_sag_t2")
    row("cord Dice, real axial T2*w (sub-9584, manual mask)", "cord_dice_ax_t2star")
    row("cord relative volume error, axial T2*w", "cord_rve_ax_t2star")
    row("cord Dice, axial T2w 5 mm (errsm_21 through 5 mm slabs)", "cord_dice_ax_t2")
    row("cord Dice with painted lesions (mean over copies)", "cord_dice_with_lesions")
    row("lesion Dice, synthetic lesions of every family (mean over copies)", "lesion_dice")
    row("lesion-wise sensitivity", "lesion_sensitivity")
    row("lesion-wise PPV", "lesion_ppv")
    row("lesion-wise F1", "lesion_f1")
    row("lesions of 20 mm³ or more with volume within ±25 %", "volume_within_25pct")
    if "lesions_true" in summary:
        lines.append(f"| lesions painted / predicted (components) | "
                     f"{summary['lesions_true']} / {summary['lesions_pred']} | | |")
    for key, label, digits in (("volume_mm3", "total lesion volume per case [mm³]", 1),
                               ("length_mm", "total lesion length per case [mm]", 1),
                               ("max_axial_damage_ratio", "max axial damage ratio per case", 3)):
        if f"{key}_mean_abs_error" in summary:
            corr = summary.get(f"{key}_corr")
            lines.append(f"| {label}: mean abs error (mean true value; Pearson r) | "
                         f"{_fmt(summary[f'{key}_mean_abs_error'], digits)} "
                         f"({_fmt(summary[f'{key}_mean_true'], digits)}; "
                         f"r {_fmt(corr, 2)}) | | |")
    row("largest false lesion on lesion-free volumes [mm³]", "largest_false_lesion_mm3", 1, "<=")
    row("inference on sagittal 384×215×52, 2-core CPU [s]", "inference_s", 1, "<=")
    return "\n".join(lines)


FAMILY_TEXT = {
    "painter": "the original painter (`lesions.py`): irregular blobs 2–40 mm, 35 % at the cord border",
    "contusion": "acute SCI (`families/contusion.py`): fusiform edema 10–60 mm, 60 % with a haemorrhagic "
                 "core, cord swollen by 5–45 %",
    "cyst": "chronic SCI (`families/cyst.py`): CSF-bright cavity of 1–3 loculi, 5–40 mm, gliotic rim, "
            "cord thinned by 10–35 %",
    "demyelination": "MS-like (`families/demyelination.py`, 70 %): 1–4 ovoid lesions 3–15 mm in dorsal or "
                     "lateral columns; NMOSD-like (30 %): one central lesion 45–100 mm",
}
LESION_COLUMNS = ("| {what} | copies | lesion Dice (worst copy) | sensitivity | PPV | F1 | "
                  "volume error, lesions ≥ 20 mm³: median (worst) | within ±25 % | "
                  "length error per case, mean (worst) [mm] | damage ratio error "
                  "per case, mean |\n|---|---|---|---|---|---|---|---|---|---|")


def lesion_row(label: str, v: dict[str, Any]) -> str:
    """One row of the per-family / per-group / leave-one-family-out tables."""
    def pct(key: str) -> str:
        return f"{100 * v[key]:.0f} %" if v.get(key) is not None else "n/a"

    worst = v.get("volume_error_worst")
    return (f"| {label} | {v.get('copies', '')} | "
            f"{_fmt(v.get('lesion_dice'))} ({_fmt(v.get('lesion_dice_min'))}) | "
            f"{_fmt(v.get('lesion_sensitivity'), 2)} | {_fmt(v.get('lesion_ppv'), 2)} | "
            f"{_fmt(v.get('lesion_f1'), 2)} | "
            f"{pct('volume_error_median')} ({'n/a' if worst is None else f'{100 * worst:+.0f} %'}) | "
            f"{pct('volume_within_25pct')} of {v.get('lesions_20mm3', 0)} | "
            f"{_fmt(v.get('length_mm_mean_abs_error'), 1)} ({_fmt(v.get('length_mm_worst_abs_error'), 1)}) | "
            f"{_fmt(v.get('max_axial_damage_ratio_mean_abs_error'), 3)} |")


def families_seen(tr: dict[str, Any]) -> list[str]:
    """Lesion families a model's weights have seen, through its whole fine-tune chain (the painter
    alone for stages trained before the families existed)."""
    seen: set[str] = set()
    for _, stage in lineage(tr):
        seen |= set(stage.get("sampler", {}).get("families", ["painter"]))
    return [f for f in FAMILY_TEXT if f in seen]


def family_tables(summary: dict[str, Any], seen: list[str] | None = None) -> str:
    """Lesion metrics per family and per acquisition group (validation subjects); a family the
    model never saw in training is marked, since its row is a held-out result."""
    if "by_family" not in summary:
        return ""
    out = [LESION_COLUMNS.format(what="family")]
    out += [lesion_row(f if seen is None or f in seen else f"{f} (never seen in training)", v)
            for f, v in summary["by_family"].items()]
    out += ["", LESION_COLUMNS.format(what="acquisition group")]
    out += [lesion_row(g, v) for g, v in summary.get("by_group", {}).items()]
    return "\n".join(out) + "\n"


def family_pictures(folder: Path) -> str:
    """Links to FOLDER/families/NAME.png (`python -m inference.train.pictures`), where present."""
    found = [f for f in FAMILY_TEXT if (Path(folder) / "families" / f"{f}.png").is_file()]
    if not found:
        return ""
    links = "\n".join(f"- {f}: ![{f}](families/{f}.png)" for f in found)
    where = Path(folder).resolve()
    try:
        where = where.relative_to(Path.cwd())
    except ValueError:
        pass
    return ("\nWhat each family paints into the validation subject errsm_21 (sagittal slice through the largest "
            "lesion, then the axial slice; label in red; `python -m inference.train.pictures --out "
            f"{where.as_posix()}/families`):\n\n{links}\n")


def lofo_table(folder: Path) -> str:
    """The leave-one-family-out table from FOLDER/lofo.json (written by `inference.train.lofo`)."""
    path = Path(folder) / "lofo.json"
    if not path.is_file():
        return ""
    import json

    runs = json.loads(path.read_text(encoding="utf-8")).get("runs", {})
    out = [LESION_COLUMNS.format(what="held-out family (model trained without it)")]
    notes = []
    for fam, run in runs.items():
        out.append(lesion_row(fam, run.get("pooled", {})))
        if "baseline" in run:
            out.append(lesion_row(f"{fam}, by the starting weights", run["baseline"]))
        for g, v in run.get("by_group", {}).items():
            out.append(lesion_row(f"{fam}, {g}", v))
        notes.append(f"- without {fam}: trained on {', '.join(run['trained_on'])}, fine-tuned from `{run['init']}` "
                     f"(whose weights had seen: {', '.join(run.get('init_saw', []))}); `{run['command']}`")
    intro = ("Each held-out family F: a model fine-tuned from the starting weights on every other family "
             "(`train --exclude-family F`, same recipe, its own threshold calibration), scored on F; beside it "
             "the starting weights on F, which never saw F either (the rows' notes name the starting weights, "
             "e.g. a copy of this model as shipped).\n\n")
    return intro + "\n".join(out) + "\n\n" + "\n".join(notes) + "\n"


def speck_table(summary: dict[str, Any]) -> str:
    sweep = summary.get("speck_sweep")
    if not sweep:
        return ""
    out = ["| minimum lesion volume [mm³] | lesion-wise F1 | sensitivity | PPV | lesion Dice | "
           "false lesions on unpainted volumes (largest mm³) |", "|---|---|---|---|---|---|"]
    for k, v in sweep.items():
        out.append(f"| {k} | {_fmt(v.get('lesion_f1'))} | {_fmt(v.get('lesion_sensitivity'))} | "
                   f"{_fmt(v.get('lesion_ppv'))} | {_fmt(v.get('lesion_dice'))} | "
                   f"{v.get('false_lesions_unpainted', 'n/a')} ({_fmt(v.get('largest_false_lesion_mm3'), 1)}) |")
    return "\n".join(out) + "\n"


def _families(tr: dict[str, Any]) -> str:
    sampler = tr.get("sampler", {})
    fams = sampler.get("families")
    if not fams:
        return ""
    app = sampler.get("appearance") or {}
    lines = "".join(f"\n  - {FAMILY_TEXT.get(f, f)}" for f in fams)
    look = (f"\n  Appearance randomised per lesion whatever the family (`appearance.py`): lesion/cord signal "
            f"{app.get('ratio')} (log-uniform) in {int(100 * app.get('p_rescale', 0))} % of lesions, a hypointense "
            f"part in {int(100 * app.get('p_hypo', 0))} %, partial-volume blur {app.get('blur_mm')} mm in "
            f"{int(100 * app.get('p_blur', 0))} %." if app else "")
    return ("- Lesion families in this stage (equal odds per patch; the label is what a reader outlines):"
            f"{lines}{look}\n")


def lineage(tr: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(label, training record) of every stage, first run first, this version last.

    Why a chain: each fine-tune keeps its parent's record under `init_from` (train.init_record),
    and the parent may itself be a fine-tune; the card must show how the weights came about.
    """
    chain: list[tuple[str, dict[str, Any]]] = [("this version", tr)]
    parent = tr.get("init_from")
    while parent:
        ptr = parent.get("training", {})
        chain.append((f"{parent.get('name')} {parent.get('version')}", ptr))
        parent = ptr.get("init_from")
    return chain[::-1]


def _stage_folder(i: int, n: int) -> str:
    return f"var/train/stage{i + 1}" if n > 1 else "var/train/run2"


def train_command(meta: ModelMeta) -> str:
    """Fresh-run commands with the final recipe, rebuilt from model.json (resumes are listed apart).

    A fine-tune gives one command per stage, each started from the previous stage's export.
    """
    chain = lineage(meta.extra.get("training", {}))
    cmds = []
    for i, (_, tr) in enumerate(chain):
        cmd = _one_command(_stage_folder(i, len(chain)), tr, meta)
        if i > 0:
            sampler = tr.get("sampler", {})
            cmd += (f" --init {_stage_folder(i - 1, len(chain))}/model_last --lr {tr.get('lr', 0.002)}"
                    f" --p-foreground {sampler.get('p_foreground')}"
                    f" --p-lesion-free {sampler.get('lesions', {}).get('p_lesion_free')}")
        cmds.append(cmd)
    return "\n".join(cmds)


def _one_command(out: str, tr: dict[str, Any], meta: ModelMeta) -> str:
    budget = str(tr.get("optimizer", "")).split(" over ")[-1].split(" ")[0] or "60"
    sampler = tr.get("sampler", {})
    families = sampler.get("families")
    ratio = (sampler.get("appearance") or {}).get("ratio")
    return (f".venv/bin/python -m inference.train.train --out {out} --minutes " + budget
            + " --filters " + " ".join(str(f) for f in meta.architecture.get("filters", []))
            + " --patch " + " ".join(str(p) for p in tr.get("train_patch", []))
            + " --infer-patch " + " ".join(str(p) for p in meta.patch_size)
            + f" --batch {tr.get('batch', 2)} --seed {tr.get('seed', 0)}"
            # stages before the families painted with the painter alone
            + (" --families painter --no-appearance" if families is None else
               "" if list(families) == list(FAMILY_TEXT) else " --families " + " ".join(families))
            + (" --no-appearance" if families is not None and not sampler.get("appearance") else
               f" --appearance-ratio {ratio[0]:g} {ratio[1]:g}" if ratio and list(ratio) != [1.1, 3.0] else ""))


def _stages(tr: dict[str, Any]) -> str:
    """For a fine-tune: every earlier stage (the weights it started from), then this one."""
    chain = lineage(tr)
    if len(chain) == 1:
        return ""
    out = []
    for i, (label, ptr) in enumerate(chain[:-1]):
        hist = "".join(f"\n    - {h}" for h in ptr.get("history", []))
        first = (" (the lesion loss terms and in-patch lesion painting were added during stage 1)"
                 if i == 0 else "")
        out.append(f"- **Stage {i + 1}** ({label}"
                   + (f", fine-tuned from stage {i}'s final weights" if i else "") + "): "
                   f"{ptr.get('optimizer')}, {ptr.get('iterations')} iterations, {ptr.get('patches')} patches, "
                   f"{ptr.get('minutes')} min on {ptr.get('device')}, patches {ptr.get('train_patch')}, "
                   f"{int(100 * ptr.get('sampler', {}).get('p_foreground', 0))} % centred on the cord, "
                   f"{int(100 * ptr.get('sampler', {}).get('lesions', {}).get('p_lesion_free', 0))} % of patches "
                   f"lesion-free; loss {ptr.get('loss')}; restarts{first}:{hist}\n")
    out.append(f"- **Stage {len(chain)}** (this version): fine-tuned from stage {len(chain) - 1}'s final weights "
               "with the sampler below, a fresh optimizer and its own learning-rate schedule.\n")
    return "".join(out)


def _as_acquired(tr: dict[str, Any]) -> str:
    """Whether painted lesions were seen through thick source slices, in which stages and in calibration."""
    chain = lineage(tr)
    used = [i + 1 for i, (_, ptr) in enumerate(chain) if ptr.get("sampler", {}).get("lesions_as_acquired")]
    calibrated = bool(tr.get("threshold_calibration", {}).get("lesions_as_acquired"))
    if not used and not calibrated:
        return ""
    if not used:
        where = "in the threshold calibration only"
    elif len(used) == len(chain):
        where = "in every stage"
    else:
        where = (f"in stage{'s' if len(used) > 1 else ''} {', '.join(map(str, used))} "
                 "(earlier stages painted them sharp at the model spacing)")
    if used and calibrated:
        where += "; the threshold calibration paints the same way"
    return ("  On thick-slice sources (the axial T2*w, 2.5–5 mm slices) the painted change is averaged "
            "through the source slices and interpolated back (`augment.as_acquired`), as a real lesion in such "
            f"a series looks and as the evaluation's acquisition-grid painting looks: {where}.\n")


def _thick_axial(tr: dict[str, Any]) -> str:
    """The thick axial slice range the last stage trained with (recorded since it became a setting)."""
    lo, hi = tr.get("sampler", {}).get("augment", {}).get("thick_ax_mm", (3.0, 6.0))
    return f"{lo:g}–{hi:g}"


def _final_folder(tr: dict[str, Any]) -> str:
    chain = lineage(tr)
    return f"{_stage_folder(len(chain) - 1, len(chain))}/model_last"


def _history(tr: dict[str, Any]) -> str:
    hist = tr.get("history") or []
    if len(hist) <= 1:
        return ""
    notes = "\n".join(f"  - {h}" for h in hist)
    if tr.get("init_from"):
        why = "(to change the budget, or after a crash; the code at each restart is in git history)"
    else:
        why = ("while the recipe was being fixed (the code at each restart is in git history; the lesion "
               "loss terms and in-patch lesion painting were added during the run, and the budget changed)")
    return f"- The run was stopped and resumed from its checkpoints {why}:\n" + notes + "\n"


def _by_group(rows: list[dict[str, Any]]) -> str:
    """Lesion Dice per acquisition group: the pooled mean can hide one contrast doing much worse."""
    groups: dict[str, list[float]] = {}
    for r in rows:
        if r.get("lesion_dice") is not None:
            groups.setdefault(str(r.get("group")), []).append(float(r["lesion_dice"]))
    if len(groups) < 2:
        return ""
    parts = ", ".join(f"{g} {sum(v) / len(v):.3f} ({len(v)} copies)" for g, v in sorted(groups.items()))
    return f"\nLesion Dice by acquisition group (mean over copies): {parts}.\n"


def _inference(meta: ModelMeta) -> str:
    axes = mirror_axes(meta)
    if not axes:
        return "- Inference: one pass per sliding-window tile (no test-time mirroring).\n"
    names = ", ".join({0: "left-right", 1: "antero-posterior", 2: "head-feet"}[a] for a in axes)
    return (f"- Inference: test-time mirroring along {names} (`test_time_mirroring` {list(axes)} in model.json: "
            f"{2 ** len(axes)} passes per tile, logits averaged as nnU-Net does; training flipped the same axes).\n")


def _people(keys: list[str]) -> int:
    from inference.train.data import BY_KEY

    return len({BY_KEY[k].subject for k in keys if k in BY_KEY})


def _calibration(tr: dict[str, Any]) -> str:
    cal = tr.get("threshold_calibration")
    if not cal:
        return " (defaults, not tuned)"
    return (f" (lesion threshold chosen by `python -m inference.train.calibrate` on training volumes "
            f"{', '.join(cal['volumes'])} with freshly painted lesions, seed {cal['seed']}; pooled lesion "
            f"Dice by threshold {cal['pooled_lesion_dice_by_threshold']}"
            + (f"; largest false lesion on the same cords unpainted, mm³, by threshold "
               f"{cal['largest_false_lesion_mm3_by_threshold']}, allowed <= {cal.get('max_false_lesion_mm3')}"
               if "largest_false_lesion_mm3_by_threshold" in cal else "")
            + "; validation data played no part)")


def write_card(meta: ModelMeta, result: dict[str, Any]) -> Path:
    tr = meta.extra.get("training", {})
    arch = meta.architecture
    sec_per_it = (60.0 * float(tr.get("minutes", 0)) / max(int(tr.get("iterations", 1)), 1))
    rows = result.get("rows", [])
    sampler, train_volumes = tr.get("sampler", {}), tr.get("train_volumes", [])
    p_foreground = int(100 * sampler.get("p_foreground", 0))
    p_lesion_free = int(100 * sampler.get("lesions", {}).get("p_lesion_free", 0.25))
    max_lesions = sampler.get("lesions", {}).get("max_lesions", 3)
    per_case = ["| case | cord Dice | lesion Dice | lesions true/pred | seconds |", "|---|---|---|---|---|"]
    for r in rows:
        per_case.append(f"| {r['case']} | {_fmt(r.get('cord_dice'))} | {_fmt(r.get('lesion_dice'))} | "
                        f"{r.get('n_true', '')}/{r.get('n_pred', '')} | {_fmt(r.get('seconds'), 1)} |")
    text = f"""# {meta.name} {meta.version}

Spinal cord and intramedullary lesion segmentation for the spine DICOM node. Region-based
sigmoid outputs as SCIseg (channel 0 = cord including lesion, channel 1 = lesion), a small
MONAI DynUNet trained **on CPU in this repository** from real cords with **synthetic**
lesions. It is a working default, not a clinically validated model.

## Results

Every number comes from `python -m inference.train.evaluate --card` (whole volumes through
`inference.engine.segment`, in the acquisition grid, on the validation subjects only; the
painted-lesion copies use fixed seeds {result.get('seeds', '')}).

{results_table(result.get('summary', {}))}

Per case:

{chr(10).join(per_case)}
{_by_group(rows)}
### Lesions by family and acquisition group

Painted by each family's own generator in its own look (no appearance randomisation), in the
acquisition grid of the validation subjects (`ax_t2`: the sagittal validation volume seen through
5 mm axial slabs). This model's weights have seen {', '.join(families_seen(tr))}: rows of those
families show generalisation to new subjects only, the others to a kind of lesion never seen.

{family_tables(result.get('summary', {}), families_seen(tr))}{family_pictures(meta.folder)}
### Leave-one-family-out

{lofo_table(meta.folder) or "Not run for this version."}
### Speck rule

The same predictions with lesion components under a minimum volume dropped
(`pipelines.NAME.min_lesion_volume_mm3`):

{speck_table(result.get('summary', {})) or "Not measured for this version."}
## Data and licences

All images are real public data, copied unchanged into `/work/shared/data` (its README keeps
the full attribution, reproduced here for what this model was trained and validated on):

{ATTRIBUTION}
The split is by person (`inference/train/split.json`): `lesion-example` and `sct_example`
are the same person and both in training. Unlabelled volumes were not used.

## Training recipe

- Model space: RAS (flips/permutations only), {meta.spacing_mm} mm, z-score over voxels > 0
  (`inference.preprocess`, the same code inference uses); volumes cached once as .npy.
- Network: DynUNet, filters {arch.get('filters')}, strides {arch.get('strides')}, instance norm,
  {sum(1 for _ in arch.get('filters', []))} levels; sliding-window tile {list(meta.patch_size)}.
- Patches {tr.get('train_patch')} × batch {tr.get('batch')}, {p_foreground} % centred on the cord
  (foreground oversampling as nnU-Net), sampling weight per acquisition group.
{_stages(tr)}{_families(tr)}- Synthetic lesions (`inference/train/lesions.py`): 0 ({p_lesion_free} % of patches) to \
{max_lesions} per patch; irregular
  (smoothed noise on an ellipsoid), elongated along the local cord centerline, 2–40 mm long,
  hyperintense towards the CSF level with an edema-like falloff, 25 % with a hypointense
  haemorrhagic core, 35 % centred on the cord border; label = painted voxels inside the cord.
{_as_acquired(tr)}  The one real-protocol lesion example (`lesion-example`) keeps its own label.
- Augmentation (`inference/train/augment.py`): rotation, scaling, elastic-lite, left-right
  mirroring only, noise, blur, brightness, contrast, gamma, low-resolution simulation, plus
  simulated clinical acquisitions: thick sagittal slices (3–4 mm), thick axial slices
  ({_thick_axial(tr)} mm), anisotropic in-plane pixels, bias field, partial field of view.
- Loss BCE + soft Dice per region; {tr.get('optimizer')}; {tr.get('iterations')} iterations,
  {tr.get('patches')} patches, {tr.get('minutes')} min of training on {tr.get('device')} (2 cores shared with
  other jobs: {sec_per_it:.2f} s per iteration on average; validation time excluded); seed {tr.get('seed')}.
  An "epoch" here is not a pass over a fixed list: patches are drawn on the fly.
{_history(tr)}{_inference(meta)}- Thresholds: cord {meta.thresholds[0]}, lesion {meta.thresholds[1]}{_calibration(tr)}.

Reproduce (the timing, not the exact weights, depends on the shared CPU):

```
{train_command(meta)}
.venv/bin/python -m inference.train.calibrate --model {_final_folder(tr)} --write
.venv/bin/python -m inference.train.evaluate --model {_final_folder(tr)} --card
```

## Known limitations

- **No real lesion labels.** Lesion metrics are measured on lesions painted into real
  validation cords by four synthetic families. The leave-one-family-out table shows how the recipe
  does on a family it never saw, which is the closest we come here to a new kind of lesion; it is
  still not a radiologist's outline of a real SCI, MS or DCM lesion. Swelling, atrophy and cysts are
  simulated on healthy cords: no real compression, implants or syrinx were seen.
- Few people: {len(train_volumes)} training volumes from {_people(train_volumes)} people, 2 validation volumes (one
  sagittal T2w, one axial T2*w; the axial T2w group is the sagittal one seen through 5 mm slabs).
- Validation numbers on two subjects have wide uncertainty; they are not a benchmark.
- Short CPU training (minutes, not nnU-Net's 1000 epochs): expect missed small/faint
  lesions and less robustness than SCIseg on unusual contrasts, fields of view or artefacts.
- Axial T2 with thick (≥ 5 mm) slices is seen in training only through simulation.
"""
    path = meta.folder / "MODEL_CARD.md"
    path.write_text(text, encoding="utf-8")
    return path
