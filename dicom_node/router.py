"""Routing applied: a complete series -> its rule's decision recorded -> a job queued (or ignored).

Why apart from ``routing``: that module says what a rule matches (pure, testable on files with
``dicom-node rules test``); this one acts on the catalog. The decision and the job it creates are
written in one transaction, and only if no late instance re-opened the series meanwhile.
"""
from __future__ import annotations

import logging
from pathlib import Path

from pydicom import dcmread

from dicom_node.catalog import Catalog
from dicom_node.jobs import Jobs
from dicom_node.routing import Rule, route

log = logging.getLogger(__name__)


def one_line(explanation: list[str]) -> str:
    """The routing explanation as one log line: the rule that matched, and for each rule before it
    the conditions that failed it (the leaves on its failing path, with the values they saw)."""
    depths = [(len(line) - len(line.lstrip())) // 2 for line in explanation]
    matched: list[str] = []
    failed: dict[str, list[str]] = {}  # rule -> its failing leaves
    leaves: list[str] = []
    path: list[bool] = []  # per depth below the rule: did that condition fail?
    for i, (depth, line) in enumerate(zip(depths, explanation)):
        text = line.strip()
        if depth == 0:  # "rule 'x': matched", "rule 'x': not matched" or "no rule matched"
            leaves = failed.setdefault(text.split(":")[0], [])
            if text.endswith(": matched"):
                matched.append(text)
            continue
        del path[depth - 1:]
        path.append(": no" in text)
        if (i + 1 == len(explanation) or depths[i + 1] <= depth) and all(path):
            leaves.append(text)
    parts = matched + [f"{rule} not matched: {', '.join(found)}" for rule, found in failed.items() if found]
    return "; ".join(parts) or "no rule matched"


class Router:
    """Routes complete series of one catalog with one rule set."""

    def __init__(self, catalog: Catalog, rules: list[Rule], data_dir: Path) -> None:
        self.catalog = catalog
        self.rules = rules
        self.data_dir = data_dir

    def route_complete_series(self) -> list[int]:
        """Route every series in state 'complete'; returns ids of jobs created."""
        created: list[int] = []
        for row in self.catalog.query("SELECT id FROM series WHERE state='complete' ORDER BY id"):
            job = self.route_series(row["id"])
            if job is not None:
                created.append(job)
        return created

    def route_series(self, series_id: int) -> int | None:
        """Apply the rules to one complete series; the new job's id, or None (ignored, or re-opened)."""
        first = self.catalog.first_instance(series_id)
        series = self.catalog.series_row(series_id)
        if first is None or series is None or series["state"] != "complete":
            return None
        series_uid = series["series_uid"]
        ds = dcmread(self.data_dir / first["path"], stop_before_pixels=True)
        decision = route(self.rules, ds, first["calling_ae"])
        reason = "\n".join(decision.explanation)
        rule = decision.rule
        generation = int(series["generation"])
        with self.catalog.transaction() as con:
            if rule is None or rule.pipeline is None:
                if self.catalog.record_routing(con, series_id, generation, "ignored",
                                               rule.name if rule else None, reason):
                    log.info("series %s stored only (no pipeline): %s", series_uid, one_line(decision.explanation))
                return None
            if not self.catalog.record_routing(con, series_id, generation, "routed", rule.name, reason):
                return None  # re-opened by a late instance meanwhile
            job_id, supersedes = Jobs.create(con, series_id, generation, rule.name, rule.pipeline,
                                             list(rule.destinations))
        log.info("series %s: rule %s -> pipeline %s, job %d%s", series_uid, rule.name, rule.pipeline, job_id,
                 f" (supersedes job {supersedes})" if supersedes else "")
        return job_id
