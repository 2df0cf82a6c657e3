"""The delay between two tries of something that failed: it grows by ``factor`` at each try, from
``first`` up to ``most``, and starts again from ``first`` once the thing works again.

    backoff = Backoff(0.1, 2.0)
    while True:
        try:
            ...
            backoff.reset()
        except SomeOutage:
            await backoff.sleep()   # 0.1, 0.2, 0.4, ..., 2.0, 2.0, ...
"""

from __future__ import annotations

import asyncio


class Backoff:
    """A delay that grows at each ``next()`` from ``first`` up to ``most``; ``reset()`` starts over."""

    def __init__(self, first: float, most: float, factor: float = 2.0):
        if first <= 0 or most < first or factor < 1:
            raise ValueError(f"backoff needs 0 < first <= most and factor >= 1 (got {first}, {most}, {factor})")
        self.first = first
        self.most = most
        self.factor = factor
        self._delay = first

    @property
    def delay(self) -> float:
        """The delay the next ``next()`` returns (reading it does not grow it)."""
        return self._delay

    def next(self) -> float:
        """The delay to wait now; the one after is ``factor`` times longer, at most ``most``."""
        delay = self._delay
        self._delay = min(delay * self.factor, self.most)
        return delay

    def reset(self) -> None:
        """Back to ``first``: what failed works again."""
        self._delay = self.first

    async def sleep(self) -> None:
        """Waits ``next()`` seconds."""
        await asyncio.sleep(self.next())
