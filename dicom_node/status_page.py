"""The read-only status page: recent series, their routing, job state, numbers and overlay.

Why server-rendered HTML without scripts: it has to work from any browser on the node's
console or through an SSH tunnel, with a strict Content-Security-Policy and nothing to build.
Every value from DICOM or the catalog is HTML-escaped (descriptions and AE titles come from
outside). No patient names or ids are shown.
"""
from __future__ import annotations

import html
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from dicom_node.catalog import Catalog
from dicom_node.jobs import JobState
from dicom_node.results import THUMB_NAME

STYLE = """
body{font:14px system-ui,sans-serif;margin:1.2em;color:#222;background:#fafafa}
h1{font-size:1.3em;margin:0 0 .3em} .sub{color:#666;margin-bottom:1em}
table{border-collapse:collapse;width:100%;background:#fff} th,td{border:1px solid #ddd;padding:4px 6px;
vertical-align:top;text-align:left} th{background:#eee} .mono{font-family:monospace;font-size:12px}
.st{font-weight:600;padding:1px 6px;border-radius:3px} .done{background:#d4f5d4} .failed{background:#f8d0d0}
.running,.queued,.dispatching,.retrying{background:#fdf1c7} .ignored,.superseded,.purged{background:#eee}
.routed{background:#d8e8fb}
.reason{color:#a00;font-size:12px;white-space:pre-wrap;max-width:28em} img{height:140px;border:1px solid #ccc}
details{font-size:12px;max-width:30em} form{margin:4px 0 0} .counts span{margin-right:1em}
"""


def recent_series(catalog: Catalog, limit: int) -> list[dict[str, Any]]:
    """Newest series first, each with its latest job (if any)."""
    rows = catalog.query(
        "SELECT s.series_uid, s.description, s.calling_ae, s.modality, s.state, s.generation, s.received_count,"
        " s.expected_count, s.last_received, s.routing_rule, s.routing_reason,"
        " j.id AS job_id, j.state AS job_state, j.reason AS job_reason, j.attempts, j.measurements, j.timings,"
        " w.next_attempt_at, w.waiting_for"
        " FROM series s LEFT JOIN jobs j ON j.id = (SELECT MAX(id) FROM jobs WHERE series_id=s.id)"
        # the destinations that failed a job's results at least once, and when the first retries
        " LEFT JOIN (SELECT job_id, MIN(next_attempt_at) AS next_attempt_at,"
        "  GROUP_CONCAT(DISTINCT destination) AS waiting_for FROM dispatches"
        "  WHERE state = 'pending' AND last_error IS NOT NULL GROUP BY job_id) w ON w.job_id = j.id"
        " ORDER BY s.last_received DESC LIMIT ?", (limit,))
    return [dict(r) for r in rows]


