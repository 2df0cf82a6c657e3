"""The back-to-back agent for calls between the server's own phones.

A call is two dialogs: leg A with the caller, leg B with the callee. The agent answers each leg
itself and carries over what the other side said: ringing, answer and SDP (media goes directly
between the phones), busy/decline/timeouts, hang-up from either side, CANCEL before the answer.
Each leg's packets go to the address the phone's packets come from (its INVITE's source, or its
registration's source), never to a host named inside a message. Max-Forwards is decremented
across the agent, not reset (RFC 7332); at zero the caller gets 483.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable

from services.runtime.config_calls import ScenariosSection
from services.sipgw.call import ANSWERED, ENDED, RINGING, Call, called_number, parse_address
from services.sipgw.plan_feed import PlanFeed
from services.sipgw.registrar import Bindings
from services.sipgw.scenarios import Scenarios
from services.sipgw.sip import Request, Response, parse_uri
from services.sipgw.sip.dialog import Dialog, new_tag
from services.sipgw.sip.headers import Headers
from services.sipgw.sip.transaction import (
    ServerTransaction,
    TransactionLayer,
    new_branch,
)
from services.sipgw.sip.transport import Address, Link, response_to
from services.sipgw.trunk import CORRELATION, Trunk
from services.sipgw.trunk_lines import NoLineFree

_log = logging.getLogger(__name__)


class B2BUA:
    def __init__(
        self,
        transactions: TransactionLayer,
        bindings: Bindings,
        own_numbers: set[str],
        plan: PlanFeed | None = None,
        trunk: Trunk | None = None,
        scenarios: Scenarios | None = None,
    ):
        self.transactions = transactions
        self.bindings = bindings
        self.own_numbers = own_numbers
        self.plan = plan
        self.trunk = trunk
        self.scenarios = scenarios or Scenarios(ScenariosSection())
        self.phone_link: Link | None = None  # the phones' UDP endpoint, set when it is open
        # Told of every call that starts or changes state (the API's WatchCalls listens here).
        self.listeners: set[Callable[[Call], None]] = set()
        self.calls: dict[str, Call] = {}
        self._by_dialog: dict[tuple[str, str, str], tuple[Call, str]] = {}
        self._by_invite: dict[tuple[str, str], Call] = {}  # (A's Call-ID, A's From tag)

    # -- A: the caller ----------------------------------------------------------------------

    def invite(self, tx: ServerTransaction, request: Request, caller: str) -> None:
        """A new INVITE (no To tag) from ``caller``, one of our phones that proved who it is."""
        if not self._hops_left(tx, request):
            return
        called = called_number(request)
        if called in self.own_numbers:
            self._ring_phone(tx, request, caller, request.from_addr.display_name, called, uuid.uuid4().hex)
            return
        route = self.plan.resolve(called) if self.plan is not None else None
        if route is None or route.local or self.trunk is None or self.trunk.endpoint is None or not route.trunk_address:
            tx.respond(self._answer_a(request, 404, "Not Found"))
            return
        try:
            self.trunk.lines.take(outgoing=True)
        except NoLineFree as error:
            tx.respond(self._answer_a(request, 503, f"Service Unavailable ({error})"))
            return
        call_id = uuid.uuid4().hex
        address = parse_address(route.trunk_address)
        link = self.trunk.endpoint
        b_request = self._b_invite(request, called, caller, f"sip:{called}@{route.trunk_address}", link)
        self.trunk.identity(b_request.headers, caller, request.from_addr.display_name, call_id)
        _log.info("call %s goes to server %s over the trunk", call_id, route.server_id)
        self._dial(tx, request, caller, called, b_request, address, link, call_id, trunk_out=True)

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
        correlation = request.headers.get(CORRELATION) or uuid.uuid4().hex
        action = self.scenarios.route(called, caller, from_trunk=True)
        if action.kind == "dial" and action.target in self.own_numbers:
            if self._ring_phone(tx, request, caller, display, action.target, correlation, trunk_in=True):
                return
        elif action.kind == "reject":
            tx.respond(self._answer_a(request, action.code, "Rejected"))
        else:
            tx.respond(self._answer_a(request, 404, "Not Found"))
        self.trunk.lines.give_back(outgoing=False)

    def _hops_left(self, tx: ServerTransaction, request: Request) -> bool:
        mf = request.max_forwards
        if mf is not None and mf <= 0:
            tx.respond(self._answer_a(request, 483, "Too Many Hops"))
            return False
        return True

    def _ring_phone(
        self,
        tx: ServerTransaction,
        request: Request,
        caller: str,
        display: str | None,
        called: str,
        call_id: str,
        trunk_in: bool = False,
    ) -> bool:
        """Rings our phone ``called``; False (after answering 480) if it is not registered."""
        contacts = self.bindings.lookup(called)
        if not contacts:
            tx.respond(self._answer_a(request, 480, "Temporarily Unavailable"))
            return False
        binding = contacts[0]
        link = self._phone_link(tx.link)
        b_request = self._b_invite(request, called, caller, binding.contact, link, display)
        address = parse_address(binding.source)
        self._dial(tx, request, caller, called, b_request, address, link, call_id, trunk_in=trunk_in)
        return True

    def _phone_link(self, link: Link) -> Link:
        """Phones are reached on the phone side, whatever side the call came in on."""
        return self.phone_link if self.phone_link is not None else link

    def _dial(
        self,
        tx: ServerTransaction,
        request: Request,
        caller: str,
        called: str,
        b_request: Request,
        address: Address,
        link: Link,
        call_id: str,
        trunk_in: bool = False,
        trunk_out: bool = False,
    ) -> None:
        tx.respond(response_to(request.headers, 100, "Trying"))
        call = Call(
            id=call_id,
            caller=caller,
            callee=called,
            a_tx=tx,
            a_tag=new_tag(),
            b_request=b_request,
            b_address=address,
            b_link=link,
            trunk_in=trunk_in,
            trunk_out=trunk_out,
        )
        self.calls[call.id] = call
        self._by_invite[(request.call_id, request.from_addr.tag or "")] = call
        _log.info("call %s: %s -> %s", call.id, call.caller, call.callee)
        self._changed(call)
        call.b_tx = self.transactions.send_request(
            b_request,
            link,
            address,
            lambda response: self._from_b(call, response),
            lambda: self._b_timeout(call),
        )

    def _b_invite(
        self, a: Request, called: str, caller: str, contact: str, link: Link, display: str | None = None
    ) -> Request:
        local = f"{link.local[0]}:{link.local[1]}"
        mf = a.max_forwards
        headers = Headers()
        headers.add("Via", f"SIP/2.0/{link.name} {local};branch={new_branch()};rport")
        headers.add("Max-Forwards", str((mf if mf is not None else 70) - 1))
        display = display if display is not None else a.from_addr.display_name
        name = f'"{display.replace(chr(34), "")}" ' if display else ""
        headers.add("From", f"{name}<sip:{caller}@{local}>;tag={new_tag()}")
        headers.add("To", f"<sip:{called}@{local}>")
        headers.add("Call-ID", f"{uuid.uuid4().hex}@{local}")
        headers.add("CSeq", "1 INVITE")
        headers.add("Contact", f"<sip:{caller}@{local}>")
        content_type = a.headers.get("Content-Type")
        if content_type and a.body:
            headers.add("Content-Type", content_type)
        return Request("INVITE", parse_uri(contact), headers, a.body)

    def _answer_a(self, request: Request, status: int, reason: str, tag: str | None = None) -> Response:
        response = response_to(request.headers, status, reason)
        if status > 100 and not request.to_addr.tag:
            to = request.headers.get("To") or ""
            response.headers.set("To", f"{to};tag={tag or new_tag()}")
        return response

    # -- B: the callee ----------------------------------------------------------------------

    def _from_b(self, call: Call, response: Response) -> None:
        a_request = call.a_tx.request
        if response.status < 200:
            if response.status > 100 and call.state == "dialing":
                call.state = RINGING
                self._changed(call)
                ringing = self._answer_a(a_request, response.status, response.reason, call.a_tag)
                self._copy_body(response, ringing)
                call.a_tx.respond(ringing)
            return
        if 200 <= response.status < 300:
            self._answered(call, response)
            return
        if call.canceled:
            self._end(call, "canceled")
            return
        call.a_tx.respond(self._answer_a(a_request, response.status, response.reason, call.a_tag))
        self._end(call, f"{response.status} {response.reason}")

    def _answered(self, call: Call, response: Response) -> None:
        via = self._via(call.b_link)
        if call.b_dialog is None:
            call.b_dialog = Dialog.as_uac(call.b_request, response)
            self._by_dialog[call.b_dialog.key] = (call, "b")
        # Every 2xx from B is ACKed again: B resends it until an ACK arrives.
        self.transactions.send_direct(call.b_dialog.ack(via, call.b_request.cseq.number), call.b_link, call.b_address)
        if call.state in (ANSWERED, ENDED):
            return
        if call.canceled:  # the answer crossed A's CANCEL: B is hung up at once
            self._bye(call, "b")
            self._end(call, "canceled")
            return
        call.state = ANSWERED
        call.answered_at = time.time()
        a_request = call.a_tx.request
        local = f"{call.a_tx.link.local[0]}:{call.a_tx.link.local[1]}"
        contact = f"<sip:{call.callee}@{local}>"
        answer = self._answer_a(a_request, 200, "OK", call.a_tag)
        answer.headers.add("Contact", contact)
        self._copy_body(response, answer)
        call.a_dialog = Dialog.as_uas(a_request, call.a_tag, contact)
        self._by_dialog[call.a_dialog.key] = (call, "a")
        call.a_tx.respond(answer)
        self._resend_until_ack(call, "a", answer.to_bytes())
        _log.info("call %s answered", call.id)
        self._changed(call)

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
        return (call.a_tx.link, call.a_address) if side == "a" else (call.b_link, call.b_address)

    def _b_timeout(self, call: Call) -> None:
        if call.state in ("dialing", RINGING):
            call.a_tx.respond(self._answer_a(call.a_tx.request, 408, "Request Timeout", call.a_tag))
            self._end(call, "no answer from the callee")

    @staticmethod
    def _copy_body(source: Response, target: Response) -> None:
        content_type = source.headers.get("Content-Type")
        if content_type and source.body:
            target.headers.add("Content-Type", content_type)
            target.body = source.body

    # -- requests inside a call --------------------------------------------------------------

    def in_dialog(self, tx: ServerTransaction, request: Request) -> bool:
        """ACK, BYE and the rest for an existing call; False if the request is not ours."""
        key = (request.call_id, request.to_addr.tag or "", request.from_addr.tag or "")
        found = self._by_dialog.get(key)
        if found is None:
            return False
        call, side = found
        dialog = call.a_dialog if side == "a" else call.b_dialog
        assert dialog is not None
        if request.method == "ACK":
            handle = call.unacked.pop(side, None)
            if handle is not None:
                handle.cancel()
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
        tx.respond(response_to(request.headers, 501, "Not Implemented"))
        return True

    def _relay_offer(self, call: Call, side: str, tx: ServerTransaction, request: Request) -> None:
        """A re-INVITE or UPDATE (hold, resume, a new codec): the other side gets the same offer in
        its own dialog, and its answer comes back (RFC 3261 14, RFC 3311)."""
        if request.method == "INVITE":
            tx.respond(response_to(request.headers, 100, "Trying"))
        other = "b" if side == "a" else "a"
        dialog = call.b_dialog if other == "b" else call.a_dialog
        assert dialog is not None
        link, address = self._peer(call, other)
        offer = dialog.request(request.method, self._via(link), request.body, request.headers.get("Content-Type") or "")
        own = call.a_dialog if side == "a" else call.b_dialog
        assert own is not None

        def on_answer(response: Response) -> None:
            if response.status < 200:
                return
            if request.method == "INVITE" and response.status < 300:
                dialog.refresh_target(response)
                self.transactions.send_direct(dialog.ack(self._via(link), offer.cseq.number), link, address)
            if tx.state not in ("Proceeding", "Trying"):
                return  # an answer we already relayed (a retransmitted 2xx)
            answer = response_to(request.headers, response.status, response.reason)
            if response.status < 300:
                answer.headers.add("Contact", own.contact)
            self._copy_body(response, answer)
            tx.respond(answer)
            if request.method == "INVITE" and response.status < 300:
                self._resend_until_ack(call, side, answer.to_bytes())

        def on_timeout() -> None:
            tx.respond(response_to(request.headers, 408, "Request Timeout"))

        self.transactions.send_request(offer, link, address, on_answer, on_timeout)

    def hang_up(self, call_id: str, reason: str = "hung up through the API") -> bool:
        """Ends a call from outside: BYE to both parties, or CANCEL to a phone still ringing."""
        call = self.calls.get(call_id)
        if call is None or call.state == ENDED:
            return False
        if call.state == ANSWERED:
            self._bye(call, "a")
            self._bye(call, "b")
        else:
            call.canceled = True
            call.a_tx.respond(self._answer_a(call.a_tx.request, 487, "Request Terminated", call.a_tag))
            self.transactions.send_request(
                self._cancel_for(call.b_request), call.b_link, call.b_address, lambda r: None, lambda: None
            )
        self._end(call, reason)
        return True

    def cancel(self, tx: ServerTransaction, request: Request) -> None:
        """CANCEL from the caller before the answer (RFC 3261 9.2)."""
        call = self._by_invite.get((request.call_id, request.from_addr.tag or ""))
        invite_tx = self.transactions.invite_for(request)
        if call is None or invite_tx is None or call.state not in ("dialing", RINGING):
            tx.respond(response_to(request.headers, 481, "Call/Transaction Does Not Exist"))
            return
        tx.respond(response_to(request.headers, 200, "OK"))
        call.canceled = True
        invite_tx.respond(self._answer_a(invite_tx.request, 487, "Request Terminated", call.a_tag))
        self.transactions.send_request(
            self._cancel_for(call.b_request), call.b_link, call.b_address, lambda r: None, lambda: None
        )

    @staticmethod
    def _cancel_for(invite: Request) -> Request:
        headers = Headers()
        headers.add("Via", invite.headers.get_lines("Via")[0])
        for name in ("From", "To", "Call-ID"):
            headers.add(name, invite.headers.get(name) or "")
        headers.add("CSeq", f"{invite.cseq.number} CANCEL")
        headers.add("Max-Forwards", "70")
        return Request("CANCEL", invite.uri, headers)

    def _bye(self, call: Call, side: str) -> None:
        dialog = call.a_dialog if side == "a" else call.b_dialog
        if dialog is None:
            return
        link, address = self._peer(call, side)
        bye = dialog.request("BYE", self._via(link))
        self.transactions.send_request(bye, link, address, lambda r: None, lambda: None)

    def _end(self, call: Call, reason: str) -> None:
        if call.state == ENDED:
            return
        call.state = ENDED
        if self.trunk is not None:
            if call.trunk_in:
                self.trunk.lines.give_back(outgoing=False)
            if call.trunk_out:
                self.trunk.lines.give_back(outgoing=True)
        for handle in call.unacked.values():
            handle.cancel()
        call.unacked.clear()
        call.end_reason = reason
        _log.info("call %s ended: %s", call.id, reason)
        self._changed(call)
        # Keep the dialogs a little longer: late ACKs and retransmitted BYEs still find them.
        asyncio.get_running_loop().call_later(self.transactions.timers.b, self._forget, call)

    def _forget(self, call: Call) -> None:
        self.calls.pop(call.id, None)
        for dialog in (call.a_dialog, call.b_dialog):
            if dialog is not None:
                self._by_dialog.pop(dialog.key, None)
        self._by_invite.pop((call.a_tx.request.call_id, call.a_tx.request.from_addr.tag or ""), None)

    def _changed(self, call: Call) -> None:
        for listener in list(self.listeners):
            listener(call)

    def active(self) -> list[Call]:
        return [call for call in self.calls.values() if call.state != ENDED]

    @staticmethod
    def _via(link: Link) -> str:
        return f"SIP/2.0/{link.name} {link.local[0]}:{link.local[1]}"
