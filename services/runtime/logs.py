"""Log lines: plain text, or one JSON object a line for a log pipeline.

A call's lines carry its correlation id (``call_id``) and trace id (``trace_id``): the id is passed
with the record (``call_log(logger, call_id)``, or ``extra={"call_id": ...}``), never read back out
of the message; the trace id is the current span's, else the one the call's trace was given where
it began (``call_traces``, kept by the services while a call lives).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import sys
import time
from collections.abc import Callable
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


class Throttled:
    """Log lines an outsider can cause (refused requests, dropped packets): per key (a kind of
    refusal and its source), the first line within ``interval`` seconds is logged as it is and the
    rest are counted; the count is logged as one line when the interval ends. A flood writes two
    lines a minute per source, not one per packet; metrics keep the exact numbers. Past
    ``max_keys`` keys at once (a flood from many addresses), further keys share one count."""

    OTHERS = "other sources"

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 60.0,
        max_keys: int = 1_000,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.logger = logger
        self.interval = interval
        self.max_keys = max_keys
        self.clock = clock
        self._open: dict[str, tuple[float, int, str]] = {}  # key -> (interval's start, suppressed, what)

    def log(self, level: int, key: str, msg: str, *args: object) -> None:
        now = self.clock()
        if key not in self._open and len(self._open) >= self.max_keys:
            key = self.OTHERS
        started, suppressed, what = self._open.get(key, (0.0, 0, ""))
        if key in self._open and now - started < self.interval:
            self._open[key] = (started, suppressed + 1, what)
            return
        if suppressed:
            self._summary(level, key, suppressed, what)
        self._open[key] = (now, 0, msg % args if args else msg)
        self.logger.log(level, msg, *args)
        self._flush_later(level, key, now)

    def warning(self, key: str, msg: str, *args: object) -> None:
        self.log(logging.WARNING, key, msg, *args)

    def info(self, key: str, msg: str, *args: object) -> None:
        self.log(logging.INFO, key, msg, *args)

    def _flush_later(self, level: int, key: str, started: float) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a test's plain call): the next line of that key writes the count
        loop.call_later(self.interval, self.flush, level, key, started)

    def flush(self, level: int, key: str, started: float) -> None:
        """The interval that began at ``started`` is over: its count, if any, goes out now."""
        entry = self._open.get(key)
        if entry is None or entry[0] != started:
            return
        del self._open[key]
        if entry[1]:
            self._summary(level, key, entry[1], entry[2])

    def _summary(self, level: int, key: str, suppressed: int, what: str) -> None:
        self.logger.log(level, "%d more like it in the last %.0f s (%s): %s", suppressed, self.interval, key, what)


def setup_logging(level: str = "info", log_format: str = "text") -> None:
    """Logs on stderr at ``level``, as text lines or JSON objects."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler])
