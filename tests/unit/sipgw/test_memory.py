"""What a call leaves behind once it is over and its timers have passed: nothing.

The gateway collects cyclic garbage rarely (``app.py`` freezes start-up objects and raises the
collector's thresholds), so a call that is only freed by the collector stays in memory for many
thousands of calls. Each test runs calls with the collector off, waits until the tables are
empty, and then asks the collector what it would have to free: nothing of the gateway's.
"""

from __future__ import annotations

import gc
from collections.abc import Awaitable, Callable, Iterator

import pytest

from services.sipgw.call import Call
from tests.unit.sipgw.switch import Gateway, Network, Phone, group, settle
from tests.unit.sipgw.test_call_core import answered_call


@pytest.fixture
def collector_off() -> Iterator[None]:
    """Puts the collector back as it was; ``after`` turns it off."""
    try:
        yield
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def empty(*gateways: Gateway) -> bool:
    """No transaction, call or dialog index left on any of them."""
    for gateway in gateways:
        table = gateway.calls.table
        if gateway.core.transactions.clients or gateway.core.transactions.servers:
            return False
        if table.calls or table._by_dialog or table._by_invite or table._retired:
            return False
    return True


def _owners(gateway: Gateway) -> set[int]:
    return {id(gateway.core.transactions), id(gateway.calls.table)}


def cyclic_garbage(gateways: list[Gateway], call_ids: set[str]) -> list[str]:
    """The gateways' objects only the collector would free: their calls, and whatever holds their
    transaction layer or call table (transactions, forks, transfers). Other tests' leftovers that
    happen to become garbage meanwhile are not counted."""
    owners = set().union(*(_owners(g) for g in gateways))
    gc.set_debug(gc.DEBUG_SAVEALL)
    gc.collect()
    found = sorted(
        {
            type(o).__qualname__
            for o in gc.garbage
            if (isinstance(o, Call) and o.id in call_ids)
            or any(id(getattr(o, name, None)) in owners for name in ("layer", "transactions", "table"))
        }
    )
    gc.garbage.clear()
    gc.set_debug(0)
    return found


async def after(scenario: Callable[[], Awaitable[None]], *gateways: Gateway) -> list[str]:
    """Runs ``scenario`` with the collector off, waits for the tables to empty, and returns what
    of the gateways' is left for the collector."""
    call_ids: set[str] = set()
    for gateway in gateways:
        gateway.calls.listeners.add(lambda call: call_ids.add(call.id))
    gc.collect()
    gc.disable()
    await scenario()
    await settle(lambda: empty(*gateways), "every table empty (64*T1 after the last call)", timeout=10)
    assert call_ids, "no call was made"
    return cyclic_garbage(list(gateways), call_ids)


async def test_local_calls_leave_nothing_for_the_collector(collector_off: None) -> None:
    net = Network()
    alpha = Gateway(net, "alpha", ["100", "101"])
    alice, bob = Phone(net, alpha, "100"), Phone(net, alpha, "101")

    async def calls() -> None:
        for n, hanging_up in enumerate((alice, bob, alice), start=1):
            alice.responses.clear()  # the next call's 200 OK is the one to ACK
            await answered_call(alice, bob, alpha)
            hanging_up.hang_up()
            await settle(lambda n=n: len(alice.got("BYE")) + len(bob.got("BYE")) == n, "the other side hung up")  # type: ignore[misc]

    assert await after(calls, alpha) == []


async def test_a_trunk_call_leaves_nothing_for_the_collector(collector_off: None) -> None:
    net = Network()
    alpha, beta = Gateway(net, "alpha", ["100"]), Gateway(net, "beta", ["200"])
    group(alpha, beta)
    alice, carol = Phone(net, alpha, "100"), Phone(net, beta, "200")

    async def call() -> None:
        await answered_call(alice, carol, alpha)
        alice.hang_up()
        await settle(lambda: bool(carol.got("BYE")), "Carol hung up through the trunk")

    assert await after(call, alpha, beta) == []


async def test_a_transferred_call_leaves_nothing_for_the_collector(collector_off: None) -> None:
    net = Network()
    alpha = Gateway(net, "alpha", ["100", "101", "102"])
    alice, bob, carol = Phone(net, alpha, "100"), Phone(net, alpha, "101"), Phone(net, alpha, "102")

    async def transferred() -> None:
        await answered_call(alice, bob, alpha)
        bob.transfer("102")
        await settle(lambda: bool(bob.got("BYE")), "the transferor hung up")
        alice.hang_up()
        await settle(lambda: bool(carol.got("BYE")), "Carol hung up")

    assert await after(transferred, alpha) == []
