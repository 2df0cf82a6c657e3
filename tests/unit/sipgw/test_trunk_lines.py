"""One pool of trunk lines for both directions; the count stays exact."""

from __future__ import annotations

import asyncio
import random

import pytest

from services.sipgw.trunk_lines import NoLineFree, TrunkLines


def test_one_pool_for_both_directions() -> None:
    lines = TrunkLines(3)
    lines.take(outgoing=True)
    lines.take(outgoing=False)
    lines.take(outgoing=False)
    with pytest.raises(NoLineFree, match="all 3 trunk lines are busy"):
        lines.take(outgoing=True)
    assert (lines.usage.in_use, lines.usage.incoming, lines.usage.outgoing, lines.usage.rejected) == (3, 2, 1, 1)
    lines.give_back(outgoing=False)
    lines.take(outgoing=True)
    assert (lines.usage.incoming, lines.usage.outgoing) == (1, 2)
    with pytest.raises(RuntimeError):
        TrunkLines(1).give_back(outgoing=True)


async def test_count_is_exact_under_many_concurrent_calls() -> None:
    lines = TrunkLines(30)
    peak = 0
    accepted = rejected = 0

    async def call(outgoing: bool) -> None:
        nonlocal peak, accepted, rejected
        try:
            lines.take(outgoing)
        except NoLineFree:
            rejected += 1
            return
        accepted += 1
        peak = max(peak, lines.usage.in_use)
        await asyncio.sleep(random.random() / 1000)
        lines.give_back(outgoing)

    await asyncio.gather(*(call(i % 2 == 0) for i in range(2000)))
    assert peak == 30 and lines.usage.in_use == 0
    assert accepted + rejected == 2000 and lines.usage.rejected == rejected > 0


async def test_trunk_addresses_take_ip_literals_at_once_and_resolve_names_off_the_call_path() -> None:
    from services.sipgw.trunk_addresses import TrunkAddresses

    addresses = TrunkAddresses()
    try:
        assert addresses.address("127.0.0.1:5070") == ("127.0.0.1", 5070)
        assert addresses.address("[::1]:5070") == ("::1", 5070)
        assert addresses.address("localhost:5072") is None  # not resolved yet: the call gets 503
        for _ in range(100):
            await asyncio.sleep(0.01)
            if addresses.address("localhost:5072") is not None:
                break
        assert addresses.address("localhost:5072") == ("127.0.0.1", 5072)  # IPv4, as the trunk socket
    finally:
        await addresses.close()
