"""The call core's rules, on gateways and phones in one process (``switch.py``): set-up and
hang-up, transfers, a loop closed where it comes back, a server in the middle handing the call
over, and what is reported to callstate."""

from __future__ import annotations

from pbxmesh.callstate.v1 import callstate_pb2 as cs
from services.sipgw.call import Change, Kind, Phase, Side
from services.sipgw.reporter import Reporter
from services.sipgw.routing import Outgoing
from tests.unit.sipgw.switch import Gateway, Network, Phone, group, settle


def only_call(gateway: Gateway) -> object:
    calls = gateway.calls.active()
    assert len(calls) == 1, [(c.id, c.caller, c.callee) for c in calls]
    return calls[0]


def parties(gateway: Gateway) -> list[tuple[str, str, Kind]]:
    return [(c.caller, c.callee, c.kind) for c in gateway.calls.active()]


async def answered_call(caller: Phone, callee: Phone, gateway: Gateway) -> None:
    caller.call(callee.number)
    await settle(lambda: any(r.status == 200 for r in caller.responses), "the caller's call answered")
    caller.ack_answer()
    await settle(lambda: bool(callee.got("ACK")), "the callee's ACK")


async def test_a_local_call_is_set_up_and_either_side_hangs_it_up() -> None:
    net = Network()
    alpha = Gateway(net, "alpha", ["100", "101"])
    alice, bob = Phone(net, alpha, "100"), Phone(net, alpha, "101")
    await answered_call(alice, bob, alpha)
    call = alpha.calls.active()[0]
    assert (call.caller, call.callee, call.kind, call.phase) == ("100", "101", Kind.LOCAL, Phase.ANSWERED)
    assert set(call.legs) == {Side.CALLER, Side.CALLEE}
    # Each phone got the other's SDP through the gateway.
    assert bob.received[0].body.startswith(b"v=0\r\no=100 ")
    bob.hang_up()
    await settle(lambda: bool(alice.got("BYE")), "Alice told of Bob's hang-up")
    assert call.phase == Phase.ENDED and call.end_reason == "hung up by callee"


async def test_a_blind_transfer_puts_the_target_in_the_transferors_place() -> None:
    net = Network()
    alpha = Gateway(net, "alpha", ["100", "101", "102"])
    alice, bob, carol = Phone(net, alpha, "100"), Phone(net, alpha, "101"), Phone(net, alpha, "102")
    await answered_call(alice, bob, alpha)
    bob.transfer("102")
    await settle(lambda: bool(bob.got("BYE")), "the transferor hung up")
    notified = [r.body for r in bob.got("NOTIFY")]
    assert notified[0].startswith(b"SIP/2.0 100") and notified[-1].startswith(b"SIP/2.0 200")
    assert parties(alpha) == [("100", "102", Kind.LOCAL)]
    # Alice got Carol's offer in a re-INVITE; Carol's ACK carried Alice's answer.
    assert alice.got("INVITE")[-1].body.startswith(b"v=0\r\no=102 ")
    assert carol.got("ACK")[-1].body.startswith(b"v=0\r\no=100 ")


async def test_a_transfer_to_a_busy_target_leaves_the_transferor_in_the_call() -> None:
    net = Network()
    alpha = Gateway(net, "alpha", ["100", "101", "102"])
    alice, bob = Phone(net, alpha, "100"), Phone(net, alpha, "101")
    Phone(net, alpha, "102", answer=False)
    await answered_call(alice, bob, alpha)
    bob.transfer("102")
    await settle(lambda: any(r.body.startswith(b"SIP/2.0 486") for r in bob.got("NOTIFY")), "told it failed")
    assert parties(alpha) == [("100", "101", Kind.LOCAL)] and not bob.got("BYE")


async def test_a_call_from_another_server_transferred_back_is_closed_where_it_started_ringing() -> None:
    """Carol (beta) calls Alice (alpha) and transfers her to Bob (alpha): alpha knows the
    returning call by its correlation id, bridges Alice and Bob, and tells Alice alone."""
    net = Network()
    alpha, beta = Gateway(net, "alpha", ["100", "101"]), Gateway(net, "beta", ["200"])
    group(alpha, beta)
    alice, bob, carol = Phone(net, alpha, "100"), Phone(net, alpha, "101"), Phone(net, beta, "200")
    await answered_call(carol, alice, beta)
    carol.transfer("101")
    await settle(lambda: parties(alpha) == [("101", "100", Kind.LOCAL)], "one local call on alpha")
    await settle(lambda: not beta.calls.active(), "beta out of the call")
    assert (alpha.lines_in_use(), beta.lines_in_use()) == (0, 0)
    assert [i for i in alice.told() if "101" in i] and not bob.told()
    call = only_call(alpha)
    assert call.home == Side.CALLEE and call.peer_server == ""  # type: ignore[attr-defined]


