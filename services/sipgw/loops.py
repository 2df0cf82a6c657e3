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

from collections.abc import Callable

from services.sipgw.call import Call, Phase, Side
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
    if side is None:
        table.log(outer).info("came back over the trunk, but no leg of it can be bridged here")
        return
    table.log(outer).info("the call came back over the trunk (path %s); bridging here", ",".join(inner.path))
    bridge(table, outer, side, inner, Side.CALLEE, "the call came back to this server: bridged here")


def bridge(
    table: CallTable,
    outer: Call,
    side: Side,
    inner: Call,
    joining: Side,
    reason: str,
    done: Callable[[bool], None] = lambda joined: None,
) -> None:
    """Joins ``inner``'s party on ``joining`` (A2) to ``outer`` in place of ``outer``'s trunk leg
    on ``side``: A2 offers afresh, ``outer``'s own party (A1) answers, both calls' legs toward the
    other server are hung up and ``inner`` ends with ``reason``. ``done`` is told whether it worked."""
    a2, a1 = inner.legs.get(joining), outer.legs.get(side.other)
    if a2 is None or a2.dialog is None or a1 is None or a1.dialog is None:
        done(False)
        return
    ask = table.request(a2, "INVITE")

    def joined(body: bytes) -> None:
        """A1's answer (what A2 is ACKed with): the two calls become one."""
        table.ack(a2, ask.cseq.number, body, "application/sdp")
        if outer.phase != Phase.ANSWERED or inner.phase != Phase.ANSWERED:
            done(False)
            return
        a2.sdp = body
        done(True)
        table.bye(outer, side)  # the leg toward the other server
        table.bye(inner, joining.other)  # the leg from it
        table.detach(inner, joining)
        table.replace_leg(outer, side, a2)
        table.end(inner, reason)
        tell_party(table, outer, side.other, a2.number, a2.name)

    def a2_offered(response: Response) -> None:
        if response.status < 200:
            return
        if response.status >= 300 or not response.body:
            table.log(outer).info("the joining party gave no offer (%s); the calls stay", response.status)
            done(False)
            return
        # A2 takes the place of the trunk leg on ``side``: it is given that side's media leg.
        offer = table.media.offer(outer, side, response.body, refuse=False)
        anchor = outer.media
        if anchor is not None and side.other in anchor.heard:
            # A1's media stays where it is: the gateway answers for it, A1 hears of nothing.
            joined(table.media.answer(outer, side.other, anchor.heard[side.other], tell=False))
            return
        reoffer = table.request(a1, "INVITE", offer, "application/sdp")

        def a1_answered(answer: Response) -> None:
            if answer.status < 200:
                return
            assert a1.dialog is not None
            a1.dialog.refresh_target(answer)
            table.ack(a1, reoffer.cseq.number)
            if not 200 <= answer.status < 300:
                table.ack(a2, ask.cseq.number)
                done(False)
                return
            a1.sdp = offer
            joined(table.media.answer(outer, side.other, answer.body))

        table.send(a1, reoffer, a1_answered, lambda: done(False))

    table.send(a2, ask, a2_offered, lambda: done(False))


def _looping_side(outer: Call, origin: str) -> Side | None:
    """The side of ``outer`` whose trunk leg the loop runs through: its only trunk leg, or of
    two, the one toward the server the call came back from."""
    trunk = [side for side, leg in outer.legs.items() if leg.trunk]
    if len(trunk) == 1:
        return trunk[0]
    toward = [side for side in trunk if outer.leg(side).server == origin]
    return toward[0] if len(toward) == 1 else None
