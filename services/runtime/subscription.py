"""A watch stream's queue of changes, shared by every service's Watch* RPCs.

A watcher that falls too far behind is dropped (UNAVAILABLE, reason WATCHER_TOO_SLOW) rather than
buffered without bound; it can watch again and get a fresh snapshot.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Generic, TypeVar

from services.runtime.errors import Unavailable

T = TypeVar("T")

QUEUE_LIMIT = 10_000


class WatcherTooSlow(Unavailable):
    reason = "WATCHER_TOO_SLOW"


class Subscription(Generic[T]):
    def __init__(self, limit: int = QUEUE_LIMIT) -> None:
        self._queue: asyncio.Queue[T] = asyncio.Queue()
        self._limit = limit
        self._overflow = False

    def put(self, change: T) -> None:
        """The listener: never blocks, never awaits (it runs inside whoever made the change)."""
        if self._queue.qsize() >= self._limit:
            self._overflow = True
        else:
            self._queue.put_nowait(change)

    async def get(self) -> T:
        change = await self._queue.get()
        if self._overflow:
            raise WatcherTooSlow("the watcher fell behind; watch again for a fresh snapshot")
        return change


async def answer_while(read: Awaitable[None], out: Subscription[T]) -> AsyncIterator[T]:
    """A bidirectional stream's responses: what ``out`` gets, for as long as ``read`` (the loop
    over the requests) runs; its error, if it ends with one, ends the stream with it."""
    reader = asyncio.ensure_future(read)
    try:
        while not reader.done():
            getter = asyncio.ensure_future(out.get())
            done, _ = await asyncio.wait({reader, getter}, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                yield getter.result()
            else:
                getter.cancel()
        reader.result()
    finally:
        reader.cancel()
