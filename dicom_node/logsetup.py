"""Log records for operators and log shippers: text or one JSON object per line, PHI-free by default.

Why JSON: a log shipper (Loki, Elastic) indexes fields, so `job_id`/`series_uid` correlate every
line of one job across the worker and dispatch threads without parsing messages. Why a
redaction filter on the handler: a traceback or a dataset repr can carry the patient's name
from anywhere in the stack; scrubbing at the one exit point catches what call sites forget.
"""
from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import sys
import time
from types import MappingProxyType
from typing import Any, Iterator, Mapping

# correlation ids of the work the current thread is doing (set by the worker around a job); read-only:
# log_context replaces the mapping, never mutates it
_CONTEXT: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "dicom_node_log_context", default=MappingProxyType({}))

REDACTED = "[redacted]"
# "PatientName=DOE^JOHN", "(0010,0010) Patient's Name  PN: 'DOE^JOHN'", "patient_name: X", json "PatientID": "1"
_PHI_KEYS = (r"patient'?s?[ _]?name|patient[ _]?id|patient'?s?[ _]?birth[ _]?date|other[ _]?patient[ _]?names"
             r"|\(0010,\s?00(?:10|20|30|01|00)\)")
_PHI = re.compile(
    rf"(?P<key>(?:{_PHI_KEYS})[^:=\n]{{0,40}}?(?:[:=]\s*(?:[A-Z]{{2}}:\s*)?))(?P<val>\"[^\"]*\"|'[^']*'|[^\s,;)}}\]]+)",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """`text` with values after patient name/id/birth-date keys replaced by [redacted]."""
    return _PHI.sub(lambda m: m.group("key") + REDACTED, text)


@contextlib.contextmanager
def log_context(**ids: Any) -> Iterator[None]:
    """Attach correlation ids (job_id=, series_uid=) to every record logged inside the block."""
    token = _CONTEXT.set({**_CONTEXT.get(), **{k: v for k, v in ids.items() if v is not None}})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


class ContextFilter(logging.Filter):
    """Copies the current correlation ids onto the record; redacts PHI unless allowed."""

    def __init__(self, allow_phi: bool = False) -> None:
        super().__init__()
        self.allow_phi = allow_phi

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _CONTEXT.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        if not self.allow_phi:
            # render now, so arguments and tracebacks are scrubbed before any formatter sees them
            record.msg = redact(record.getMessage())
            record.args = None
            if record.exc_info:
                record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
                record.exc_info = None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (ISO 8601 UTC), level, logger, thread, msg, correlation ids, exc."""

    FIELDS = ("job_id", "series_uid", "dispatch_id", "calling_ae")

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "thread": record.threadName,
            "msg": record.getMessage(),
        }
        for key in self.FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """The classic line, with [job N series UID] when the record carries correlation ids."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = " ".join(f"{k}={getattr(record, k)}" for k in ("job_id", "series_uid") if getattr(record, k, None))
        return line.replace(": ", f": [{ids}] ", 1) if ids else line


def setup_logging(level: str, fmt: str = "text", allow_phi: bool = False, stream: Any = None) -> logging.Handler:
    """Replace the root handlers with one stream handler in `fmt`; returns it (tests read its stream)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ContextFilter(allow_phi=allow_phi))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    # libraries' step-by-step INFO (pynetdicom per PDU, highdicom per copied module: 14 lines per
    # SEG+SR) would drown the node's own lines in a log kept for months
    for library in ("pynetdicom", "highdicom"):
        logging.getLogger(library).setLevel(logging.WARNING)
    return handler
