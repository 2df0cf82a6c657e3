"""Log lines: plain text, or one JSON object a line for a log pipeline.

A call's lines carry its correlation id (``call_id``) and trace id (``trace_id``): the id is passed
with the record (``call_log(logger, call_id)``, or ``extra={"call_id": ...}``), never read back out
of the message; the trace id is the current span's, else the one the call's trace was given where
it began (``call_traces``, kept by the services while a call lives).
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Any

from opentelemetry import trace

LOG_FORMATS = ("text", "json")
call_traces: dict[str, str] = {}  # call id -> trace id (32 hex digits)


def trace_id_of(span: trace.Span) -> str:
    context = span.get_span_context()
    return f"{context.trace_id:032x}" if context.is_valid else ""


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, str] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        call_id = getattr(record, "call_id", None)
        if call_id:
            entry["call_id"] = str(call_id)
        trace_id = trace_id_of(trace.get_current_span()) or call_traces.get(str(call_id or ""), "")
        if trace_id:
            entry["trace_id"] = trace_id
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class CallLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger for one call's lines: "call <id>: ..." in the text, and the id with the record."""

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        call_id = (self.extra or {}).get("call_id", "")
        kwargs["extra"] = {**kwargs.get("extra", {}), "call_id": call_id}
        self.logger.log(level, f"call %s: {msg}", call_id, *args, **kwargs)


def call_log(logger: logging.Logger, call_id: str) -> CallLog:
    return CallLog(logger, {"call_id": call_id})


def setup_logging(level: str = "info", log_format: str = "text") -> None:
    """Logs on stderr at ``level``, as text lines or JSON objects."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler])
