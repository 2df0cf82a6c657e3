"""A watch stream's queue of changes, shared by every service's Watch* RPCs.

A watcher that falls too far behind is dropped (UNAVAILABLE, reason WATCHER_TOO_SLOW) rather than
buffered without bound; it can watch again and get a fresh snapshot.
"""

from __future__ import annotations

import asyncio
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