def _fmt(value: Any, unit: str = "", digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    return f"{value:.{digits}f}{unit}"


def measurement_summary(measurements: str | None) -> str:
    """A few lines of the job's numbers (HTML)."""
    if not measurements:
        return ""
    m = json.loads(measurements)
    lines = [f"lesions: {int(m.get('lesion_count', len(m.get('lesions', []))))}",
             f"lesion volume: {_fmt(m.get('total_volume_mm3'), ' mm³')}",
             f"cord volume: {_fmt(m.get('cord_volume_mm3'), ' mm³', 0)}",
             f"cord CSA mean: {_fmt(m.get('cord_csa_mm2_mean'), ' mm²')}"]
    if m.get("max_axial_damage_ratio") is not None:
        lines.append(f"max axial damage ratio: {_fmt(m.get('max_axial_damage_ratio'), '', 3)}")
    lines += _level_lines(m)
    return "<br>".join(html.escape(x) for x in lines)


def _level_lines(m: dict[str, Any]) -> list[str]:
    """Each lesion's vertebral levels and the C2-C3 CSA among healthy adults, or why levels are unknown."""
    status = m.get("vertebral_levels_status")
    if status == "unknown":
        return [f"levels: unknown ({m.get('vertebral_levels_reason') or 'no reason given'})"]
    if status != "labelled":
        return []  # measured before levels existed
    out = [f"lesion {les.get('label')}: {les.get('level_span') or 'level unknown'}" for les in m.get("lesions", [])]
    if m.get("cord_csa_c2c3_mm2") is not None:
        line = f"C2-C3 CSA: {_fmt(m.get('cord_csa_c2c3_mm2'), ' mm²')}"
        if m.get("cord_csa_c2c3_z_score") is not None:
            line += (f" (z {_fmt(m.get('cord_csa_c2c3_z_score'), '', 2)}, "
                     f"{_fmt(m.get('cord_csa_c2c3_percentile'), '', 0)}th percentile)")
        out.append(line)
    return out


def render_status_page(catalog: Catalog, data_dir: Path, node_name: str, limit: int,
                       token: str = "", can_retry: bool = False, notice: str = "") -> str:
    """The page. `token` (when the server has one) is carried in links and the retry form."""
    q = f"?token={quote(token)}" if token else ""
    counts = {r[0]: r[1] for r in catalog.query("SELECT state, COUNT(*) FROM jobs GROUP BY state")}
    e = html.escape
    out = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>{e(node_name)} status</title><meta http-equiv=refresh content=15><style>{STYLE}</style></head><body>",
        f"<h1>{e(node_name)}</h1>",
        f"<div class=sub>{time.strftime('%Y-%m-%d %H:%M:%S')} · newest {limit} series · "
        f"<a href='/metrics{q}'>metrics</a> · <a href='/health'>health</a></div>",
    ]
    if notice:
        out.append(f"<p id=notice><b>{e(notice)}</b></p>")
    out.append("<div class=counts>jobs: " + ("".join(
        f"<span><span class='st {e(k)}'>{e(k)}</span> {v}</span>" for k, v in sorted(counts.items())) or "none")
        + "</div><br>")
    out.append("<table id=series><tr><th>received</th><th>series</th><th>from</th><th>state</th>"
               "<th>routing</th><th>job</th><th>measurements</th><th>overlay</th></tr>")
    for s in recent_series(catalog, limit):
        when = time.strftime("%m-%d %H:%M:%S", time.localtime(s["last_received"]))
        exp = s["expected_count"] if s["expected_count"] is not None else "?"
        routing = e(s["routing_rule"] or "–")
        if s["routing_reason"]:
            routing += f"<details><summary>why</summary><pre>{e(s['routing_reason'])}</pre></details>"
        job, thumb = "–", ""
        if s["job_id"] is not None:
            jid = int(s["job_id"])
            job = (f"<span class=mono>#{jid}</span> <span class='st {e(s['job_state'])}' data-job={jid}>"
                   f"{e(s['job_state'])}</span> tries {s['attempts']}")
            if s["job_reason"]:
                job += f"<div class=reason>{e(s['job_reason'])}</div>"
            if s["next_attempt_at"] is not None:  # a destination failed it: say who and when it tries again
                again = time.strftime("%m-%d %H:%M:%S", time.localtime(s["next_attempt_at"]))
                job += (f"<div class=reason>waiting for {e(s['waiting_for'])}: next attempt {again}</div>")
            if can_retry and s["job_state"] == JobState.FAILED.value:
                job += (f"<form method=post action='/jobs/{jid}/retry'>"
                        f"<input type=hidden name=token value='{e(token, quote=True)}'>"
                        f"<button type=submit id=retry-{jid}>retry</button></form>")
            if (data_dir / "results" / f"job-{jid}" / THUMB_NAME).is_file():
                thumb = (f"<a href='/jobs/{jid}/thumb.png{q}'>"
                         f"<img alt='overlay job {jid}' src='/jobs/{jid}/thumb.png{q}'></a>")
        out.append(
            f"<tr data-series='{e(s['series_uid'], quote=True)}'><td>{when}</td>"
            f"<td>{e(s['description'] or '(no description)')}<br><span class=mono>{e(s['modality'])} · "
            f"{s['received_count']}/{exp} instances · gen {s['generation']}</span></td>"
            f"<td>{e(s['calling_ae'])}</td><td><span class='st {e(s['state'])}'>{e(s['state'])}</span></td>"
            f"<td>{routing}</td><td>{job}</td><td>{measurement_summary(s['measurements'])}</td><td>{thumb}</td></tr>")
    out.append("</table></body></html>")
    return "\n".join(out)
