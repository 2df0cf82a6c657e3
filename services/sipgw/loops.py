"""Collapsing a call that left this server over the trunk and came back to it.

A1 (ours) calls B1 on server B; B1 transfers to A2, ours again: the call now runs
A1 -> trunk -> B -> trunk -> A2. The INVITE that comes back carries the call's correlation id and
the list of servers it has passed; this server finds its own id in that list and a live call with
that id: a loop, known for certain. Once the returning leg is set up (its ACK came, so B's
transfer is complete), this server bridges A1 and A2 itself: A2 is asked for a fresh offer
(re-INVITE without SDP), the offer goes to A1, A1's answer back to A2; then both trunk legs get
BYE (server B ends its part of the call), their lines are freed, and A1 is told its new party.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from services.sipgw.call import ANSWERED, Call
from services.sipgw.fork import Branch
from services.sipgw.sip import Response
from services.sipgw.sip.transport import sent_by

if TYPE_CHECKING:
    from services.sipgw.b2bua import B2BUA

_log = logging.getLogger(__name__)


def collapse(agent: B2BUA, outer: Call, inner: Call) -> None:
    """``outer``: A1 (side a) to the trunk (side b); ``inner``: the trunk (side a) to A2 (side b)."""
    if outer.state != ANSWERED or inner.state != ANSWERED or inner.b is None or inner.b_dialog is None:
        return
    if outer.a_dialog is None or outer.b_dialog is None or inner.a_dialog is None:
        return
    _log.info("call %s: the call came back over the trunk (path %s); bridging here", outer.id, ",".join(inner.path))
    a2_dialog, a2 = inner.b_dialog, inner.b
    a1_dialog, a1_link, a1_address = outer.a_dialog, outer.a_link, outer.a_address
    ask = a2_dialog.request("INVITE", sent_by(a2.link))

    def a2_offered(response: Response) -> None:
        if response.status < 200:
            return
        if response.status >= 300 or not response.body:
            _log.info("call %s: A2 gave no offer (%s); the loop stays", outer.id, response.status)
            return
        offer = response.body
        reoffer = a1_dialog.request("INVITE", sent_by(a1_link), offer, "application/sdp")

        def a1_answered(answer: Response) -> None:
            if answer.status < 200:
                return
            a1_dialog.refresh_target(answer)
            agent.transactions.send_direct(a1_dialog.ack(sent_by(a1_link), reoffer.cseq.number), a1_link, a1_address)
            ok = 200 <= answer.status < 300
            body = answer.body if ok else b""
            ack = a2_dialog.ack(sent_by(a2.link), ask.cseq.number, body, "application/sdp" if body else "")
            agent.transactions.send_direct(ack, a2.link, a2.address)
            if ok:
                _bridge(agent, outer, inner, a2, offer, answer)

        agent.transactions.send_request(reoffer, a1_link, a1_address, a1_answered, lambda: None)

    agent.transactions.send_request(ask, a2.link, a2.address, a2_offered, lambda: None)


def _bridge(agent: B2BUA, outer: Call, inner: Call, a2: Branch, a2_offer: bytes, a1_answer: Response) -> None:
    """A2 takes the trunk leg's place in ``outer``; both trunk legs are hung up."""
    assert inner.b_dialog is not None
    agent._bye(outer, "b")  # the leg to server B
    agent._bye(inner, "a")  # the leg from server B
    a2_dialog = inner.b_dialog
    inner.b_dialog = None  # now ``outer``'s: forgetting ``inner`` must not drop it
    inner.b = None
    outer.trunk_out, outer.peer_server_id = False, ""
    number = inner.callee
    allows = inner.allows_update.get("b", False)
    agent.replace_side(outer, "b", a2_dialog, a2, number, None, a1_answer.body, allows_update=allows)
    outer.sdp_to["a"] = a2_offer
    agent._end(inner, "the call came back to this server: bridged here")
    agent.tell_party(outer.id, number, "")
