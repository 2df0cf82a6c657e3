"""A plane with one worker, the events it reports, and phones that close themselves."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from services.media.plane import Plane
from tests.unit.media.phones import Events, Phone, started


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
async def plane(events: Events) -> AsyncIterator[Plane]:
    plane = await started(events)
    try:
        yield plane
    finally:
        await plane.stop()


@pytest.fixture
async def new_phone() -> AsyncIterator[Callable[[], Awaitable[Phone]]]:
    opened: list[Phone] = []

    async def open_one() -> Phone:
        phone = await Phone.open()
        opened.append(phone)
        return phone

    yield open_one
    for phone in opened:
        phone.close()
