"""The retry delay: grows by its factor up to its ceiling, starts over on reset."""

from __future__ import annotations

import asyncio

import pytest

from services.runtime.backoff import Backoff


def test_the_delay_doubles_up_to_the_ceiling() -> None:
    backoff = Backoff(0.2, 5.0)
    assert [backoff.next() for _ in range(8)] == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0]


def test_another_factor() -> None:
    backoff = Backoff(1.0, 20.0, factor=3)
    assert [backoff.next() for _ in range(5)] == [1.0, 3.0, 9.0, 20.0, 20.0]


def test_factor_one_keeps_the_delay() -> None:
    backoff = Backoff(0.5, 2.0, factor=1)
    assert [backoff.next() for _ in range(3)] == [0.5, 0.5, 0.5]


def test_reset_starts_again_from_the_first_delay() -> None:
    backoff = Backoff(0.1, 2.0)
    for _ in range(4):
        backoff.next()
    backoff.reset()
    assert [backoff.next() for _ in range(2)] == [0.1, 0.2]


def test_reading_the_delay_does_not_grow_it() -> None:
    backoff = Backoff(0.05, 1.0)
    assert backoff.delay == 0.05
    assert backoff.delay == 0.05
    assert backoff.next() == 0.05
    assert backoff.delay == 0.1


@pytest.mark.parametrize(("first", "most", "factor"), [(0, 1, 2), (-1, 1, 2), (2, 1, 2), (1, 2, 0.5)])
def test_nonsense_settings_are_refused(first: float, most: float, factor: float) -> None:
    with pytest.raises(ValueError, match="backoff needs"):
        Backoff(first, most, factor)


async def test_sleep_waits_the_delay_and_grows_it() -> None:
    backoff = Backoff(0.02, 1.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await backoff.sleep()
    assert loop.time() - started >= 0.02
    assert backoff.delay == 0.04
