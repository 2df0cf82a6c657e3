"""The back-to-back agent: every call through the gateway is two dialogs it holds itself.

Leg A is the caller, leg B the callee. The agent answers each leg itself and carries over what the
other side said: ringing, answer and SDP (media goes directly between the phones), failures,
hang-up from either side, CANCEL before the answer, re-INVITE/UPDATE offers. Leg B may ring
several places at once (``fork.py``); where it goes is ``routing.py``'s business. Each leg's
packets go to the address the party's packets come from, never to a host named inside a message.
Max-Forwards is decremented across the agent, not reset (RFC 7332); at zero the caller gets 483.

A call placed through the API (``place``) rings its first party with an INVITE without SDP, then
offers that party's SDP to the second and ACKs the first with the answer: RFC 3725's flow I. The
second party's ringing is limited so that the first party's 2xx is ACKed within its 32 s.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Callable

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from services.runtime.config_calls import parse_target_uri
from services.runtime.logs import call_traces, trace_id_of
from services.runtime.telemetry import ATTR_CALL_ID, ATTR_CALLEE, ATTR_CALLER, ATTR_END_REASON, ATTR_NUMBER
from services.sipgw import tracing
from services.sipgw.call import ANSWERED, DIALING, ENDED, RINGING, Call, called_number
from services.sipgw.fork import Branch, Fork
from services.sipgw.loops import collapse
from services.sipgw.routing import Failure, Outgoing, Router
from services.sipgw.scenarios import Action, Scenarios
from services.sipgw.sip import Request, Response
from services.sipgw.sip.dialog import Dialog, new_tag
from services.sipgw.sip.transaction import ServerTransaction, TransactionLayer
from services.sipgw.sip.transport import Address, Link, response_to, sent_by
from services.sipgw.transfer import Transfer
from services.sipgw.trunk import CORRELATION, IDENTITY, ORIGIN, PATH, Trunk
from services.sipgw.trunk_lines import NoLineFree

_log = logging.getLogger(__name__)

PLACED_FIRST_RING = 60.0  # seconds the first party of a placed call may ring
PLACED_SECOND_RING = 25.0  # the second: its answer must reach the first party's ACK within 32 s


_WHY = {404: "no server of the group has this number", 480: "no phone is registered for this number"}


class PlaceError(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(f"{status} {reason}")
        self.status, self.reason = status, reason


class B2BUA:
    def __init__(
        self,
        transactions: TransactionLayer,
        router: Router,
        scenarios: Scenarios | None = None,
        *,
        ring_timeout: float,  # seconds a call rings before 480 No Answer (sip.ring_timeout)
    ):
        self.transactions = transactions
        self.ring_timeout = ring_timeout
        self.router = router
        self.trunk: Trunk | None = router.trunk
        self.scenarios = scenarios or Scenarios.none()
        # Told of every call that starts or changes state (the API's WatchCalls listens here).
        self.listeners: set[Callable[[Call], None]] = set()
        self.calls: dict[str, Call] = {}
        self._by_dialog: dict[tuple[str, str, str], tuple[Call, str]] = {}
        self._by_invite: dict[tuple[str, str], Call] = {}  # (A's Call-ID, A's From tag)
        # Dialogs of parties that left by transfer: their late BYE still gets its 200.
        self._retired: dict[tuple[str, str, str], Call] = {}
        # Told each call's setup time (first INVITE to answer, seconds): the metrics' histogram.
        self.record_setup: Callable[[float], None] = lambda seconds: None

    # -- new calls ------------------------------------------------------------------------------

    def invite(self, tx: ServerTransaction, request: Request, caller: str) -> None:
        """A new INVITE (no To tag) from ``caller``, one of our phones that proved who it is."""
        if not self._hops_left(tx, request):
            return
        called = called_number(request)
        out = self._outgoing(request, caller, request.from_addr.display_name, uuid.uuid4().hex)
        self._connect(tx, request, caller, called, self.router.number(called, out), out)

    def trunk_invite(self, tx: ServerTransaction, request: Request) -> None:
        """A new INVITE from another server of the group (its trunk proof was checked)."""
        assert self.trunk is not None
        if not self._hops_left(tx, request):
            return
        try:
            self.trunk.lines.take(outgoing=False)
        except NoLineFree as error:
            tx.respond(self._answer_a(request, 503, f"Service Unavailable ({error})"))
            return
        caller, display = Trunk.caller_of(request)
        called = called_number(request)
        path = tuple(p for p in (request.headers.get(PATH) or "").split(",") if p)
        out = self._outgoing(request, caller, display, request.headers.get(CORRELATION) or uuid.uuid4().hex, path)
        action = self.scenarios.route(called, caller, from_trunk=True)
        peer = request.headers.get(ORIGIN) or ""
        looping = self.trunk.server_id in path and out.correlation in self.calls
        branches = self._run(action, out)
        if not self._connect(tx, request, caller, called, branches, out, trunk_in=True, peer=peer, loop=looping):
            self.trunk.lines.give_back(outgoing=False)

    def place(self, first: str, target: str, caller_id: str = "", called_id: str = "") -> Call:
        """Rings our phone ``first``; once it answers, calls ``target`` (a number or a full URI)
        as ``caller_id`` (default: ``first``). ``first`` is shown ``called_id`` (default: the
        target's number). Raises PlaceError when the call cannot start."""
        if first not in self.router.own_numbers:
            raise PlaceError(404, f"{first} is not a number of this server")
        correlation = uuid.uuid4().hex
        out = Outgoing(caller_id or first, None, 70, correlation)
        shown = called_id or (parse_target_uri(target) or (target,))[0]
        first_branches = self.router.number(first, Outgoing(shown, None, 70, correlation))
        if isinstance(first_branches, tuple):
            raise PlaceError(first_branches[0], f"{first}: {_WHY.get(first_branches[0], first_branches[1])}")
        second = self.router.target(target, out)
        if isinstance(second, tuple):
            for branch in first_branches:
                branch.released()
            raise PlaceError(second[0], f"{target}: {_WHY.get(second[0], second[1])}")
        link, address = first_branches[0].link, first_branches[0].address
        call = Call(correlation, caller_id or first, target, link, address, placed=True)
        call.trunk_out = any(b.over_trunk for b in second)
        call.a_fork = Fork(
            self.transactions,
            first_branches,
            lambda branch, response: self._first_ringing(call),
            lambda branch, response: self._first_answered(call, branch, response),
            lambda status, reason: self._end(call, f"{first}: {status} {reason}"),
            ring_timeout=PLACED_FIRST_RING,
        )
        call.b_fork = self._fork(call, second, ring_timeout=PLACED_SECOND_RING)
        self._started(call)
        call.a_fork.start()
        return call

    def _run(self, action: Action, out: Outgoing) -> list[Branch] | Failure:
        if action.kind == "reject":
            return (action.code, "Rejected")
        if action.kind == "ring_department":
            return self.router.department(action.target, out)
        return self.router.target(action.target, out)  # dial a number, forward to a number or URI

    def _outgoing(
        self, request: Request, caller: str, display: str | None, correlation: str, path: tuple[str, ...] = ()
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

    def _hops_left(self, tx: ServerTransaction, request: Request) -> bool:
        mf = request.max_forwards
        if mf is not None and mf <= 0:
            tx.respond(self._answer_a(request, 483, "Too Many Hops"))
            return False
        return True

    def _connect(
        self,
        tx: ServerTransaction,
        request: Request,
        caller: str,
        called: str,
        branches: list[Branch] | Failure,
        out: Outgoing,
        trunk_in: bool = False,
        peer: str = "",
        loop: bool = False,
    ) -> bool:
        """Starts leg B on ``branches``, or answers A with the failure; False if it failed."""
        if isinstance(branches, tuple):
            tx.respond(self._answer_a(request, *branches))
            return False
        tx.respond(response_to(request.headers, 100, "Trying"))
        # A call that comes back (a loop) is a second call here until it is collapsed into the first.
        call_id = f"{out.correlation}-loop" if loop else out.correlation
        call = Call(call_id, caller, called, tx.link, tx.address, new_tag(), a_tx=tx, trunk_in=trunk_in)
        if loop:
            call.loop_of = out.correlation
            _log.info("call %s: it came back over the trunk (path %s)", out.correlation, ",".join(out.path))
        call.trunk_out = any(b.over_trunk for b in branches)
        call.caller_name, call.peer_server_id, call.path = out.display or "", peer, out.path
        call.b_fork = self._fork(call, branches, ring_timeout=self.ring_timeout)
        self._by_invite[(request.call_id, request.from_addr.tag or "")] = call
        self._started(call, tracing.from_trunk(request) if trunk_in else None)
        call.b_fork.start()
        return True

    def _fork(self, call: Call, branches: list[Branch], ring_timeout: float | None = None) -> Fork:
        return Fork(
            self.transactions,
            branches,
            lambda branch, response: self._b_ringing(call, response),
            lambda branch, response: self._b_answered(call, branch, response),
            lambda status, reason: self._b_failed(call, status, reason),
            ring_timeout=ring_timeout,
        )

    def _started(self, call: Call, parent: tracing.Context | None = None) -> None:
        """A new call: registered, announced, and its trace begun (under the other server's, for
        a call that came over the trunk)."""
        span = tracing.tracer.start_span(
            "sip call setup",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={ATTR_CALL_ID: call.id, ATTR_CALLER: call.caller, ATTR_CALLEE: call.callee},
        )
        call.setup_span, call.trace = span, trace.set_span_in_context(span)
        call_traces[call.id] = trace_id_of(span)
        for fork in (call.a_fork, call.b_fork):
            for branch in fork.branches if fork is not None else ():
                if branch.over_trunk:
                    tracing.to_headers(branch.request.headers, call.trace)
        self.calls[call.id] = call
        _log.info("call %s: %s -> %s", call.id, call.caller, call.callee)
        self._changed(call, "created")

    def _answer_a(self, request: Request, status: int, reason: str, tag: str | None = None) -> Response:
        response = response_to(request.headers, status, reason)
        if status > 100 and not request.to_addr.tag:
            to = request.headers.get("To") or ""
            response.headers.set("To", f"{to};tag={tag or new_tag()}")
        return response

    # -- the first party of a placed call ----------------------------------------------------

    def _first_ringing(self, call: Call) -> None:
        if call.state == DIALING:
            call.state = RINGING
            self._changed(call, "ringing")

    def _first_answered(self, call: Call, branch: Branch, response: Response) -> None:
        if call.a_dialog is not None:
            if call.a_answer is not None:
                self._ack_first(call, *call.a_answer)  # a retransmitted 2xx: our ACK was lost
            return
        call.a_link, call.a_address = branch.link, branch.address
        call.a_dialog = Dialog.as_uac(branch.request, response)
        call.a_invite = branch.request
        call.allows_update["a"] = _allows_update(response)
        self._by_dialog[call.a_dialog.key] = (call, "a")
        content_type = response.headers.get("Content-Type") or ""
        if not response.body or content_type != "application/sdp":
            self._refuse_first(call)
            self._end(call, "the first party answered without an SDP offer")
            return
        call.a_offer = response.body
        assert call.b_fork is not None
        for second in call.b_fork.branches:  # the first party's offer goes to the second now
            second.request.body = response.body
            second.request.headers.set("Content-Type", content_type)
        _log.info("call %s: %s answered, calling %s", call.id, call.caller, call.callee)
        call.b_fork.start()

    def _ack_first(self, call: Call, body: bytes, content_type: str) -> None:
        """ACKs the first party's 2xx, carrying the answer to its offer."""
        assert call.a_dialog is not None and call.a_invite is not None
        call.a_answer = (body, content_type)
        call.sdp_to["a"] = body
        ack = call.a_dialog.ack(sent_by(call.a_link), call.a_invite.cseq.number, body, content_type if body else "")
        self.transactions.send_direct(ack, call.a_link, call.a_address)

    def _refuse_first(self, call: Call) -> None:
        """The first party answered but there is no one to talk to: ACK refusing its media, BYE."""
        self._ack_first(call, _refusal(call.a_offer), "application/sdp")
        self._bye(call, "a")

    # -- leg B --------------------------------------------------------------------------------

    def _b_ringing(self, call: Call, response: Response) -> None:
        if call.state not in (DIALING, RINGING):
            return
        first_ring = call.state == DIALING
        call.state = RINGING
        if call.a_tx is not None:
            ringing = self._answer_a(call.a_tx.request, response.status, response.reason, call.a_tag)
            _copy_body(response, ringing)
            call.a_tx.respond(ringing)
        if first_ring:
            self._changed(call, "ringing")

    def _b_answered(self, call: Call, branch: Branch, response: Response) -> None:
        if call.b_dialog is None:
            call.b = branch
            call.peer_server_id = call.peer_server_id or branch.peer_server_id
            call.b_dialog = Dialog.as_uac(branch.request, response)
            call.sdp_to["b"] = branch.request.body
            call.allows_update["b"] = _allows_update(response)
            self._by_dialog[call.b_dialog.key] = (call, "b")
        # Every 2xx from B is ACKed again: B resends it until an ACK arrives.
        b_ack = call.b_dialog.ack(sent_by(branch.link), branch.request.cseq.number)
        self.transactions.send_direct(b_ack, branch.link, branch.address)
        if call.state in (ANSWERED, ENDED):
            return
        call.state = ANSWERED
        call.answered_at = time.time()
        self.record_setup(call.answered_at - call.started_at)
        if call.placed:
            self._ack_first(call, response.body, response.headers.get("Content-Type") or "")
        else:
            self._answer_caller(call, response)
        _log.info("call %s answered", call.id)
        if call.setup_span is not None:
            call.setup_span.end()
            call.setup_span = None
        self._changed(call, "answered")

    def _answer_caller(self, call: Call, response: Response) -> None:
        assert call.a_tx is not None
        a_request = call.a_tx.request
        contact = f"<sip:{call.callee}@{call.a_link.local[0]}:{call.a_link.local[1]}>"
        answer = self._answer_a(a_request, 200, "OK", call.a_tag)
        answer.headers.add("Contact", contact)
        _copy_body(response, answer)
        call.a_dialog = Dialog.as_uas(a_request, call.a_tag, contact)
        call.sdp_to["a"] = response.body
        call.allows_update["a"] = _allows_update(a_request)
        self._by_dialog[call.a_dialog.key] = (call, "a")
        call.a_tx.respond(answer)
        self._resend_until_ack(call, "a", answer.to_bytes())

    def _b_failed(self, call: Call, status: int, reason: str) -> None:
        if call.state == ENDED:
            return
        if call.a_tx is not None:
            call.a_tx.respond(self._answer_a(call.a_tx.request, status, reason, call.a_tag))
        elif call.a_dialog is not None:  # a placed call: the first party answered and waits
            self._refuse_first(call)
        self._end(call, f"{status} {reason}")

    def _resend_until_ack(self, call: Call, side: str, wire: bytes) -> None:
        """The transaction layer leaves 2xx retransmission to us (RFC 6026): T1 doubling to T2,
        and a call whose side never ACKs within 64*T1 is hung up."""
        timers = self.transactions.timers
        link, address = self._peer(call, side)

        def fire(interval: float, elapsed: float) -> None:
            if call.state == ENDED or side not in call.unacked:
                return
            if elapsed >= timers.b:
                _log.info("call %s: no ACK from the %s, hanging up", call.id, "caller" if side == "a" else "callee")
                self._bye(call, "a")
                self._bye(call, "b")
                self._end(call, "no ACK")
                return
            link.send(wire, address)
            following = min(interval * 2, timers.t2)
            call.unacked[side] = loop.call_later(following, fire, following, elapsed + following)

        loop = asyncio.get_running_loop()
        previous = call.unacked.pop(side, None)
        if previous is not None:
            previous.cancel()
        call.unacked[side] = loop.call_later(timers.t1, fire, timers.t1, timers.t1)

    @staticmethod
    def _peer(call: Call, side: str) -> tuple[Link, Address]:
        if side == "a":
            return call.a_link, call.a_address
        assert call.b is not None
        return call.b.link, call.b.address

    # -- requests inside a call --------------------------------------------------------------

    def in_dialog(self, tx: ServerTransaction, request: Request) -> bool:
        """ACK, BYE and the rest for an existing call; False if the request is not ours."""
        key = (request.call_id, request.to_addr.tag or "", request.from_addr.tag or "")
        found = self._by_dialog.get(key)
        if found is None:
            if key in self._retired and request.method == "BYE":
                tx.respond(response_to(request.headers, 200, "OK"))
                return True
            return key in self._retired
        call, side = found
        dialog = call.a_dialog if side == "a" else call.b_dialog
        assert dialog is not None
        if request.method == "ACK":
            handle = call.unacked.pop(side, None)
            if handle is not None:
                handle.cancel()
            if call.loop_of and side == "a":  # the looping leg is set up: the other server is done
                outer = self.calls.get(call.loop_of)
                call.loop_of = ""
                if outer is not None:
                    collapse(self, outer, call)
            return True
        if not dialog.receive(request):
            tx.respond(response_to(request.headers, 500, "Server Internal Error"))
            return True
        if request.method == "BYE":
            tx.respond(response_to(request.headers, 200, "OK"))
            self._bye(call, "b" if side == "a" else "a")
            self._end(call, f"hung up by {'caller' if side == 'a' else 'callee'}")
            return True
        if request.method in ("INVITE", "UPDATE") and call.state == ANSWERED:
            self._relay_offer(call, side, tx, request)
            return True
        if request.method == "REFER":
            Transfer.start(self, call, side, tx, request)
            return True
        tx.respond(response_to(request.headers, 501, "Not Implemented"))
        return True

    def _relay_offer(self, call: Call, side: str, tx: ServerTransaction, request: Request) -> None:
        """A re-INVITE or UPDATE (hold, resume, a new codec): the other side gets the same offer in
        its own dialog, and its answer comes back (RFC 3261 14, RFC 3311)."""
        if request.method == "INVITE":
            tx.respond(response_to(request.headers, 100, "Trying"))
        self._note_hold(call, side, request.body)
        other = "b" if side == "a" else "a"
        dialog = call.b_dialog if other == "b" else call.a_dialog
        assert dialog is not None
        link, address = self._peer(call, other)
        offer = dialog.request(request.method, sent_by(link), request.body, request.headers.get("Content-Type") or "")
        own = call.a_dialog if side == "a" else call.b_dialog
        assert own is not None

        if request.body:
            call.sdp_to[other] = request.body

        def on_answer(response: Response) -> None:
            if response.status < 200:
                return
            if 200 <= response.status < 300 and response.body:
                call.sdp_to[side] = response.body
            if request.method == "INVITE" and response.status < 300:
                dialog.refresh_target(response)
                self.transactions.send_direct(dialog.ack(sent_by(link), offer.cseq.number), link, address)
            if tx.state not in ("Proceeding", "Trying"):
                return  # an answer we already relayed (a retransmitted 2xx)
            answer = response_to(request.headers, response.status, response.reason)
            if response.status < 300:
                answer.headers.add("Contact", own.contact)
            _copy_body(response, answer)
            tx.respond(answer)
            if request.method == "INVITE" and response.status < 300:
                self._resend_until_ack(call, side, answer.to_bytes())

        def on_timeout() -> None:
            tx.respond(response_to(request.headers, 408, "Request Timeout"))

        self.transactions.send_request(offer, link, address, on_answer, on_timeout)

    def _note_hold(self, call: Call, side: str, offer: bytes) -> None:
        """An offer that stops sending (sendonly, inactive, RFC 3264 8.4) holds the call; one that
        sends again resumes it. Offers without SDP change nothing."""
        if not offer:
            return
        holding = _holds(offer)
        if holding and not call.held_by:
            call.held_by = side
            self._changed(call, "held")
        elif not holding and call.held_by == side:
            call.held_by = ""
            self._changed(call, "resumed")

    def tell_party(self, call_id: str, number: str, display: str, parent: tracing.Context | None = None) -> bool:
        """Tells this server's phone in the call who it now talks to: an UPDATE with
        P-Asserted-Identity, or a re-INVITE with its SDP unchanged where the phone does not take
        UPDATE (the manner of RFC 4916). False if the call is not in progress."""
        call = self.calls.get(call_id)
        if call is None or call.state != ANSWERED:
            return False
        side = "b" if call.trunk_in else "a"
        dialog = call.a_dialog if side == "a" else call.b_dialog
        if dialog is None:
            return False
        if call.told.get(side) == (number, display):
            return True  # this phone knows already
        call.told[side] = (number, display)
        link, address = self._peer(call, side)
        name = display.replace('"', "")
        identity = f'"{name}" <sip:{number}@{link.local[0]}>' if name else f"<sip:{number}@{link.local[0]}>"
        if call.allows_update.get(side, False):
            request = dialog.request("UPDATE", sent_by(link))
        else:
            request = dialog.request("INVITE", sent_by(link), call.sdp_to.get(side, b""), "application/sdp")

        def on_answer(response: Response) -> None:
            if request.method == "INVITE" and 200 <= response.status < 300:
                self.transactions.send_direct(dialog.ack(sent_by(link), request.cseq.number), link, address)

        request.headers.add(IDENTITY, identity)
        if side == "a":  # what the API shows follows what the phone is told
            call.callee, call.callee_name = number, display
        else:
            call.caller, call.caller_name = number, display
        with tracing.tracer.start_as_current_span("sip tell party", context=parent or call.trace) as span:
            span.set_attribute(ATTR_NUMBER, number)
            span.set_attribute("sip.method", request.method)
            self.transactions.send_request(request, link, address, on_answer, lambda: None)
        _log.info("call %s: phone told its party is now %s", call.id, number)
        return True

    def replace_side(
        self,
        call: Call,
        side: str,
        dialog: Dialog,
        branch: Branch,
        number: str,
        answer: Response | None,
        sdp: bytes,
        allows_update: bool | None = None,
    ) -> None:
        """A new party takes ``side``'s place in the call (the old one was hung up): a transfer's
        target, or the phone a looping call came back to."""
        old = self._let_go(call, side)
        if old is not None:
            self._retired[old.key] = call
        call.extra.append(branch)  # a trunk line it holds goes back when the call ends
        call.told.pop(side, None)  # a new phone on that side was told nothing yet
        if side == "a":
            call.a_dialog, call.a_link, call.a_address = dialog, branch.link, branch.address
            call.caller, call.caller_name = number, ""
        else:
            if call.b is not None:
                call.b.released()  # a trunk leg that left frees its line now
            call.b_dialog, call.b = dialog, branch
            call.callee, call.callee_name = number, ""
            call.callee_server = branch.peer_server_id if branch.over_trunk else ""
        call.peer_server_id = call.peer_server_id or branch.peer_server_id
        call.trunk_out = call.trunk_out or branch.over_trunk
        call.sdp_to[side] = sdp
        call.allows_update[side] = (
            allows_update if allows_update is not None else bool(answer and _allows_update(answer))
        )
        call.held_by = ""
        self._by_dialog[dialog.key] = (call, side)
        self._changed(call, "transferred")

    def replaced(self, dialog_id: tuple[str, str, str]) -> tuple[Call, str] | None:
        """The call and side a Replaces value (RFC 3891) names: the dialog as the transferring
        phone sees it (its to-tag is ours, its from-tag the phone's; either order is accepted)."""
        call_id, to_tag, from_tag = dialog_id
        return self._by_dialog.get((call_id, to_tag, from_tag)) or self._by_dialog.get((call_id, from_tag, to_tag))

    def hand_over(self, call: Call, side: str) -> None:
        """The party on ``side`` leaves ``call`` for another call (attended transfer): its dialog
        stays up and its leg (and any trunk line it holds) goes with it."""
        self._let_go(call, side)
        if side == "a":
            call.a_dialog = None
            return
        call.b_dialog = None
        if call.b_fork is not None and call.b in call.b_fork.branches:
            call.b_fork.branches.remove(call.b)
        call.b = None

    def _let_go(self, call: Call, side: str) -> Dialog | None:
        """``side``'s dialog no longer routes to ``call`` and its 2xx is no longer resent; the
        dialog, if any, is returned."""
        dialog = call.a_dialog if side == "a" else call.b_dialog
        if dialog is not None:
            self._by_dialog.pop(dialog.key, None)
        handle = call.unacked.pop(side, None)
        if handle is not None:
            handle.cancel()
        return dialog

    def hang_up(self, call_id: str, reason: str = "hung up through the API") -> bool:
        """Ends a call from outside: BYE to each party in the call, CANCEL to each still ringing."""
        call = self.calls.get(call_id)
        if call is None or call.state == ENDED:
            return False
        if call.state == ANSWERED:
            self._bye(call, "a")
            self._bye(call, "b")
        elif call.a_tx is not None:
            call.a_tx.respond(self._answer_a(call.a_tx.request, 487, "Request Terminated", call.a_tag))
        elif call.a_dialog is not None:  # placed: the first party answered, the second rings
            self._refuse_first(call)
        self._end(call, reason)
        return True

    def cancel(self, tx: ServerTransaction, request: Request) -> None:
        """CANCEL from the caller before the answer (RFC 3261 9.2)."""
        call = self._by_invite.get((request.call_id, request.from_addr.tag or ""))
        invite_tx = self.transactions.invite_for(request)
        if call is None or invite_tx is None or call.state not in (DIALING, RINGING):
            tx.respond(response_to(request.headers, 481, "Call/Transaction Does Not Exist"))
            return
        tx.respond(response_to(request.headers, 200, "OK"))
        invite_tx.respond(self._answer_a(invite_tx.request, 487, "Request Terminated", call.a_tag))
        self._end(call, "canceled")

    def _bye(self, call: Call, side: str) -> None:
        dialog = call.a_dialog if side == "a" else call.b_dialog
        if dialog is None:
            return
        link, address = self._peer(call, side)
        bye = dialog.request("BYE", sent_by(link))
        self.transactions.send_request(bye, link, address, lambda r: None, lambda: None)

    def _end(self, call: Call, reason: str) -> None:
        if call.state == ENDED:
            return
        call.state = ENDED
        for fork in (call.a_fork, call.b_fork):
            if fork is not None:
                if fork.winner is None:
                    fork.cancel()  # still ringing somewhere: CANCEL it (and free its lines)
                for branch in fork.branches:
                    branch.released()
        if call.transfer is not None:
            call.transfer.cancel()
            call.transfer = None
        for branch in call.extra:
            branch.released()
        if self.trunk is not None and call.trunk_in:
            self.trunk.lines.give_back(outgoing=False)
        for handle in call.unacked.values():
            handle.cancel()
        call.unacked.clear()
        call.end_reason = reason
        if call.setup_span is not None:  # it never got an answer
            call.setup_span.set_attribute(ATTR_END_REASON, reason)
            call.setup_span.end()
            call.setup_span = None
        with tracing.tracer.start_as_current_span("sip call end", context=call.trace) as span:
            span.set_attribute(ATTR_END_REASON, reason)
        _log.info("call %s ended: %s", call.id, reason)
        self._changed(call, "ended")
        # Keep the dialogs a little longer: late ACKs and retransmitted BYEs still find them.
        asyncio.get_running_loop().call_later(self.transactions.timers.b, self._forget, call)

    def _forget(self, call: Call) -> None:
        self.calls.pop(call.id, None)
        call_traces.pop(call.id, None)
        for dialog in (call.a_dialog, call.b_dialog):
            if dialog is not None:
                self._by_dialog.pop(dialog.key, None)
        for key in [k for k, c in self._retired.items() if c is call]:
            del self._retired[key]
        if call.a_tx is not None:
            request = call.a_tx.request
            self._by_invite.pop((request.call_id, request.from_addr.tag or ""), None)

    def _changed(self, call: Call, event: str) -> None:
        call.event = event
        for listener in list(self.listeners):
            listener(call)

    def active(self) -> list[Call]:
        return [call for call in self.calls.values() if call.state != ENDED]


def _copy_body(source: Response, target: Response) -> None:
    content_type = source.headers.get("Content-Type")
    if content_type and source.body:
        target.headers.add("Content-Type", content_type)
        target.body = source.body


def _allows_update(message: Request | Response) -> bool:
    allow = message.headers.get_all("Allow")
    return any(method.strip().upper() == "UPDATE" for method in allow)


def _holds(sdp: bytes) -> bool:
    """Whether an SDP offer puts the other side on hold: every stream sendonly or inactive (a
    session-level direction counts for streams without their own), or RFC 2543's c=0.0.0.0."""
    text = sdp.decode("utf-8", "replace")
    if "c=IN IP4 0.0.0.0" in text:
        return True
    session, *streams = re.split(r"\r?\nm=", text)

    def direction(block: str, default: str) -> str:
        for line in block.splitlines():
            if line.strip() in ("a=sendonly", "a=inactive", "a=sendrecv", "a=recvonly"):
                return line.strip()[2:]
        return default

    default = direction(session, "sendrecv")
    return all(direction(block, default) in ("sendonly", "inactive") for block in streams or [session])


def _refusal(offer: bytes) -> bytes:
    """An SDP answer that refuses every stream of ``offer`` (port 0, RFC 3264 6): what the first
    party of a placed call is ACKed with when there is no second party to talk to."""
    lines = offer.decode("utf-8", "replace").splitlines()
    if not any(line.startswith("v=") for line in lines):
        return b""
    out = []
    for line in lines:
        if line.startswith("m="):
            media, _port, *rest = line.split(" ")
            out.append(" ".join([media, "0", *rest]))
        else:
            out.append(line)
    return ("\r\n".join(out) + "\r\n").encode()
