"""A call whose other end vanished ends: a peer gateway that died or restarted, and a party that no
longer answers the session timer's refresh (gateways and phones in one process, ``switch.py``)."""

from __future__ import annotations

from services.sipgw.call import Phase
from services.sipgw.liveness import PeerMonitor, SessionTimer
from tests.unit.sipgw.switch import Gateway, Network, Phone, group, settle
from tests.unit.sipgw.test_call_core import answered_call


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def reasons(phone: Phone) -> list[str]:
    return [r.headers.get("Reason") or "" for r in phone.got("BYE")]


async def test_the_calls_of_a_peer_that_died_end_within_seconds() -> None:
    net = Network()
    alpha, beta = Gateway(net, "alpha", ["100"]), Gateway(net, "beta", ["200"])
    group(alpha, beta)
    alice, carol = Phone(net, alpha, "100"), Phone(net, beta, "200")
    await answered_call(alice, carol, alpha)
    clock = Clock()
    monitor = PeerMonitor(alpha.calls.table, alpha.trunk, dead_after=6.0, clock=clock)
    for _ in range(4):  # beta answers: nothing happens
        monitor.check()
        await settle(lambda: not any(p.pings for p in monitor._peers.values()), "beta answered the OPTIONS")
        clock.now += 2
    assert alpha.calls.active()[0].phase == Phase.ANSWERED
    for address in (beta.link.local, beta.trunk_link.local):  # kill -9 of beta's gateway
        del net.listeners[address]
    for _ in range(4):
        monitor.check()
        clock.now += 2
    await settle(lambda: bool(alice.got("BYE")), "Alice told the call is over")
    assert reasons(alice) == ['SIP;cause=503;text="server beta does not answer"']
    assert alpha.lines_in_use() == 0 and not alpha.calls.active()
    assert alpha.calls.calls[next(iter(alpha.calls.calls))].end_reason == "server beta does not answer"


async def test_the_calls_of_a_peer_that_restarted_end_at_its_next_answer() -> None:
    net = Network()
    alpha, beta = Gateway(net, "alpha", ["100"]), Gateway(net, "beta", ["200"])
    group(alpha, beta)
    alice, carol = Phone(net, alpha, "100"), Phone(net, beta, "200")
    await answered_call(alice, carol, alpha)
    restarted = Gateway(net, "beta", ["200"])  # same address, a new process that knows no call
    net.listeners[beta.trunk_link.local] = net.listeners.pop(restarted.trunk_link.local)
    restarted.trunk_link.local = beta.trunk_link.local
    monitor = PeerMonitor(alpha.calls.table, alpha.trunk)
    monitor.check()
    await settle(lambda: bool(alice.got("BYE")), "Alice told the call is over")
    assert reasons(alice) == ['SIP;cause=503;text="server beta restarted and lost the call"']
    await settle(lambda: alpha.lines_in_use() == 0, "alpha's line free")


async def test_the_session_timer_refreshes_each_leg_and_ends_a_call_whose_party_vanished() -> None:
    net = Network()
    alpha = Gateway(net, "alpha", ["100", "101"])
    alice, bob = Phone(net, alpha, "100"), Phone(net, alpha, "101")
    await answered_call(alice, bob, alpha)
    clock = Clock()
    timer = SessionTimer(alpha.calls.table, session_expires=90, clock=clock)
    for leg in alpha.calls.active()[0].legs.values():
        leg.refreshed_at = clock.now
    clock.now += 44
    timer.check()
    assert not alice.got("UPDATE")  # not due yet
    clock.now += 2
    timer.check()
    await settle(lambda: bool(alice.got("UPDATE")) and bool(bob.got("UPDATE")), "both legs refreshed")
    assert (alice.got("UPDATE")[0].headers.get("Session-Expires") or "").startswith("90")
    del net.listeners[bob.address]  # Bob's phone is gone (unplugged, crashed)
    clock.now += 46
    timer.check()
    await settle(lambda: bool(alice.got("BYE")), "Alice told the call is over", timeout=5)
    assert reasons(alice) == ['SIP;cause=408;text="the session timer found the callee gone (no answer)"']
    assert alpha.calls.active() == []


async def test_a_trunk_legs_refresh_is_answered_by_the_other_gateway_not_its_phone() -> None:
    net = Network()
    alpha, beta = Gateway(net, "alpha", ["100"]), Gateway(net, "beta", ["200"])
    group(alpha, beta)
    alice, carol = Phone(net, alpha, "100"), Phone(net, beta, "200")
    await answered_call(alice, carol, alpha)
    clock = Clock()
    timer = SessionTimer(alpha.calls.table, session_expires=90, clock=clock)
    (call,) = alpha.calls.active()
    for leg in call.legs.values():
        leg.refreshed_at = clock.now
    clock.now += 46
    timer.check()
    await settle(lambda: bool(alice.got("UPDATE")), "Alice's leg refreshed")
    trunk_leg = next(leg for leg in call.legs.values() if leg.trunk)
    assert trunk_leg.allows_update  # the other gateway says it takes UPDATE
    await settle(lambda: not alpha.core.transactions.clients, "the refreshes answered")
    assert not carol.got("UPDATE") and not carol.got("INVITE")[1:]  # beta answered it itself
    assert call.phase == Phase.ANSWERED
