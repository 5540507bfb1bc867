"""When is a series complete? DICOM has no end-of-series message, so the node decides.

A series is complete when it holds as many instances as its header announced (recorded at
store time as series.expected_count: ImagesInAcquisition, NumberOfTemporalPositions,
multi-frame concatenations), or when nothing arrived for it for `idle_seconds`. Late
instances re-open a series (store transaction: state 'receiving', generation+1), and the
next check completes it again.
"""
from __future__ import annotations

import logging
import time

from dicom_node.catalog import Catalog

LOGGER = logging.getLogger(__name__)


class CompletionTracker:
    """Marks 'receiving' series complete in the catalog; run `check` periodically."""

    def __init__(self, catalog: Catalog, idle_seconds: float) -> None:
        if idle_seconds <= 0:
            raise ValueError(f"idle_seconds must be positive, got {idle_seconds}")
        self.catalog = catalog
        self.idle_seconds = float(idle_seconds)

    def check(self, now: float | None = None) -> list[tuple[int, str]]:
        """Complete every series that is due; return (catalog id, Series UID) of each newly completed."""
        at = time.time() if now is None else now
        done = self.catalog.complete_series(at, self.idle_seconds)
        for _, uid, reason in done:
            LOGGER.info("series %s complete (%s)", uid, reason)
        return [(series_id, uid) for series_id, uid, _ in done]
