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


def test_a_flood_of_refusals_is_one_line_and_a_count_per_source_and_interval() -> None:
    from services.runtime.logs import Throttled

    logger = logging.getLogger("test.flood")
    records = capture(logger)
    now = [100.0]
    throttled = Throttled(logger, interval=60.0, max_keys=3, clock=lambda: now[0])
    for n in range(5000):
        throttled.warning("junk from 192.0.2.1", "junk %d from 192.0.2.1", n)
    assert [r.getMessage() for r in records] == ["junk 0 from 192.0.2.1"]
    now[0] += 61  # the next interval: the count of the last one goes out, then the new first line
    throttled.warning("junk from 192.0.2.1", "junk %d from 192.0.2.1", 5000)
    assert [r.getMessage() for r in records[1:]] == [
        "4999 more like it in the last 60 s (junk from 192.0.2.1): junk 0 from 192.0.2.1",
        "junk 5000 from 192.0.2.1",
    ]
    # Many sources at once share one count past max_keys: the table stays small.
    for n in range(100):
        throttled.warning(f"junk from 198.51.100.{n}", "junk from 198.51.100.%d", n)
    assert len(records) == 3 + 3 and len(throttled._open) <= 3 + 1  # the shared count is one more


async def test_the_count_is_written_when_the_interval_ends_even_if_the_flood_stopped() -> None:
    from services.runtime.logs import Throttled
    from tests.harness.wait import wait_for

    logger = logging.getLogger("test.flush")
    records = capture(logger)
    throttled = Throttled(logger, interval=0.05)
    for _ in range(10):
        throttled.info("k", "refused")

    async def summed_up() -> bool:
        return len(records) == 2

    await wait_for(summed_up, timeout=2, what="the count written")
    assert [r.getMessage() for r in records] == ["refused", "9 more like it in the last 0 s (k): refused"]
