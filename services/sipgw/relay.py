"""Requests inside a call: what one leg says goes to the other in the gateway's dialog with it.

ACK ends the gateway's resending of its 2xx (and, for a call that came back over the trunk, lets
the loop be closed here); BYE from either side hangs up the other; a re-INVITE or UPDATE (hold,
resume, a new codec) is offered to the other side and its answer carried back (RFC 3261 14,
RFC 3311); REFER starts a transfer (``transfer.py``). An offer that stops sending holds the call,
one that sends again resumes it. A late BYE on a dialog that left the call (a transfer) gets 200.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from services.sipgw import handover, sdp
from services.sipgw.anchor import NotAcceptable
from services.sipgw.call import Call, Change, Phase, Side
from services.sipgw.calls import CallTable
from services.sipgw.sip import Request, Response
from services.sipgw.sip.transaction import ServerTransaction
from services.sipgw.sip.transport import response_to


class InDialog:
    def __init__(self, table: CallTable, transfers: Callable[[Call, Side, ServerTransaction, Request], None]):
        self.table = table
        self.transfers = transfers  # starts a transfer (REFER)
        # Called when a call that came back over the trunk has its caller's side set up.
        self.on_loop_ready: Callable[[Call], None] = lambda call: None

    def receive(self, tx: ServerTransaction, request: Request) -> bool:
        """ACK, BYE and the rest for an existing call; False if the request is not one of ours."""
        key = (request.call_id, request.to_addr.tag or "", request.from_addr.tag or "")
        found = self.table.find(key)
        if found is None:
            if self.table.retired(key) and request.method == "BYE":
                tx.respond(response_to(request.headers, 200, "OK"))
                return True
            return self.table.retired(key)
        call, side = found
        leg = call.leg(side)
        assert leg.dialog is not None
        if request.method == "ACK":
            leg.stop_resending()
            if call.loop_of and side == Side.CALLER:  # the returning leg is set up: the other server is done
                self.on_loop_ready(call)
            return True
        if not leg.dialog.receive(request):
            tx.respond(response_to(request.headers, 500, "Server Internal Error"))
            return True
        if request.method == "BYE":
            tx.respond(response_to(request.headers, 200, "OK"))
            if call.handing_over:
                # Each side's server hangs up its own leg once it has swapped it: no BYE is
                # passed across (it could reach a server before its swap and end the call there).
                self.table.drop(call, side)
                if not call.legs:
                    self.table.end(call, "handed over: the servers on both sides talk directly")
                return True
            self.table.bye(call, side.other)
            self.table.end(call, f"hung up by {side}")
            return True
        if request.method == "UPDATE" and not request.body:
            # A session refresh (RFC 4028) or a bare UPDATE: no offer to carry, answered here.
            ok = response_to(request.headers, 200, "OK")
            ok.headers.add("Contact", leg.dialog.contact)
            tx.respond(ok)
            leg.refreshed_at = time.monotonic()
            return True
        if side.other not in call.legs:
            tx.respond(response_to(request.headers, 491, "Request Pending"))
            return True
        if request.method in ("INVITE", "UPDATE") and call.phase == Phase.ANSWERED:
            self.relay_offer(call, side, tx, request)
            return True
        if request.method == "REFER":
            self.transfers(call, side, tx, request)
            return True
        if request.method == "NOTIFY" and call.handing_over:
            handover.notified(self.table, call, tx, request)
            return True
        tx.respond(response_to(request.headers, 501, "Not Implemented"))
        return True

    def relay_offer(self, call: Call, side: Side, tx: ServerTransaction, request: Request) -> None:
        """A re-INVITE or UPDATE: the other side gets the same offer in its own dialog, and its
        answer comes back."""
        if request.method == "INVITE":
            tx.respond(response_to(request.headers, 100, "Trying"))
        content_type = request.headers.get("Content-Type") or ""
        body = request.body
        if body and content_type == "application/sdp":
            try:
                body = self.table.media.offer(call, side, body)
            except NotAcceptable:
                tx.respond(response_to(request.headers, 488, "Not Acceptable Here (no PCMU or PCMA offered)"))
                return
        self._note_hold(call, side, request.body)
        if self._answer_here(call, side, tx, request):
            return
        own, other = call.leg(side), call.leg(side.other)
        assert own.dialog is not None and other.dialog is not None
        own.refreshed_at = other.refreshed_at = time.monotonic()  # the session is refreshed both ways
        offer = self.table.request(other, request.method, body, content_type)
        if body:
            other.sdp = body

        def on_answer(response: Response) -> None:
            if response.status < 200:
                return
            answered = response.body
            if answered and response.headers.get("Content-Type") == "application/sdp" and response.status < 300:
                answered = self.table.media.answer(call, side.other, answered)
            if 200 <= response.status < 300 and answered:
                own.sdp = answered
            if request.method == "INVITE" and response.status < 300:
                assert other.dialog is not None
                other.dialog.refresh_target(response)
                self.table.ack(other, offer.cseq.number)
            if tx.state not in ("Proceeding", "Trying"):
                return  # an answer we already relayed (a retransmitted 2xx)
            answer = response_to(request.headers, response.status, response.reason)
            if response.status < 300:
                assert own.dialog is not None
                answer.headers.add("Contact", own.dialog.contact)
            sdp.copy_body(response, answer)
            answer.body = answered if answer.body else answer.body
            tx.respond(answer)
            if request.method == "INVITE" and response.status < 300:
                self.table.keep_answering(call, side, answer.to_bytes())

        def on_timeout() -> None:
            tx.respond(response_to(request.headers, 408, "Request Timeout"))

        self.table.send(other, offer, on_answer, on_timeout)

    def _answer_here(self, call: Call, side: Side, tx: ServerTransaction, request: Request) -> bool:
        """With the media anchored, a phone on the other side need not hear of a new offer (a
        hold, a resume, a codec change): the media service takes it, plays the music, converts.
        The gateway answers with that phone's own SDP. Another server behind the trunk is told."""
        other = call.legs.get(side.other)
        media = call.media
        if media is None or other is None or other.trunk or side.other not in media.heard:
            return False
        if request.headers.get("Content-Type") != "application/sdp" or not request.body:
            return False
        own = call.leg(side)
        assert own.dialog is not None
        own.refreshed_at = time.monotonic()
        answer = response_to(request.headers, 200, "OK")
        answer.headers.add("Contact", own.dialog.contact)
        answer.headers.add("Content-Type", "application/sdp")
        answer.body = own.sdp = self.table.media.answer(call, side.other, media.heard[side.other], tell=False)
        tx.respond(answer)
        if request.method == "INVITE":
            self.table.keep_answering(call, side, answer.to_bytes())
        return True

    def _note_hold(self, call: Call, side: Side, offer: bytes) -> None:
        """An offer that stops sending holds the call; one that sends again resumes it. Offers
        without SDP change nothing."""
        if not offer:
            return
        holding = sdp.holds(offer)
        if holding and call.held_by is None:
            call.held_by = side
            self.table.media.hold(call, side, True)
            self.table.changed(call, Change.HELD)
        elif not holding and call.held_by == side:
            call.held_by = None
            self.table.media.hold(call, side, False)
            self.table.changed(call, Change.RESUMED)
