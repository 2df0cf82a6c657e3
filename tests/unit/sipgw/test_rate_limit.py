"""Token buckets per source address: burst, refill, independence, and a table that stays bounded."""

from __future__ import annotations

import tracemalloc

import pytest

from services.sipgw.auth.rate_limit import Rate, RateLimiter, source_key


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def taken(limiter: RateLimiter, key: str, tries: int) -> int:
    return sum(limiter.allow(key) for _ in range(tries))


def test_a_source_gets_its_burst_then_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(Rate(per_second=5, burst=20), clock)
    assert taken(limiter, "192.0.2.1", 100) == 20
    clock.now += 1.0
    assert taken(limiter, "192.0.2.1", 100) == 5
    clock.now += 0.1
    assert taken(limiter, "192.0.2.1", 100) == 0  # half a token is none
    clock.now += 0.1
    assert taken(limiter, "192.0.2.1", 100) == 1
    clock.now += 3600  # a long pause refills up to the burst, no more
    assert taken(limiter, "192.0.2.1", 100) == 20


def test_sources_are_counted_apart_and_a_peek_takes_nothing() -> None:
    clock = Clock()
    limiter = RateLimiter(Rate(per_second=1, burst=3), clock)
    assert taken(limiter, "192.0.2.1", 10) == 3
    assert not limiter.would_allow("192.0.2.1")
    assert limiter.would_allow("192.0.2.2") and len(limiter) == 1  # a peek adds no entry
    assert taken(limiter, "192.0.2.2", 10) == 3
    clock.now += 1.0
    assert limiter.would_allow("192.0.2.1") and limiter.would_allow("192.0.2.1")
    assert taken(limiter, "192.0.2.1", 10) == 1


def test_idle_sources_are_forgotten_as_new_ones_come() -> None:
    clock = Clock()
    limiter = RateLimiter(Rate(per_second=10, burst=20), clock, capacity=1000)
    for n in range(100):
        limiter.allow(f"10.0.0.{n}")
    assert len(limiter) == 100
    clock.now += 2.0  # 20 / 10 per second: every bucket is full again, as good as none
    for n in range(100):
        limiter.allow(f"10.1.0.{n}")
    assert len(limiter) == 100  # the idle ones made room, two for each newcomer


def test_a_spoofed_flood_cannot_grow_the_table_and_costs_only_the_oldest_sources() -> None:
    clock = Clock()
    limiter = RateLimiter(Rate(per_second=1, burst=2), clock, capacity=500)
    assert taken(limiter, "198.51.100.7", 5) == 2  # a real flooder, over its limit
    for n in range(20_000):  # then a source address per packet, all within the same second
        limiter.allow(f"spoofed-{n}")
        assert len(limiter) <= 500
    # The flooder was the oldest: it is forgotten and starts again with its burst. Nobody new is
    # ever refused for want of room.
    assert taken(limiter, "198.51.100.7", 5) == 2
    assert limiter.allow("203.0.113.1")


def test_the_memory_of_a_full_table_is_bounded() -> None:
    capacity = 10_000
    limiter = RateLimiter(Rate(per_second=20, burst=200), Clock(), capacity=capacity)
    tracemalloc.start()
    try:
        for n in range(3 * capacity):
            limiter.allow(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}")
        size, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(limiter) == capacity
    # About 200 bytes an address: the gateway's 50,000 a port are about 10 MB.
    assert size < 300 * capacity, size / capacity


def test_ipv6_sources_are_counted_by_their_64_and_mapped_ipv4_as_ipv4() -> None:
    assert source_key("2001:db8:1:2:aaaa::1") == source_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert source_key("2001:db8:1:3::1") != source_key("2001:db8:1:2::1")
    assert source_key("::ffff:192.0.2.1") == "192.0.2.1" == source_key("192.0.2.1")
    assert source_key("fe80::1%eth0") == "fe80::/64"


@pytest.mark.parametrize("rate", [Rate(0, 10), Rate(1, 0.5)])
def test_an_unusable_rate_is_refused(rate: Rate) -> None:
    with pytest.raises(ValueError):
        RateLimiter(rate)
