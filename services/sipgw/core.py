"""The gateway's SIP core: what each incoming request becomes.

Transports deliver to the transaction layer, which hands new requests here. REGISTER goes to the
registrar, OPTIONS is answered (a keepalive and capability probe), INVITE starts a call and the
requests of a call go to the back-to-back agent; anything else gets 501. Answers go back on the
link and to the address the request came from.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence

from services.sipgw.b2bua import B2BUA
from services.sipgw.plan_feed import PlanFeed
from services.sipgw.providers import Providers
from services.sipgw.registrar import Decision, Registrar
from services.sipgw.routing import ALLOW, Router
from services.sipgw.scenarios import Scenarios
from services.sipgw.sip import ParseError, Request
from services.sipgw.sip.transaction import ServerTransaction, TransactionLayer
from services.sipgw.sip.transport import Address, response_to
from services.sipgw.trunk import INSTANCE, Trunk

_log = logging.getLogger(__name__)


class SipCore:
    def __init__(
        self,
        registrar: Registrar,
        own_numbers: set[str],
        plan: PlanFeed | None = None,
        trunk: Trunk | None = None,
        scenarios: Scenarios | None = None,
        departments: Mapping[str, Sequence[str]] | None = None,
        *,
        ring_timeout: float,
    ):
        self.registrar = registrar
        self.trunk = trunk
        self.transactions = TransactionLayer(self.on_request)
        if trunk is not None:
            self.transactions.sign = trunk.sign
        self.router = Router(registrar.bindings, own_numbers, departments or {}, plan, trunk)
        self.calls = B2BUA(self.transactions, self.router, scenarios, ring_timeout=ring_timeout)
        self.draining = False  # the server shuts down: no new call is taken
        self.require_tls = False  # phones over UDP or TCP get 403 (sip.require_tls)
        self.providers: Providers | None = None  # calls from a provider's addresses (providers.py)

    def on_request(self, transaction: ServerTransaction, request: Request) -> None:
        if self.draining and request.method == "INVITE" and not request.to_addr.tag:
            refusal = response_to(request.headers, 503, "Service Unavailable (shutting down)")
            refusal.headers.add("Retry-After", "30")
            transaction.respond(refusal)
            return
        on_trunk = self.trunk is not None and self.trunk.carries(transaction.link)
        if self.require_tls and not on_trunk and transaction.link.name != "TLS":
            if request.method != "ACK":
                transaction.respond(response_to(request.headers, 403, "Forbidden (use SIP over TLS)"))
            return
        if self.trunk is not None and on_trunk:
            if not self.trunk.verify(request, transaction.address, transaction.link):
                if request.method != "ACK":
                    transaction.respond(response_to(request.headers, 403, "Forbidden"))
                return
            if request.method == "INVITE" and not request.to_addr.tag:
                self.calls.trunk_invite(transaction, request)
                return
            if request.method == "REGISTER":
                transaction.respond(response_to(request.headers, 403, "Forbidden"))
                return
        if request.method == "CANCEL":
            self.calls.cancel(transaction, request)
            return
        if request.to_addr.tag:
            if not self.calls.in_dialog(transaction, request) and request.method != "ACK":
                transaction.respond(response_to(request.headers, 481, "Call/Transaction Does Not Exist"))
            return
        if request.method == "ACK":
            return  # an ACK outside any dialog: nothing to do
        if request.method == "INVITE":
            self._invite(transaction, request)
        elif request.method == "REGISTER":
            self._register(transaction, request)
        elif request.method == "OPTIONS":
            response = response_to(request.headers, 200, "OK")
            response.headers.add("Allow", ALLOW)
            response.headers.add("Accept", "application/sdp")
            if self.trunk is not None and self.trunk.carries(transaction.link):
                response.headers.add(INSTANCE, self.trunk.instance)  # the peers' liveness check
            transaction.respond(response)
        else:
            response = response_to(request.headers, 501, "Not Implemented")
            response.headers.add("Allow", ALLOW)
            transaction.respond(response)

    def ongoing(self, request: Request, source: Address) -> bool:
        """Whether ``request`` carries on what its source address already has here: a dialog of one
        of its calls, or the INVITE its ACK or CANCEL is about. The admission lets these through a
        phone's rate limit, so that its new requests never starve its calls in progress."""
        try:
            to_tag = request.to_addr.tag
            if to_tag:
                found = self.calls.table.find((request.call_id, to_tag, request.from_addr.tag or ""))
                if found is not None:
                    leg = found[0].legs.get(found[1])
                    return leg is not None and leg.address[0] == source[0]
            if request.method in ("ACK", "CANCEL"):
                invite = self.transactions.invite_for(request)
                return invite is not None and invite.address[0] == source[0]
        except ParseError:
            pass
        return False

    def _invite(self, transaction: ServerTransaction, request: Request) -> None:
        """A phone's new call: it proves who it is first (407 challenge), as for REGISTER. A
        provider's call is known by its source address (providers do not authenticate to us)."""
        provider = self.providers.from_source(transaction.address) if self.providers else None
        if provider is not None:
            self.calls.provider_invite(transaction, request, provider)
            return
        decision = self.registrar.authorize(request, transaction.address)
        if decision.number is None:
            self._answer(transaction, decision)
        else:
            self.calls.invite(transaction, request, decision.number)

    def _register(self, transaction: ServerTransaction, request: Request) -> None:
        self._answer(transaction, self.registrar.handle(request, transaction.address, transaction.link.name))

    @staticmethod
    def _answer(transaction: ServerTransaction, decision: Decision) -> None:
        response = decision.response
        if response is None:
            transaction.drop()  # locked out: no answer, and nothing kept for it
            return
        if decision.delay > 0:
            # A source that keeps failing waits for its answer; nothing else waits with it.
            asyncio.get_running_loop().call_later(decision.delay, transaction.respond, response)
        else:
            transaction.respond(response)
