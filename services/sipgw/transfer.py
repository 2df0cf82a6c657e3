"""Transfers: a party in a call sends REFER (RFC 3515) and the gateway connects the party's other
party to the target in its place.

Blind: Refer-To names a number, which is rung. Attended: the party first called the target itself
(a consultation call through this gateway) and Refer-To carries Replaces (RFC 3891) naming that
call's dialog as the party sees it; the gateway then joins the consultation call's other party
to this call and ends the consultation call.

The gateway answers the REFER with 202 and keeps the transferor informed with NOTIFYs carrying
sipfrag status lines (100 Trying, then the target's final answer). The target is rung like any
call (own phones, another server over the trunk) with an INVITE without SDP; its answer's offer
goes to the other party in a re-INVITE, and the other party's answer comes back to the target in
its ACK (RFC 3725 flow I, on one side). Then the target's leg takes the transferor's place and the
transferor gets BYE. If the target fails, the transferor stays in the call and is told why. In an
attended transfer the target has answered already: it is asked for a fresh offer with a re-INVITE
without SDP instead.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable

from opentelemetry import context as otel_context

from services.runtime.telemetry import ATTR_TRANSFER_TARGET
from services.sipgw import sdp, tracing
from services.sipgw.call import Call, Leg, Phase, Side
from services.sipgw.calls import CallTable
from services.sipgw.fork import Branch, Fork
from services.sipgw.routing import Outgoing, Router
from services.sipgw.sip import Request, Response, SipURI, parse_name_addr
from services.sipgw.sip.dialog import Dialog
from services.sipgw.sip.errors import ParseError
from services.sipgw.sip.transaction import ServerTransaction
from services.sipgw.sip.transport import response_to
from services.sipgw.trunk import INSTANCE

TARGET_RING = 25.0  # the target's answer must reach its ACK within its 32 s

Done = Callable[[Call, Side, bool], None]  # the call, the side that changed, whether attended


class Transfer:
    def __init__(self, table: CallTable, call: Call, side: Side, target: str, done: Done | None = None):
        self.table = table
        self.done = done  # told once the target has taken the transferor's place
        self.call = call
        self.side = side  # the transferor's side, which the target takes
        self.target = target
        self.transferor = call.leg(side)  # kept: NOTIFYs go to it after it left the call
        self.target_leg: Leg | None = None
        self.target_invite_cseq = 1
        self.target_ack: Request | None = None
        self.fork: Fork | None = None
        # Attended: the consultation call and the side of its target.
        self.consultation: tuple[Call, Side] | None = None
        self.trace: tracing.Context | None = None  # the transfer's span, for what it sends later

    @classmethod
    def start(
        cls,
        table: CallTable,
        router: Router,
        call: Call,
        side: Side,
        tx: ServerTransaction,
        request: Request,
        done: Done | None = None,
    ) -> None:
        if call.phase != Phase.ANSWERED or call.transfer is not None:
            tx.respond(response_to(request.headers, 491, "Request Pending"))
            return
        try:
            refer_to = parse_name_addr(request.headers.get("Refer-To") or "")
        except ParseError:
            tx.respond(response_to(request.headers, 400, "Bad Request (Refer-To)"))
            return
        uri = refer_to.uri
        if not isinstance(uri, SipURI) or not uri.user:
            tx.respond(response_to(request.headers, 400, "Bad Request (Refer-To has no number)"))
            return
        consultation = None
        if uri.headers:  # Replaces: an attended transfer
            consultation = table.replaced(parse_replaces(replaces_in(uri.headers)))
            if consultation is None or consultation[0] is call or consultation[0].phase != Phase.ANSWERED:
                tx.respond(response_to(request.headers, 481, "Call/Transaction Does Not Exist (Replaces)"))
                return
        tx.respond(response_to(request.headers, 202, "Accepted"))
        transfer = cls(table, call, side, uri.user, done)
        call.transfer = transfer
        transfer.notify("100 Trying", done=False)
        with tracing.tracer.start_as_current_span("sip transfer", context=call.trace) as span:
            span.set_attribute(ATTR_TRANSFER_TARGET, uri.user)
            span.set_attribute("pbxmesh.transfer.attended", consultation is not None)
            transfer.trace = otel_context.get_current()
            if consultation is None:
                transfer.ring(router)
            else:
                consulted, transferor_side = consultation
                transfer.take_over(consulted, transferor_side.other)

    def ring(self, router: Router) -> None:
        call = self.call
        number, name = call.party(self.side.other)
        out = Outgoing(number, name or None, 70, call.id, path=call.passed())
        branches = router.target(self.target, out)
        if isinstance(branches, tuple):
            self.finish(f"{branches[0]} {branches[1]}")
            return
        for branch in branches:
            if branch.over_trunk:
                tracing.to_headers(branch.request.headers, self.trace)
        self.fork = Fork(
            self.table.transactions,
            branches,
            lambda branch, response: None,
            self.rung,
            lambda status, reason: self.finish(f"{status} {reason}"),
            ring_timeout=TARGET_RING,
        )
        self.table.log(call).info("transfer to %s", self.target)
        self.fork.start()

    def rung(self, branch: Branch, response: Response) -> None:
        """A blind transfer's target answered (again, if its 2xx was resent)."""
        if self.target_leg is not None:
            if self.target_ack is not None:  # a retransmitted 2xx: our ACK was lost
                self.table.transactions.send_direct(self.target_ack, branch.link, branch.address)
            return
        leg = Leg.from_branch(branch, Dialog.as_uac(branch.request, response), self.target)
        leg.allows_update = sdp.allows_update(response)
        leg.peer_instance = response.headers.get(INSTANCE) or "" if leg.trunk else ""
        self.target_leg, self.target_invite_cseq = leg, branch.request.cseq.number
        self.offered(response)

    def take_over(self, consultation: Call, target_side: Side) -> None:
        """Attended: the consultation call's party on ``target_side`` is the target, answered already."""
        leg = consultation.legs.get(target_side)
        if leg is None or leg.dialog is None:
            self.finish("481 Call/Transaction Does Not Exist")
            return
        self.target = leg.number
        self.consultation = (consultation, target_side)
        ask = self.table.request(leg, "INVITE")
        self.table.log(self.call).info("attended transfer to %s (call %s)", leg.number, consultation.id)

        def answered(response: Response) -> None:
            if response.status < 200:
                return
            if response.status >= 300 or not response.body:
                self.finish(f"{response.status} {response.reason}")
                return
            if self.target_leg is None:
                self.target_leg, self.target_invite_cseq = leg, ask.cseq.number
                self.offered(response)

        self.table.send(leg, ask, answered, lambda: self.finish("408 Request Timeout"))

    def offered(self, response: Response) -> None:
        """The target's offer goes to the other party; its answer comes back in the target's ACK."""
        call, target = self.call, self.target_leg
        assert target is not None
        offer = response.body
        if not offer or call.phase != Phase.ANSWERED:
            self._drop_target()
            self.finish("488 Not Acceptable Here" if not offer else "487 Request Terminated")
            return
        other = call.leg(self.side.other)
        # The target takes the transferor's side, and with it that side's media leg.
        offer = self.table.media.offer(call, self.side, offer, refuse=False)
        reinvite = self.table.request(other, "INVITE", offer, "application/sdp")
        if other.trunk:
            tracing.to_headers(reinvite.headers, self.trace)

        def on_answer(answer: Response) -> None:
            if answer.status < 200:
                return
            if answer.status >= 300:
                self._drop_target()
                self.finish(f"{answer.status} {answer.reason}")
                return
            assert other.dialog is not None
            other.dialog.refresh_target(answer)
            self.table.ack(other, reinvite.cseq.number)
            if self.target_ack is None:
                content_type = answer.headers.get("Content-Type") or "application/sdp"
                body = self.table.media.answer(call, self.side.other, answer.body)
                self.target_ack = self.table.ack(target, self.target_invite_cseq, body, content_type)
                other.sdp, target.sdp = offer, body
                self.take_place(target)

        self.table.send(other, reinvite, on_answer, lambda: self.finish("408 Request Timeout"))

    def _drop_target(self) -> None:
        """The target answered but cannot be connected: its 2xx is ACKed and it is hung up."""
        target = self.target_leg
        if target is None or target.dialog is None:
            return
        self.target_ack = self.table.ack(target, self.target_invite_cseq)
        self.table.send(target, self.table.request(target, "BYE"))
        if self.consultation is None:
            target.release_line()

    def take_place(self, target: Leg) -> None:
        """The target replaces the transferor in the call; the transferor is told and hung up."""
        call = self.call
        self.notify("200 OK", done=True)
        if self.transferor.dialog is not None:
            self.table.send(self.transferor, self.table.request(self.transferor, "BYE"))
        if self.consultation is not None:
            consultation, target_side = self.consultation
            self.table.detach(consultation, target_side)
            self.table.bye(consultation, target_side.other)
            self.table.end(consultation, f"transferred: joined to call {call.id}")
        self.table.replace_leg(call, self.side, target)
        call.transfer = None
        self._let_go()
        self.table.log(call).info("transferred to %s", self.target)
        if self.done is not None:
            self.done(call, self.side, self.consultation is not None)

    def finish(self, status_line: str) -> None:
        """The transfer failed: the transferor stays in the call and learns why."""
        if self.call.transfer is self:
            self.call.transfer = None
            self._let_go()
            if status_line.split(maxsplit=1)[0] != "200":
                self.table.log(self.call).info("transfer to %s failed: %s", self.target, status_line)
            self.notify(status_line, done=True)

    def _let_go(self) -> None:
        """The transfer is over: its fork's callbacks hold this transfer (and its call), so the
        transfer lets go of the fork, and both are freed once the fork's transactions end."""
        self.fork = None

    def notify(self, status_line: str, done: bool) -> None:
        notify_refer(self.table, self.transferor, status_line, done)

    def cancel(self) -> None:
        """The call ended while the target rang."""
        if self.fork is not None and self.fork.winner is None:
            self.fork.cancel()
        if self.fork is not None:
            for branch in self.fork.branches:
                branch.released()
        if self.target_leg is not None and self.consultation is None and self.target_ack is None:
            self.target_leg.release_line()


def notify_refer(table: CallTable, leg: Leg, status_line: str, done: bool = True) -> None:
    """A NOTIFY of the implicit refer subscription (RFC 3515 2.4.4), with a sipfrag body."""
    if leg.dialog is None:
        return
    notify = table.request(leg, "NOTIFY", f"SIP/2.0 {status_line}\r\n".encode(), "message/sipfrag;version=2.0")
    notify.headers.add("Event", "refer")
    notify.headers.add("Subscription-State", "terminated;reason=noresource" if done else "active;expires=60")
    table.send(leg, notify)


def replaces_in(headers: str) -> str:
    """The Replaces value (unescaped) among a Refer-To URI's headers; empty if none (RFC 3891)."""
    for item in headers.split("&"):
        name, _, value = item.partition("=")
        if name.strip().lower() == "replaces":
            return urllib.parse.unquote(value)
    return ""


def parse_replaces(value: str) -> tuple[str, str, str]:
    """Call-ID, to-tag and from-tag of a Replaces value."""
    call_id, *params = value.split(";")
    tags = dict(p.strip().partition("=")[::2] for p in params)
    return call_id.strip(), tags.get("to-tag", ""), tags.get("from-tag", "")
