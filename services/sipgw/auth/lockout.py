"""Slows down, then locks out, a source that keeps failing authentication.

A dictionary attack against a registrar without this finds a weak password in under a second.
Per source address: after ``free_failures`` failures within ``window`` seconds every further
answer to it is delayed (the delay doubles with each failure, up to ``max_delay``); after
``lock_failures`` it is locked out for ``lock_seconds``: nothing it sends is processed. A success
clears the source's record. The table is bounded: the oldest records go first.
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Literal

MAX_SOURCES = 100_000


@dataclasses.dataclass(frozen=True)
class Verdict:
    action: Literal["allow", "delay", "locked"]
    delay: float = 0.0


@dataclasses.dataclass
class _Record:
    failures: list[float]
    locked_until: float = 0.0


class Lockout:
    def __init__(
        self,
        free_failures: int = 5,
        lock_failures: int = 20,
        window: float = 60.0,
        lock_seconds: float = 300.0,
        base_delay: float = 0.25,
        max_delay: float = 4.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.free_failures = free_failures
        self.lock_failures = lock_failures
        self.window = window
        self.lock_seconds = lock_seconds
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._clock = clock
        self._sources: OrderedDict[str, _Record] = OrderedDict()

    def check(self, source: str) -> Verdict:
        """What to do with a request from ``source`` before looking at its credentials."""
        record = self._sources.get(source)
        if record is None:
            return Verdict("allow")
        now = self._clock()
        if record.locked_until > now:
            return Verdict("locked")
        recent = [t for t in record.failures if now - t <= self.window]
        record.failures = recent
        extra = len(recent) - self.free_failures
        if extra < 0:
            return Verdict("allow")
        return Verdict("delay", min(self.max_delay, self.base_delay * (2**extra)))

    def failed(self, source: str) -> None:
        now = self._clock()
        record = self._sources.get(source) or _Record([])
        record.failures = [t for t in record.failures if now - t <= self.window] + [now]
        if len(record.failures) >= self.lock_failures:
            record.locked_until = now + self.lock_seconds
            record.failures = []
        self._sources[source] = record
        self._sources.move_to_end(source)
        while len(self._sources) > MAX_SOURCES:
            self._sources.popitem(last=False)

    def succeeded(self, source: str) -> None:
        self._sources.pop(source, None)
