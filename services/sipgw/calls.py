"""The gateway's table of calls: it owns the calls, their indexes, and every operation that
changes a live call's legs.

Set-up (``setup.py``), in-dialog relaying (``relay.py``), identity updates (``identity.py``),
transfers (``transfer.py``) and loop closure (``loops.py``) change a call only through these:
send on a leg, ACK, BYE, keep answering until ACK, replace a leg (a new party takes a side),
detach a leg (it leaves with its dialog, for another call), end, and tell the listeners.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from services.runtime.logs import call_log, call_traces
from services.runtime.telemetry import ATTR_END_REASON
from services.sipgw import tracing
from services.sipgw.anchor import Anchoring
from services.sipgw.auth.digest import DigestError
from services.sipgw.call import Call, Change, Leg, Phase, Side
from services.sipgw.challenged import with_credentials
from services.sipgw.sip import Request, Response
from services.sipgw.sip.transaction import ClientTransaction, TransactionLayer
from services.sipgw.sip.transport import sent_by
from services.sipgw.trunk import Trunk

_log = logging.getLogger(__name__)

MEDIA_CLOSE_DELAY = 2.0  # seconds an ended call keeps its media legs
DialogKey = tuple[str, str, str]  # Call-ID, our tag, the peer's tag


def _ignore(*_: object) -> None:
    return None


class CallTable:
    def __init__(self, transactions: TransactionLayer, trunk: Trunk | None = None):
        self.transactions = transactions
        self.trunk = trunk
        self.calls: dict[str, Call] = {}
        self._by_dialog: dict[DialogKey, tuple[Call, Side]] = {}
        self._by_invite: dict[tuple[str, str], Call] = {}  # (the caller's Call-ID, its From tag)
        # Dialogs of parties that left (a transfer, a loop closed): their late BYE still gets its 200.
        self._retired: dict[DialogKey, Call] = {}
        # Told of every call that starts or changes (the API's WatchCalls, the callstate reporter).
        self.listeners: set[Callable[[Call], None]] = set()
        # Told each call's setup time (first INVITE to answer, seconds): the metrics' histogram.
        self.record_setup: Callable[[float], None] = lambda seconds: None
        # The calls' media on the server's media service (none set: the parties talk directly).
        self.media = Anchoring(None, required=False)
        # A provider's account (username, password) for its challenges in a call; None: it has none.
        self.credentials: Callable[[str], tuple[str, str] | None] = lambda provider: None

    # -- finding calls ----------------------------------------------------------------------------

    def get(self, call_id: str) -> Call | None:
        return self.calls.get(call_id)

    def live(self, call_id: str) -> Call | None:
        call = self.calls.get(call_id)
        return call if call is not None and call.phase != Phase.ENDED else None

    def active(self) -> list[Call]:
        return [call for call in self.calls.values() if call.phase != Phase.ENDED]

    def by_invite(self, call_id: str, from_tag: str) -> Call | None:
        return self._by_invite.get((call_id, from_tag))

    def find(self, key: DialogKey) -> tuple[Call, Side] | None:
        return self._by_dialog.get(key)

    def retired(self, key: DialogKey) -> bool:
        return key in self._retired

    def replaced(self, dialog_id: DialogKey) -> tuple[Call, Side] | None:
        """The call and side a Replaces value (RFC 3891) names: the dialog as the other party sees
        it (its to-tag is ours, its from-tag the party's; either order is accepted)."""
        call_id, to_tag, from_tag = dialog_id
        return self._by_dialog.get((call_id, to_tag, from_tag)) or self._by_dialog.get((call_id, from_tag, to_tag))

    # -- a call's life ------------------------------------------------------------------------------

    def add(self, call: Call) -> None:
        self.calls[call.id] = call
        if call.invite is not None:
            request = call.invite.request
            self._by_invite[(request.call_id, request.from_addr.tag or "")] = call
        for side, leg in call.legs.items():
            if leg.dialog is not None:
                self._by_dialog[leg.dialog.key] = (call, side)

    def attach(self, call: Call, side: Side, leg: Leg) -> None:
        """``leg`` is ``side`` of the call now (an answer made it); its dialog routes here."""
        call.legs[side] = leg
        if leg.dialog is not None:
            self._by_dialog[leg.dialog.key] = (call, side)

    def changed(self, call: Call, event: Change) -> None:
        call.event = event
        for listener in list(self.listeners):
            listener(call)

    def log(self, call: Call) -> logging.LoggerAdapter:  # type: ignore[type-arg]
        return call_log(_log, call.id)

    # -- sending on a leg -----------------------------------------------------------------------------

    def offer(self, call: Call, side: Side, body: bytes) -> None:
        """A re-INVITE offering ``body`` to ``side``'s party, its 2xx ACKed (the media moves)."""
        leg = call.legs.get(side)
        if leg is None or leg.dialog is None or call.phase != Phase.ANSWERED:
            return
        leg.sdp = body
        reinvite = self.request(leg, "INVITE", body, "application/sdp")

        def on_answer(response: Response) -> None:
            if 200 <= response.status < 300 and leg.dialog is not None:
                leg.dialog.refresh_target(response)
                self.ack(leg, reinvite.cseq.number)

        self.send(leg, reinvite, on_answer)

    def request(self, leg: Leg, method: str, body: bytes = b"", content_type: str = "") -> Request:
        """A new request in the leg's dialog."""
        assert leg.dialog is not None
        return leg.dialog.request(method, sent_by(leg.link), body, content_type)

    def send(
        self,
        leg: Leg,
        request: Request,
        on_answer: Callable[[Response], None] = _ignore,
        on_timeout: Callable[[], None] = _ignore,
    ) -> ClientTransaction:
        if leg.provider:
            on_answer = self._answering_challenges(leg, request, on_answer, on_timeout)
        return self.transactions.send_request(request, leg.link, leg.address, on_answer, on_timeout)

    def _answering_challenges(
        self, leg: Leg, request: Request, on_answer: Callable[[Response], None], on_timeout: Callable[[], None]
    ) -> Callable[[Response], None]:
        """``on_answer`` for a request to a provider in a call (a BYE, a re-INVITE): a 401 or 407
        is answered with the provider's account and the request sent again (RFC 3261 22.2);
        whatever else comes, or a challenge that cannot be answered, goes to ``on_answer``."""
        answered: set[str] = set()
        first = request.cseq.number
        sent = [request]

        def answer(response: Response) -> None:
            again = None
            account = self.credentials(leg.provider) if response.status in (401, 407) else None
            if account is not None and leg.dialog is not None:
                cseq = leg.dialog.local_cseq + 1
                try:
                    again = with_credentials(sent[0], response, *account, cseq, answered)
                    if again is None:
                        _log.warning("provider %s refused our credentials for %s", leg.provider, request.method)
                except DigestError as error:
                    _log.warning("provider %s: cannot answer its challenge: %s", leg.provider, error)
            if again is None or leg.dialog is None:
                on_answer(response)
                return
            leg.dialog.local_cseq = cseq
            leg.resent[first] = cseq
            sent[0] = again
            self.transactions.send_request(again, leg.link, leg.address, answer, on_timeout)

        return answer

    def ack(self, leg: Leg, invite_cseq: int, body: bytes = b"", content_type: str = "") -> Request:
        """ACKs the leg's 2xx to the INVITE with that CSeq (an answer in it, if any)."""
        assert leg.dialog is not None
        invite_cseq = leg.resent.get(invite_cseq, invite_cseq)
        ack = leg.dialog.ack(sent_by(leg.link), invite_cseq, body, content_type if body else "")
        self.transactions.send_direct(ack, leg.link, leg.address)
        return ack

    def bye(self, call: Call, side: Side, reason: str = "", cause: int = 0) -> None:
        """BYE to the party on ``side``; with ``reason``, a Reason header says why (RFC 3326)."""
        leg = call.legs.get(side)
        if leg is not None and leg.dialog is not None:
            bye = self.request(leg, "BYE")
            if reason:
                text = reason.replace('"', "'")
                bye.headers.add("Reason", f'SIP;cause={cause or 200};text="{text}"')
            self.send(leg, bye)

    def hang_up(self, call: Call, reason: str, cause: int, gone: Side | None = None) -> None:
        """The gateway ends an answered call itself: BYE with the reason to every leg but the one
        whose party is ``gone`` (it would not answer), and the call ends with that reason."""
        for side in list(call.legs):
            if side != gone:
                self.bye(call, side, reason, cause)
        self.end(call, reason)

    def keep_answering(self, call: Call, side: Side, wire: bytes) -> None:
        """Resends the 2xx the gateway sent to ``side`` until its ACK (RFC 3261 13.3.1.4; the
        transaction layer leaves this to the agent, RFC 6026): T1 doubling to T2, and a call whose
        side never ACKs within 64*T1 is hung up."""
        leg = call.leg(side)
        leg.stop_resending()
        t1 = self.transactions.timers.t1
        leg.unacked = asyncio.get_running_loop().call_later(t1, self._answer_again, call, side, leg, wire, t1, t1)

    def _answer_again(self, call: Call, side: Side, leg: Leg, wire: bytes, interval: float, elapsed: float) -> None:
        # A method, not a closure that schedules itself: such a closure refers to itself, and the
        # call it holds would wait for the collector's full pass instead of going with its table.
        if call.phase == Phase.ENDED or leg.unacked is None:
            return
        timers = self.transactions.timers
        if elapsed >= timers.b:
            self.log(call).info("no ACK from the %s, hanging up", side)
            self.bye(call, Side.CALLER)
            self.bye(call, Side.CALLEE)
            self.end(call, "no ACK")
            return
        leg.link.send(wire, leg.address)
        following = min(interval * 2, timers.t2)
        leg.unacked = asyncio.get_running_loop().call_later(
            following, self._answer_again, call, side, leg, wire, following, elapsed + following
        )

    # -- legs changing hands ----------------------------------------------------------------------------

    def replace_leg(self, call: Call, side: Side, leg: Leg, event: Change = Change.TRANSFERRED) -> None:
        """A new leg takes ``side``'s place (the old one was hung up or handed on): the old
        dialog's late requests are still answered, its trunk line goes back. ``event`` says why:
        TRANSFERRED (a new party) or REROUTED (the same party through another server)."""
        old = call.legs.get(side)
        if old is not None:
            self._let_go(old)
            if old.dialog is not None:
                self._retired[old.dialog.key] = call
            old.release_line()
        self.attach(call, side, leg)
        far = call.legs.get(side.other)
        if side == call.home and leg.trunk and far is not None and not far.trunk:
            call.home = side.other  # this server's own party is the one on the other side now
            self.media.connect(call)  # which leg records as this server's party
        if event == Change.TRANSFERRED:
            call.held_by = None
        self.changed(call, event)

    def detach(self, call: Call, side: Side) -> Leg:
        """The party on ``side`` leaves the call for another one (an attended transfer): its
        dialog stays up, and the leg (with any trunk line it holds) goes with it."""
        leg = call.legs.pop(side)
        self._let_go(leg)
        return leg

    def drop(self, call: Call, side: Side) -> None:
        """The party on ``side`` hung up its leg and nothing is passed on (a hand-over): the leg
        leaves the call, its late requests still answered, its trunk line given back."""
        leg = call.legs.pop(side)
        self._let_go(leg)
        if leg.dialog is not None:
            self._retired[leg.dialog.key] = call
        leg.release_line()

    def _let_go(self, leg: Leg) -> None:
        """The leg's dialog no longer routes to its call and its 2xx is no longer resent."""
        if leg.dialog is not None:
            self._by_dialog.pop(leg.dialog.key, None)
        leg.stop_resending()

    # -- the end --------------------------------------------------------------------------------------------

    def end(self, call: Call, reason: str) -> None:
        """The call is over (its legs were hung up or answered by whoever ends it): ringing
        branches are canceled, trunk lines go back, listeners are told."""
        if call.phase == Phase.ENDED:
            return
        call.phase = Phase.ENDED
        for fork in (call.placed.fork if call.placed else None, call.fork):
            if fork is not None:
                if fork.winner is None:
                    fork.cancel()  # still ringing somewhere: CANCEL it (and free its lines)
                for branch in fork.branches:
                    branch.released()
        if call.transfer is not None:
            call.transfer.cancel()
            call.transfer = None
        if call.handover is not None:
            call.handover.cancel()
            call.handover = None
        for leg in call.legs.values():
            leg.release_line()
            leg.stop_resending()
        call.end_reason = reason
        if call.setup_span is not None:  # it never got an answer
            call.setup_span.set_attribute(ATTR_END_REASON, reason)
            call.setup_span.end()
            call.setup_span = None
        with tracing.tracer.start_as_current_span("sip call end", context=call.trace) as span:
            span.set_attribute(ATTR_END_REASON, reason)
        self.log(call).info("ended: %s", reason)
        self.changed(call, Change.ENDED)
        if call.media is not None:
            # A moment later: the recording of the last segment is closed at the end time first.
            asyncio.get_running_loop().call_later(MEDIA_CLOSE_DELAY, self.media.close, call)
        # Keep the dialogs a little longer: late ACKs and retransmitted BYEs still find them.
        asyncio.get_running_loop().call_later(self.transactions.timers.b, self._forget, call)

    def _forget(self, call: Call) -> None:
        # A call's forks hold callbacks that hold the call: let go of them, so that the call is
        # freed now rather than by the collector's full pass, which a busy gateway runs rarely.
        call.fork = None
        call.placed = None
        if self.calls.get(call.id) is call:
            del self.calls[call.id]
            call_traces.pop(call.id, None)
        for dialog in call.dialogs():
            if self._by_dialog.get(dialog.key, (None,))[0] is call:
                del self._by_dialog[dialog.key]
        for key in [k for k, c in self._retired.items() if c is call]:
            del self._retired[key]
        if call.invite is not None:
            request = call.invite.request
            invite_key = (request.call_id, request.from_addr.tag or "")
            if self._by_invite.get(invite_key) is call:
                del self._by_invite[invite_key]