async def test_a_server_in_the_middle_hands_the_call_over_and_frees_its_lines() -> None:
    net = Network()
    alpha, beta, gamma = Gateway(net, "alpha", ["100"]), Gateway(net, "beta", ["200"]), Gateway(net, "gamma", ["300"])
    group(alpha, beta, gamma)
    alice, carol, erin = Phone(net, alpha, "100"), Phone(net, beta, "200"), Phone(net, gamma, "300")
    await answered_call(alice, carol, alpha)
    carol.transfer("300")
    await settle(lambda: not beta.calls.active(), "beta out of the call")
    assert parties(alpha) == [("100", "300", Kind.TRUNK_OUT)]
    assert parties(gamma) == [("100", "300", Kind.TRUNK_IN)]
    assert (alpha.lines_in_use(), beta.lines_in_use(), gamma.lines_in_use()) == (1, 0, 1)
    assert only_call(alpha).peer_server == "gamma"  # type: ignore[attr-defined]
    assert only_call(gamma).peer_server == "alpha"  # type: ignore[attr-defined]
    before = (len(alice.received), len(erin.received))
    alice.hang_up()  # the direct leg carries the BYE: alpha to gamma to Erin
    await settle(lambda: bool(erin.got("BYE")), "Erin hung up through the direct leg")
    assert (len(alice.received), len(erin.received) - 1) == before  # nothing else reached either phone
    await settle(lambda: (alpha.lines_in_use(), gamma.lines_in_use()) == (0, 0), "every line free")


async def test_a_hand_over_that_fails_leaves_the_call_as_it_was() -> None:
    net = Network()
    alpha, beta = Gateway(net, "alpha", ["100"]), Gateway(net, "beta", ["200"])
    gamma = Gateway(net, "gamma", ["300"], lines=1)  # no line for a second call in
    group(alpha, beta, gamma)
    alice, carol, erin = Phone(net, alpha, "100"), Phone(net, beta, "200"), Phone(net, gamma, "300")
    await answered_call(alice, carol, alpha)
    carol.transfer("300")
    await settle(lambda: bool(carol.got("BYE")), "the transfer done")
    await settle(lambda: gamma.trunk.lines.usage.rejected == 1, "gamma refused the hand-over for want of a line")
    await settle(lambda: not only_call(beta).handing_over, "beta told the hand-over failed")  # type: ignore[attr-defined]
    assert parties(beta) == [("100", "300", Kind.TRUNK_IN)]
    assert (alpha.lines_in_use(), beta.lines_in_use(), gamma.lines_in_use()) == (1, 2, 1)
    erin.hang_up()  # still through beta
    await settle(lambda: bool(alice.got("BYE")), "Alice hung up through beta")
    await settle(lambda: (alpha.lines_in_use(), beta.lines_in_use(), gamma.lines_in_use()) == (0, 0, 0), "free")


async def test_the_reporter_names_this_servers_party_local_whichever_side_it_is_on() -> None:
    net = Network()
    alpha, beta = Gateway(net, "alpha", ["100"]), Gateway(net, "beta", ["200"])
    group(alpha, beta)
    alice, carol = Phone(net, alpha, "100"), Phone(net, beta, "200")
    await answered_call(alice, carol, alpha)
    numbering = {"200": ("Carol", "support")}
    event = Reporter("127.0.0.1:1", beta.calls, "beta", numbering).event(only_call(beta), Change.ANSWERED, 0.0)  # type: ignore[arg-type]
    assert (event.local_party.number, event.local_party.display_name, event.local_party.department) == (
        "200",
        "Carol",
        "support",
    )
    assert (event.remote_party.number, event.remote_party.server_id) == ("100", "alpha")
    assert (event.peer_server_id, event.outgoing, event.kind) == ("alpha", False, cs.EVENT_KIND_ANSWERED)
    assert list(event.path) == ["alpha", "beta"]


async def test_another_servers_trunk_comes_from_the_plan_and_only_a_server_may_ask_for_a_hand_over() -> None:
    net = Network()
    alpha, gamma = Gateway(net, "alpha", ["100", "101"]), Gateway(net, "gamma", ["300"])
    group(alpha, gamma)
    out = Outgoing("100", None, 70, "c-1")
    (branch,) = alpha.core.router.server("gamma", "300", out)  # type: ignore[misc]
    assert (branch.address, branch.peer_server_id, branch.over_trunk) == (gamma.trunk_link.local, "gamma", True)
    branch.released()
    assert alpha.core.router.server("nobody", "300", out)[0] == 404
    # A phone's REFER naming a server is a transfer like any other: here, to an unknown dialog.
    alice, bob = Phone(net, alpha, "100"), Phone(net, alpha, "101")
    await answered_call(alice, bob, alpha)
    sent_before = len(net.dropped)
    alice.in_dialog("REFER", {"Refer-To": "<sip:300@gamma.pbxmesh.invalid?Replaces=x%3Bto-tag%3Da%3Bfrom-tag%3Db>"})
    await settle(lambda: any(r.cseq.method == "REFER" for r in alice.responses), "the REFER answered")
    refused = next(r for r in alice.responses if r.cseq.method == "REFER")
    assert refused.status == 481 and gamma.lines_in_use() == 0 and alpha.lines_in_use() == 0
    assert len(net.dropped) == sent_before and parties(alpha) == [("100", "101", Kind.LOCAL)]
