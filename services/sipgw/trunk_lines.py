"""The inter-server trunk's one pool of lines, shared by calls in both directions and all peers.

Single-threaded asyncio makes the count exact without locks: ``take`` and ``give_back`` never
await, so no two calls can see the same free line.
"""

from __future__ import annotations

import dataclasses


class NoLineFree(Exception):
    """Every trunk line is busy: the call gets 503 with this reason."""


@dataclasses.dataclass
class LineUsage:
    lines: int
    incoming: int = 0
    outgoing: int = 0
    rejected: int = 0

    @property
    def in_use(self) -> int:
        return self.incoming + self.outgoing


class TrunkLines:
    def __init__(self, lines: int):
        if lines < 1:
            raise ValueError("a trunk needs at least one line")
        self.usage = LineUsage(lines)

    def take(self, outgoing: bool) -> None:
        """Takes a line for one call; raises NoLineFree (and counts the rejection) if none is free."""
        if self.usage.in_use >= self.usage.lines:
            self.usage.rejected += 1
            raise NoLineFree(f"all {self.usage.lines} trunk lines are busy")
        if outgoing:
            self.usage.outgoing += 1
        else:
            self.usage.incoming += 1

    def give_back(self, outgoing: bool) -> None:
        if outgoing and self.usage.outgoing > 0:
            self.usage.outgoing -= 1
        elif not outgoing and self.usage.incoming > 0:
            self.usage.incoming -= 1
        else:
            raise RuntimeError("a trunk line was given back twice")
