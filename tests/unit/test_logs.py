"""Log lines: a call's id travels with the record, never read back out of the text."""

from __future__ import annotations

import json
import logging

from services.runtime.logs import JsonFormatter, call_log


def formatted(record: logging.LogRecord) -> dict[str, str]:
    entry: dict[str, str] = json.loads(JsonFormatter().format(record))
    return entry


def capture(logger: logging.Logger) -> list[logging.LogRecord]:
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign,assignment]
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return records


def test_a_call_logger_names_the_call_in_the_text_and_in_the_record() -> None:
    logger = logging.getLogger("test.calls")
    records = capture(logger)
    call_log(logger, "c0ffee").info("answered by %s", "101")
    call_log(logger, "50%-off").info("odd id")  # a "%" in an id is not a format directive
    first, second = (formatted(r) for r in records)
    assert (first["message"], first["call_id"]) == ("call c0ffee: answered by 101", "c0ffee")
    assert (second["message"], second["call_id"]) == ("call 50%-off: odd id", "50%-off")


def test_a_line_that_only_looks_like_a_call_line_gets_no_call_id() -> None:
    logger = logging.getLogger("test.plain")
    records = capture(logger)
    logger.info("call %s from a phone's header", "not-an-id")
    assert "call_id" not in formatted(records[0])
