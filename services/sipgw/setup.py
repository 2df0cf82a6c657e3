"""Call set-up: what a new INVITE (or a call placed through the API) becomes, up to the answer.

The caller's INVITE is answered by the gateway itself; the callee's side is rung on every branch
``routing.py`` names (``fork.py``: the first answer wins). Ringing, the answer and its SDP, and the
best failure are carried back to the caller. Max-Forwards is decremented across the gateway, not
reset (RFC 7332); at zero the caller gets 483.

A call placed through the API (``place``) rings its first party with an INVITE without SDP, then
offers that party's SDP to the second and ACKs the first with the answer: RFC 3725's flow I. The
second party's ringing is limited so that the first party's 2xx is ACKed within its 32 s.

A trunk INVITE whose correlation id names a call this server already has is that call coming
back (a loop, whichever side this server was on): it is set up as a call of its own, then closed
here (``loops.py``) once its caller's side is set up.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
import time
import uuid

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from services.runtime.config_calls import parse_target_uri
from services.runtime.logs import call_log, call_traces, trace_id_of
from services.runtime.telemetry import ATTR_CALL_ID, ATTR_CALLEE, ATTR_CALLER
from services.sipgw import sdp, tracing
from services.sipgw.anchor import NotAcceptable
from services.sipgw.call import Call, Change, Leg, Phase, Placed, Side, called_number
from services.sipgw.calls import CallTable
from services.sipgw.fork import Branch, Fork
from services.sipgw.providers import ProviderLink, Providers
from services.sipgw.routing import ALLOW, Failure, Outgoing, Router
from services.sipgw.scenarios import Action, Scenarios
from services.sipgw.sip import Request, Response, SipURI
from services.sipgw.sip.dialog import Dialog, new_tag
from services.sipgw.sip.transaction import ServerTransaction
from services.sipgw.sip.transport import response_to, scheme_of
from services.sipgw.toll import API, PROVIDER, SCENARIO, TRUNK
from services.sipgw.trunk import CORRELATION, FROM_PROVIDER, INSTANCE, ORIGIN, PATH, Trunk
from services.sipgw.trunk_lines import NoLineFree

_log = logging.getLogger(__name__)

PLACED_FIRST_RING = 60.0  # seconds the first party of a placed call may ring
PLACED_SECOND_RING = 25.0  # the second: its answer must reach the first party's ACK within 32 s

_PSTN_RE = re.compile(r"\+?[0-9]{1,32}")
_WHY = {404: "no server of the group has this number", 480: "no phone is registered for this number"}


class PlaceError(Exception):
    def __init__(self, status: int, reason: str, media: bool = False):
        super().__init__(f"{status} {reason}")
        self.status, self.reason = status, reason
        self.media = media  # the media service was needed and could not be had


class CallSetup:
    def __init__(self, table: CallTable, router: Router, scenarios: Scenarios, *, ring_timeout: float):
        self.table = table
        self.router = router
        self.scenarios = scenarios
        self.ring_timeout = ring_timeout  # seconds a call rings before 480 No Answer (sip.ring_timeout)
        self.trunk: Trunk | None = router.trunk
        self.providers: Providers | None = None

    # -- new calls ------------------------------------------------------------------------------

    def invite(self, tx: ServerTransaction, request: Request, caller: str) -> None:
        """A new INVITE (no To tag) from ``caller``, one of our phones that proved who it is."""
        if not self._hops_left(tx, request):
            return
        called = called_number(request)
        out = _outgoing(request, caller, request.from_addr.display_name, uuid.uuid4().hex)
        out = dataclasses.replace(out, source=f"phone {caller} at {tx.address[0]}:{tx.address[1]}")
        leg = Leg(caller, request.from_addr.display_name or "", tx.link, tx.address)
        self._connect(tx, request, leg, called, self.router.number(called, out), out)

    def trunk_invite(self, tx: ServerTransaction, request: Request) -> None:
        """A new INVITE from another server of the group (its trunk proof was checked)."""
        assert self.trunk is not None
        if not self._hops_left(tx, request):
            return
        try:
            self.trunk.lines.take(outgoing=False)
        except NoLineFree as error:
            tx.respond(answer_caller(request, 503, f"Service Unavailable ({error})"))
            return
        release = functools.partial(self.trunk.lines.give_back, outgoing=False)
        caller, display = Trunk.caller_of(request)
        called = called_number(request)
        path = tuple(p for p in (request.headers.get(PATH) or "").split(",") if p)
        correlation = request.headers.get(CORRELATION) or uuid.uuid4().hex
        peer = request.headers.get(ORIGIN) or ""
        # A call the other server took from a provider stays a call from the outside here.
        origin = PROVIDER if request.headers.get(FROM_PROVIDER) else TRUNK
        out = dataclasses.replace(
            _outgoing(request, caller, display, correlation, path), origin=origin, source=f"server {peer}"
        )
        leg = Leg(caller, display or "", tx.link, tx.address, trunk=True, server=peer, line=release)
        leg.peer_instance = request.headers.get(INSTANCE) or ""
        looping = self.table.live(correlation) is not None
        if self.router.is_external(called):
            # A server of the group sends a call out through this one (a router server): this
            # server's routes take it, not its scenarios, which are for its own numbers.
            branches = self.router.number(called, out)
        else:
            branches = self._run(self.scenarios.route(called, caller, from_trunk=True), out)
        if not self._connect(tx, request, leg, called, branches, out, loop=looping):
            leg.release_line()

    def provider_invite(self, tx: ServerTransaction, request: Request, provider: ProviderLink) -> None:
        """A new INVITE from a provider (its source is one the config allows): a call to one of
        its DIDs, which reaches the DID's internal number, here or on its server."""
        assert self.providers is not None
        if not self._hops_left(tx, request):
            return
        did = self.providers.did(provider, called_number(request))
        if did is None:
            tx.respond(answer_caller(request, 404, "Not Found"))
            return
        limited = sdp.limit_offer(request.body, request.headers.get("Content-Type"), provider.codecs)
        if limited is None:
            tx.respond(answer_caller(request, 488, "Not Acceptable Here (no codec this provider may use)"))
            return
        request.body = limited  # the provider is taken to offer only what its config allows
        try:
            provider.lines.take(outgoing=False)
        except NoLineFree as error:
            tx.respond(answer_caller(request, 503, f"Service Unavailable (provider {provider.name}: {error})"))
            return
        provider.calls_in += 1
        release = functools.partial(provider.lines.give_back, outgoing=False)
        caller = pstn_number(request)
        display = request.from_addr.display_name
        out = dataclasses.replace(
            _outgoing(request, caller, display, uuid.uuid4().hex),
            origin=PROVIDER,
            source=f"provider {provider.name} at {tx.address[0]}:{tx.address[1]}",
        )
        leg = Leg(caller, display or "", tx.link, tx.address, line=release, provider=provider.name)
        call_log(_log, out.correlation).info("from provider %s: DID %s for %s", provider.name, did.did, did.number)
        if did.scenario:
            branches = self._run(self.scenarios.route(did.number, caller, from_trunk=False), out)
        else:
            branches = self.router.number(did.number, out)
        if not self._connect(tx, request, leg, did.number, branches, out):
            leg.release_line()

    def place(self, first: str, target: str, caller_id: str = "", called_id: str = "") -> Call:
        """Rings our phone ``first``; once it answers, calls ``target`` (a number or a full URI)
        as ``caller_id`` (default: ``first``). ``first`` is shown ``called_id`` (default: the
        target's number). Raises PlaceError when the call cannot start."""
        if first not in self.router.own_numbers:
            raise PlaceError(404, f"{first} is not a number of this server")
        correlation = uuid.uuid4().hex
        out = Outgoing(caller_id or first, None, 70, correlation, origin=API, source=f"API call from {first}")
        shown = called_id or (parse_target_uri(target) or (target,))[0]
        first_branches = self.router.number(first, Outgoing(shown, None, 70, correlation))
        if isinstance(first_branches, tuple):
            raise PlaceError(first_branches[0], f"{first}: {_WHY.get(first_branches[0], first_branches[1])}")
        second = self.router.target(target, out)
        if isinstance(second, tuple):
            for branch in first_branches:
                branch.released()
            raise PlaceError(second[0], f"{target}: {_WHY.get(second[0], second[1])}")
        call = Call(correlation, {}, target)
        if not self.table.media.open(call):
            for branch in [*first_branches, *second]:
                branch.released()
            raise PlaceError(503, "the media service is unreachable and recording is required", media=True)
        first_fork = Fork(
            self.table.transactions,
            first_branches,
            lambda branch, response: self._first_ringing(call),
            lambda branch, response: self._first_answered(call, branch, response, caller_id or first),
            lambda status, reason: self.table.end(call, f"{first}: {status} {reason}"),
            ring_timeout=PLACED_FIRST_RING,
        )
        call.placed = Placed(first_fork, caller_id or first)
        call.fork = self._fork(call, second, ring_timeout=PLACED_SECOND_RING)
        self._started(call)
        first_fork.start()
        return call

    def _run(self, action: Action, out: Outgoing) -> list[Branch] | Failure:
        if action.allow_external:
            out = dataclasses.replace(out, origin=SCENARIO)
        if action.kind == "reject":
            return (action.code, "Rejected")
        if action.kind == "ring_department":
            return self.router.department(action.target, out)
        return self.router.target(action.target, out)  # dial a number, forward to a number or URI

    def _hops_left(self, tx: ServerTransaction, request: Request) -> bool:
        mf = request.max_forwards
        if mf is not None and mf <= 0:
            tx.respond(answer_caller(request, 483, "Too Many Hops"))
            return False
        return True

    def _connect(
        self,
        tx: ServerTransaction,
        request: Request,
        caller: Leg,
        called: str,
        branches: list[Branch] | Failure,
        out: Outgoing,
        loop: bool = False,
    ) -> bool:
        """Rings the callee's ``branches``, or answers the caller with the failure; False if it failed."""
        if isinstance(branches, tuple):
            tx.respond(answer_caller(request, *branches))
            return False
        tx.respond(response_to(request.headers, 100, "Trying"))
        # A call that comes back (a loop) is a second call here until it is closed into the first.
        call_id = f"{out.correlation}-loop" if loop else out.correlation
        home = Side.CALLEE if caller.trunk else Side.CALLER
        call = Call(call_id, {Side.CALLER: caller}, called, home, invite=tx, caller_tag=new_tag(), path=out.path)
        if loop:
            call.loop_of = out.correlation
            self.table.log(call).info("it came back over the trunk (path %s)", ",".join(out.path))
        refusal = self._anchor(call, branches, request.body, request.headers.get("Content-Type") or "")
        if refusal is not None:
            for branch in branches:
                branch.released()
            tx.respond(answer_caller(request, *refusal))
            return False
        call.fork = self._fork(call, branches, ring_timeout=self.ring_timeout)
        self._started(call, tracing.from_trunk(request) if caller.trunk else None)
        call.fork.start()
        return True

    def _anchor(self, call: Call, branches: list[Branch], offer: bytes, content_type: str) -> Failure | None:
        """The call's media on the media service, and the caller's offer as the branches get it;
        the failure to answer the caller with when it cannot go on."""
        media = self.table.media
        if not media.open(call):
            return (503, "Service Unavailable (the media service is unreachable and recording is required)")
        if content_type != "application/sdp" or not offer:
            return None
        if branches and all(branch.over_trunk for branch in branches):
            media.protect(call, Side.CALLEE)  # over the trunk: SRTP when the trunk is TLS
        try:
            carried = media.offer(call, Side.CALLER, offer)
        except NotAcceptable:
            media.close(call)
            return (488, "Not Acceptable Here (no PCMU or PCMA offered)")
        refused = offer_to(branches, carried, content_type)
        if refused:
            self.table.log(call).warning("refused: provider %s takes none of the codecs offered", refused)
            media.close(call)
            return (488, f"Not Acceptable Here (provider {refused} takes none of the codecs offered)")
        return None

    def _fork(self, call: Call, branches: list[Branch], ring_timeout: float | None = None) -> Fork:
        return Fork(
            self.table.transactions,
            branches,
            lambda branch, response: self._callee_ringing(call, response),
            lambda branch, response: self._callee_answered(call, branch, response),
            lambda status, reason: self._callee_failed(call, status, reason),
            ring_timeout=ring_timeout,
        )

    def _started(self, call: Call, parent: tracing.Context | None = None) -> None:
        """A new call: in the table, announced, and its trace begun (under the other server's,
        for a call that came over the trunk)."""
        caller, callee = call.party(Side.CALLER)[0], call.dialed
        span = tracing.tracer.start_span(
            "sip call setup",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={ATTR_CALL_ID: call.id, ATTR_CALLER: caller, ATTR_CALLEE: callee},
        )
        call.setup_span, call.trace = span, trace.set_span_in_context(span)
        call_traces[call.id] = trace_id_of(span)
        for fork in (call.placed.fork if call.placed else None, call.fork):
            for branch in fork.branches if fork is not None else ():
                if branch.over_trunk:
                    tracing.to_headers(branch.request.headers, call.trace)
        self.table.add(call)
        self.table.log(call).info("%s -> %s", caller, callee)
        self.table.changed(call, Change.CREATED)

    # -- the first party of a placed call ----------------------------------------------------

    def _first_ringing(self, call: Call) -> None:
        if call.phase == Phase.DIALING:
            call.phase = Phase.RINGING
            self.table.changed(call, Change.RINGING)

    def _first_answered(self, call: Call, branch: Branch, response: Response, shown: str) -> None:
        placed = call.placed
        assert placed is not None and call.fork is not None
        first = call.legs.get(Side.CALLER)
        if first is not None:
            if placed.ack_body is not None:
                self._ack_first(call, *placed.ack_body)  # a retransmitted 2xx: our ACK was lost
            return
        first = Leg.from_branch(branch, Dialog.as_uac(branch.request, response), shown)
        first.allows_update = sdp.allows_update(response)
        self.table.attach(call, Side.CALLER, first)
        content_type = response.headers.get("Content-Type") or ""
        if not response.body or content_type != "application/sdp":
            self.refuse_first(call)
            self.table.end(call, "the first party answered without an SDP offer")
            return
        placed.offer = response.body
        try:
            offer = self.table.media.offer(call, Side.CALLER, response.body)
        except NotAcceptable:
            self.refuse_first(call)
            self.table.end(call, "the first party offered no PCMU or PCMA")
            return
        refused = offer_to(call.fork.branches, offer, content_type)  # the first party's offer goes to the second now
        if refused:
            self.refuse_first(call)
            self.table.end(call, f"provider {refused} takes none of the codecs the first party offered")
            return
        self.table.log(call).info("%s answered, calling %s", call.caller, call.dialed)
        call.fork.start()

    def _ack_first(self, call: Call, body: bytes, content_type: str) -> None:
        """ACKs the first party's 2xx, carrying the answer to its offer."""
        assert call.placed is not None
        first = call.leg(Side.CALLER)
        assert first.invite is not None
        body = self.table.media.answer(call, Side.CALLEE, body) if content_type == "application/sdp" else body
        call.placed.ack_body = (body, content_type)
        first.sdp = body
        self.table.ack(first, first.invite.cseq.number, body, content_type)

    def refuse_first(self, call: Call) -> None:
        """The first party answered but there is no one to talk to: ACK refusing its media, BYE."""
        assert call.placed is not None
        self._ack_first(call, sdp.refusal(call.placed.offer), "application/sdp")
        self.table.bye(call, Side.CALLER)

    # -- the callee's side ------------------------------------------------------------------------

    def _callee_ringing(self, call: Call, response: Response) -> None:
        if call.phase not in (Phase.DIALING, Phase.RINGING):
            return
        first_ring = call.phase == Phase.DIALING
        call.phase = Phase.RINGING
        if call.invite is not None:
            ringing = answer_caller(call.invite.request, response.status, response.reason, call.caller_tag)
            sdp.copy_body(response, ringing)
            if ringing.body and response.headers.get("Content-Type") == "application/sdp":  # early media
                ringing.body = self.table.media.answer(call, Side.CALLEE, response.body)
            call.invite.respond(ringing)
        if first_ring:
            self.table.changed(call, Change.RINGING)

    def _callee_answered(self, call: Call, branch: Branch, response: Response) -> None:
        callee = call.legs.get(Side.CALLEE)
        if callee is None:
            callee = Leg.from_branch(branch, Dialog.as_uac(branch.request, response), call.dialed)
            callee.sdp = branch.request.body
            callee.allows_update = sdp.allows_update(response)
            callee.peer_instance = response.headers.get(INSTANCE) or "" if callee.trunk else ""
            self.table.attach(call, Side.CALLEE, callee)
        # Every 2xx from the callee is ACKed again: it resends its 2xx until an ACK arrives.
        self.table.ack(callee, branch.request.cseq.number)
        if call.phase in (Phase.ANSWERED, Phase.ENDED):
            return
        call.phase = Phase.ANSWERED
        call.answered_at = time.time()
        self.table.record_setup(call.answered_at - call.started_at)
        if call.placed is not None:
            self._ack_first(call, response.body, response.headers.get("Content-Type") or "")
        else:
            self._answer_caller(call, response)
        self.table.log(call).info("answered")
        if call.setup_span is not None:
            call.setup_span.end()
            call.setup_span = None
        self.table.changed(call, Change.ANSWERED)

    def _answer_caller(self, call: Call, response: Response) -> None:
        assert call.invite is not None
        request, caller = call.invite.request, call.leg(Side.CALLER)
        contact = f"<{scheme_of(request.uri)}:{call.dialed}@{caller.link.local[0]}:{caller.link.local[1]}>"
        answer = answer_caller(request, 200, "OK", call.caller_tag)
        answer.headers.add("Contact", contact)
        answer.headers.add("Allow", ALLOW)
        if caller.trunk and self.trunk is not None:
            answer.headers.add(INSTANCE, self.trunk.instance)
        sdp.copy_body(response, answer)
        if answer.body and response.headers.get("Content-Type") == "application/sdp":
            answer.body = self.table.media.answer(call, Side.CALLEE, response.body)
        caller.dialog = Dialog.as_uas(request, call.caller_tag, contact)
        caller.sdp = answer.body
        caller.allows_update = sdp.allows_update(request)
        self.table.attach(call, Side.CALLER, caller)
        call.invite.respond(answer)
        self.table.keep_answering(call, Side.CALLER, answer.to_bytes())

    def _callee_failed(self, call: Call, status: int, reason: str) -> None:
        if call.phase == Phase.ENDED:
            return
        if call.invite is not None:
            call.invite.respond(answer_caller(call.invite.request, status, reason, call.caller_tag))
        elif Side.CALLER in call.legs:  # a placed call: the first party answered and waits
            self.refuse_first(call)
        self.table.end(call, f"{status} {reason}")

    # -- ending before the answer --------------------------------------------------------------------

    def cancel(self, tx: ServerTransaction, request: Request) -> None:
        """CANCEL from the caller before the answer (RFC 3261 9.2)."""
        call = self.table.by_invite(request.call_id, request.from_addr.tag or "")
        invite_tx = self.table.transactions.invite_for(request)
        if call is None or invite_tx is None or call.phase not in (Phase.DIALING, Phase.RINGING):
            tx.respond(response_to(request.headers, 481, "Call/Transaction Does Not Exist"))
            return
        tx.respond(response_to(request.headers, 200, "OK"))
        invite_tx.respond(answer_caller(invite_tx.request, 487, "Request Terminated", call.caller_tag))
        self.table.end(call, "canceled")

    def hang_up(self, call_id: str, reason: str = "hung up through the API") -> bool:
        """Ends a call from outside: BYE to each party in the call, CANCEL to each still ringing."""
        call = self.table.live(call_id)
        if call is None:
            return False
        if call.phase == Phase.ANSWERED:
            self.table.bye(call, Side.CALLER)
            self.table.bye(call, Side.CALLEE)
        elif call.invite is not None:
            call.invite.respond(answer_caller(call.invite.request, 487, "Request Terminated", call.caller_tag))
        elif Side.CALLER in call.legs:  # placed: the first party answered, the second rings
            self.refuse_first(call)
        self.table.end(call, reason)
        return True


