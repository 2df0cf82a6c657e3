"""Token buckets per source address, in a table that cannot grow without bound.

Each source gets ``burst`` requests at once and ``per_second`` more every second after that. A
source whose bucket is full again holds nothing a new bucket would not: such idle entries are
dropped as new sources come in. The table holds at most ``capacity`` sources; past that the
source seen longest ago goes, even if its bucket is not full (it gets a full one if it comes
back). A flood from spoofed addresses therefore costs at most ``capacity`` entries, and what it
buys is only that: forgetting the oldest sources, never refusing a new one.

An IPv6 source is counted by its /64, the block one subscriber gets: an attacker holding a /64
gets one bucket, not 2**64.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable

CAPACITY = 50_000  # about 10 MB of entries: more live sources than a server's phones and peers


@dataclasses.dataclass(frozen=True)
class Rate:
    """``burst`` requests at once, then ``per_second``."""

    per_second: float
    burst: float


class _Bucket:
    __slots__ = ("seen", "tokens")

    def __init__(self, tokens: float, seen: float):
        self.tokens = tokens
        self.seen = seen


def source_key(host: str) -> str:
    """What a source is counted as: an IPv4 address itself, an IPv6 address by its /64."""
    if ":" not in host:
        return host
    try:
        address = ipaddress.IPv6Address(host.split("%", 1)[0])
    except ValueError:
        return host
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((int(address) >> 64 << 64, 64)))


class RateLimiter:
    def __init__(self, rate: Rate, clock: Callable[[], float] = time.monotonic, capacity: int = CAPACITY):
        if rate.per_second <= 0 or rate.burst < 1 or capacity < 1:
            raise ValueError(f"unusable rate {rate} or capacity {capacity}")
        self.rate = rate
        self.capacity = capacity
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()  # least recently seen first
        # A bucket this long untouched is full again: the same as none at all.
        self._refill = rate.burst / rate.per_second

    def allow(self, key: str) -> bool:
        """Takes one token from ``key``'s bucket; False (nothing taken) when there is none."""
        now = self._clock()
        bucket = self._current(key, now)
        if bucket.tokens < 1:
            return False
        bucket.tokens -= 1
        return True

    def would_allow(self, key: str) -> bool:
        """Whether ``allow`` would say yes now; takes nothing and adds no entry."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return True
        return min(self.rate.burst, bucket.tokens + (self._clock() - bucket.seen) * self.rate.per_second) >= 1

    def __len__(self) -> int:
        return len(self._buckets)

    def _current(self, key: str, now: float) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(self.rate.burst, now)
            self._make_room(now)
            self._buckets[key] = bucket
            return bucket
        bucket.tokens = min(self.rate.burst, bucket.tokens + (now - bucket.seen) * self.rate.per_second)
        bucket.seen = now
        self._buckets.move_to_end(key)
        return bucket

    def _make_room(self, now: float) -> None:
        """Before a new entry: idle ones go (a few per call, oldest first), then the oldest if full."""
        for _ in range(2):
            oldest = next(iter(self._buckets.values()), None)
            if oldest is None or now - oldest.seen < self._refill:
                break
            self._buckets.popitem(last=False)
        while len(self._buckets) >= self.capacity:
            self._buckets.popitem(last=False)
