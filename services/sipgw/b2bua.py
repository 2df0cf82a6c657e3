"""The back-to-back agent: every call through the gateway is two legs whose dialogs it holds itself.

This is the call core's front, as the SIP core and the API see it; each part lives in its own
module and changes calls only through the table's operations (``calls.py``):

    call.py      a call, its two legs (``Leg``), sides, phases
    calls.py     the table of calls: indexes, send on a leg, BYE, replace or detach a leg, end
    setup.py     new calls up to the answer: phones, the trunk, calls placed through the API
    relay.py     requests inside a call: ACK, BYE, re-INVITE/UPDATE, REFER
    identity.py  telling a phone who it now talks to
    transfer.py  REFER, blind and attended
    loops.py     a call that came back to this server, closed here
    handover.py  a server left in the middle of a call steps out of it
    sdp.py       what the core reads in SDP, and SDP rewritten for anchored media
    anchor.py    a call's media on the media service: one media leg per side, SDP carried across
    media_link.py  the control stream to the media service, legs opened ahead

With a media service (``listen.media``) every phone sends its RTP to its own server's media
service; without one (or while it is away) media goes directly between the phones. Signalling
goes to the address the party's packets come from, never to a host named inside a message.
"""

from __future__ import annotations

from collections.abc import Callable

from services.sipgw import handover, tracing
from services.sipgw.call import Call, Phase, Side
from services.sipgw.calls import CallTable
from services.sipgw.identity import tell_party
from services.sipgw.loops import close_loop
from services.sipgw.relay import InDialog
from services.sipgw.routing import Router
from services.sipgw.scenarios import Scenarios
from services.sipgw.setup import CallSetup, PlaceError
from services.sipgw.sip import Request
from services.sipgw.sip.transaction import ServerTransaction, TransactionLayer
from services.sipgw.transfer import Transfer

__all__ = ["B2BUA", "PlaceError"]


class B2BUA:
    def __init__(
        self,
        transactions: TransactionLayer,
        router: Router,
        scenarios: Scenarios | None = None,
        *,
        ring_timeout: float,  # seconds a call rings before 480 No Answer (sip.ring_timeout)
    ):
        self.router = router
        self.table = CallTable(transactions, router.trunk)
        self.setup = CallSetup(self.table, router, scenarios or Scenarios.none(), ring_timeout=ring_timeout)
        self.relay = InDialog(self.table, self._refer)
        self.relay.on_loop_ready = lambda call: close_loop(self.table, call)
        # What the SIP core hands over.
        self.invite = self.setup.invite
        self.provider_invite = self.setup.provider_invite
        self.cancel = self.setup.cancel
        self.in_dialog = self.relay.receive
        # What the API and the callstate reporter use.
        self.place = self.setup.place
        self.hang_up = self.setup.hang_up
        self.active = self.table.active

    @property
    def calls(self) -> dict[str, Call]:
        return self.table.calls

    @property
    def listeners(self) -> set[Callable[[Call], None]]:
        return self.table.listeners

    @property
    def record_setup(self) -> Callable[[float], None]:
        return self.table.record_setup

    @record_setup.setter
    def record_setup(self, record: Callable[[float], None]) -> None:
        self.table.record_setup = record

    def tell_party(self, call_id: str, number: str, display: str, parent: tracing.Context | None = None) -> bool:
        """Tells this server's party in the call who it now talks to. False if the call is not
        in progress."""
        call = self.table.live(call_id)
        return call is not None and tell_party(self.table, call, call.home, number, display, parent)

    def trunk_invite(self, tx: ServerTransaction, request: Request) -> None:
        """A new INVITE over the trunk: a call, or (with Replaces) a hand-over from another server."""
        if request.headers.get("Replaces") is not None and self.router.trunk is not None:
            handover.take(self.table, self.router.trunk, tx, request)
        else:
            self.setup.trunk_invite(tx, request)

    def end_all(self, reason: str) -> None:
        """Ends every call (the server shuts down): answered ones get BYE with ``reason`` as a
        Reason header, ringing ones are canceled."""
        for call in self.table.active():
            if call.phase == Phase.ANSWERED:
                self.table.hang_up(call, reason, 503)
            else:
                self.setup.hang_up(call.id, reason)

    def _refer(self, call: Call, side: Side, tx: ServerTransaction, request: Request) -> None:
        """A phone's REFER is a transfer; another server's is a hand-over (``handover.py``)."""
        if call.leg(side).trunk:
            handover.accept(self.table, self.router, call, side, tx, request)
        else:
            Transfer.start(self.table, self.router, call, side, tx, request, self._transferred)

    def _transferred(self, call: Call, side: Side, attended: bool) -> None:
        """A transfer is done: if it left this server in the middle, it asks to be left out."""
        handover.offer(self.table, call, asked=side.other, attended=attended)
