"""Closing a call that left this server over the trunk and came back to it.

Say A1 (ours) talks to B1 on server B, and B1 transfers to A2, ours again: the call now runs
A1 -> trunk -> B -> trunk -> A2. Or B1 called A1 and transfers to A2: B -> A1 and B -> A2. Either
way a trunk INVITE arrives carrying the correlation id of a call this server has (whichever side
of it this server was on): a loop, known for certain. It is set up as a call of its own (the
"inner" call: the trunk to A2); once its trunk side is set up (its ACK came, so B's transfer is
complete) this server bridges its own party A1 and A2 itself: A2 is asked for a fresh offer
(re-INVITE without SDP), the offer goes to A1, A1's answer back to A2; then both trunk legs get
BYE (server B ends its part of the call, its lines are freed), A2's leg takes the trunk leg's
place in the first call, and A1 is told its new party.
"""

from __future__ import annotations

from services.sipgw.call import Call, Leg, Phase, Side
from services.sipgw.calls import CallTable
from services.sipgw.identity import tell_party
from services.sipgw.sip import Response


def close_loop(table: CallTable, inner: Call) -> None:
    """``inner`` (the trunk on its caller's side, A2 on its callee's) came back as part of the
    call it names; the two become one call here if both are answered."""
    outer = table.live(inner.loop_of)
    inner.loop_of = ""
    if outer is None or outer.phase != Phase.ANSWERED or inner.phase != Phase.ANSWERED:
        return
    side = _looping_side(outer, inner.leg(Side.CALLER).server)
    a2 = inner.legs.get(Side.CALLEE)
    if side is None or a2 is None or a2.dialog is None:
        table.log(outer).info("came back over the trunk, but no leg of it can be bridged here")
        return
    a1 = outer.leg(side.other)
    if a1.dialog is None:
        return
    table.log(outer).info("the call came back over the trunk (path %s); bridging here", ",".join(inner.path))
    ask = table.request(a2, "INVITE")

    def a2_offered(response: Response) -> None:
        if response.status < 200:
            return
        if response.status >= 300 or not response.body:
            table.log(outer).info("the returning party gave no offer (%s); the loop stays", response.status)
            return
        offer = response.body
        reoffer = table.request(a1, "INVITE", offer, "application/sdp")

        def a1_answered(answer: Response) -> None:
            if answer.status < 200:
                return
            assert a1.dialog is not None
            a1.dialog.refresh_target(answer)
            table.ack(a1, reoffer.cseq.number)
            ok = 200 <= answer.status < 300
            body = answer.body if ok else b""
            table.ack(a2, ask.cseq.number, body, "application/sdp")
            if ok:
                a1.sdp, a2.sdp = offer, answer.body
                _bridge(table, outer, side, inner, a2)

        table.send(a1, reoffer, a1_answered)

    table.send(a2, ask, a2_offered)


def _looping_side(outer: Call, origin: str) -> Side | None:
    """The side of ``outer`` whose trunk leg the loop runs through: its only trunk leg, or of
    two, the one toward the server the call came back from."""
    trunk = [side for side, leg in outer.legs.items() if leg.trunk]
    if len(trunk) == 1:
        return trunk[0]
    toward = [side for side in trunk if outer.leg(side).server == origin]
    return toward[0] if len(toward) == 1 else None


def _bridge(table: CallTable, outer: Call, side: Side, inner: Call, a2: Leg) -> None:
    """A2 takes the trunk leg's place in ``outer``; both trunk legs are hung up."""
    table.bye(outer, side)  # the leg toward the other server
    table.bye(inner, Side.CALLER)  # the leg from it
    table.detach(inner, Side.CALLEE)
    table.replace_leg(outer, side, a2)
    table.end(inner, "the call came back to this server: bridged here")
    tell_party(table, outer, side.other, a2.number, a2.name)