def answer_caller(request: Request, status: int, reason: str, tag: str | None = None) -> Response:
    """A response to the caller's INVITE, with the gateway's To tag once it is more than 100."""
    response = response_to(request.headers, status, reason)
    if status > 100 and not request.to_addr.tag:
        to = request.headers.get("To") or ""
        response.headers.set("To", f"{to};tag={tag or new_tag()}")
        if status < 300:
            # RFC 3261 12.1.1: a proxy on the way (a provider's edge, an SBC before phones) stays
            # in the dialog only if the answers that make it carry its Record-Route back.
            for route in request.headers.get_lines("Record-Route"):
                response.headers.add("Record-Route", route)
    return response


def pstn_number(request: Request) -> str:
    """The caller's number as a provider sends it (P-Asserted-Identity, else From): digits and a
    leading + only, else "anonymous"; nothing else of a provider's headers is taken as is."""
    from_uri = request.from_addr.uri
    for uri in (_pai_user(request), from_uri.user if isinstance(from_uri, SipURI) else ""):
        if uri and _PSTN_RE.fullmatch(uri):
            return uri
    return "anonymous"


def _pai_user(request: Request) -> str:
    value = request.headers.get("P-Asserted-Identity") or ""
    start, end = value.find("sip:"), value.find("@")
    return value[start + 4 : end] if 0 <= start < end else ""


def _outgoing(
    request: Request, caller: str, display: str | None, correlation: str, path: tuple[str, ...] = ()
) -> Outgoing:
    mf = request.max_forwards
    return Outgoing(
        caller,
        display,
        (mf if mf is not None else 70) - 1,
        correlation,
        request.body,
        request.headers.get("Content-Type") or "",
        path,
    )


def offer_to(branches: list[Branch], offer: bytes, content_type: str) -> str:
    """Puts ``offer`` in each branch, limited to its provider's codecs; returns the provider of a
    branch that takes none of them ("" when every branch takes the offer)."""
    for branch in branches:
        body = sdp.limit_offer(offer, content_type, branch.codecs)
        if body is None:
            return branch.provider
        branch.request.body, branch.offer = body, offer
        branch.request.headers.set("Content-Type", content_type)
    return ""
