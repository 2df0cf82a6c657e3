"""Transfers: a phone in a call sends REFER (RFC 3515) and the gateway connects the phone's other
party to the target in its place.

Blind: Refer-To names a number, which is rung. Attended: the phone first called the target itself
(a consultation call through this gateway) and Refer-To carries Replaces (RFC 3891) naming that
call's dialog as the phone sees it; the gateway then joins the consultation call's other party
to this call and ends the consultation call.

The gateway answers the REFER with 202 and keeps the transferor informed with NOTIFYs carrying
sipfrag status lines (100 Trying, then the target's final answer). The target is rung like any
call (own phones, another server over the trunk) with an INVITE without SDP; its answer's offer
goes to the other party in a re-INVITE, and the other party's answer comes back to the target in
its ACK (RFC 3725 flow I, on one side). Then the target takes the transferor's place in the call
and the transferor gets BYE. If the target fails, the transferor stays in the call and is told
why. In an attended transfer the target has answered already: it is asked for a fresh offer with a
re-INVITE without SDP instead.
"""

from __future__ import annotations

import logging
import urllib.parse
from typing import TYPE_CHECKING

from opentelemetry import context as otel_context

from services.runtime.telemetry import ATTR_TRANSFER_TARGET
from services.sipgw import tracing
from services.sipgw.call import ANSWERED, Call
from services.sipgw.fork import Branch, Fork
from services.sipgw.routing import Outgoing
from services.sipgw.sip import Request, Response, SipURI, parse_name_addr
from services.sipgw.sip.dialog import Dialog
from services.sipgw.sip.errors import ParseError
from services.sipgw.sip.transaction import ServerTransaction
from services.sipgw.sip.transport import response_to, sent_by

if TYPE_CHECKING:
    from services.sipgw.b2bua import B2BUA

_log = logging.getLogger(__name__)

TARGET_RING = 25.0  # the target's answer must reach its ACK within its 32 s


def other_side(side: str) -> str:
    return "b" if side == "a" else "a"


class Transfer:
    def __init__(self, agent: B2BUA, call: Call, side: str, target: str):
        self.agent = agent
        self.call = call
        self.side = side  # the transferor's side, which the target takes
        self.target = target
        self.old_dialog = call.a_dialog if side == "a" else call.b_dialog
        self.old_peer = agent._peer(call, side)
        self.target_dialog: Dialog | None = None
        self.target_invite_cseq = 1
        self.target_ack: Request | None = None
        self.fork: Fork | None = None
        # Attended: the consultation call and the transferor's side in it.
        self.consultation: tuple[Call, str] | None = None
        self.trace: tracing.Context | None = None  # the transfer's span, for what it sends later

    @classmethod
    def start(cls, agent: B2BUA, call: Call, side: str, tx: ServerTransaction, request: Request) -> None:
        if call.state != ANSWERED or call.transfer is not None:
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
            consultation = agent.replaced(_replaces(uri.headers))
            if consultation is None or consultation[0] is call or consultation[0].state != ANSWERED:
                tx.respond(response_to(request.headers, 481, "Call/Transaction Does Not Exist (Replaces)"))
                return
        tx.respond(response_to(request.headers, 202, "Accepted"))
        transfer = cls(agent, call, side, uri.user)
        call.transfer = transfer
        transfer.notify("100 Trying", done=False)
        with tracing.tracer.start_as_current_span("sip transfer", context=call.trace) as span:
            span.set_attribute(ATTR_TRANSFER_TARGET, uri.user)
            span.set_attribute("pbxmesh.transfer.attended", consultation is not None)
            transfer.trace = otel_context.get_current()
            if consultation is None:
                transfer.ring()
            else:
                transfer.take_over(*consultation)

    def ring(self) -> None:
        call, other = self.call, other_side(self.side)
        number, name = (call.caller, call.caller_name) if other == "a" else (call.callee, call.callee_name)
        out = Outgoing(number, name or None, 70, call.id, path=call.path)
        branches = self.agent.router.target(self.target, out)
        if isinstance(branches, tuple):
            self.finish(f"{branches[0]} {branches[1]}")
            return
        for branch in branches:
            if branch.over_trunk:
                tracing.to_headers(branch.request.headers, self.trace)
        self.fork = Fork(
            self.agent.transactions,
            branches,
            lambda branch, response: None,
            self.answered,
            lambda status, reason: self.finish(f"{status} {reason}"),
            ring_timeout=TARGET_RING,
        )
        _log.info("call %s: transfer to %s", call.id, self.target)
        self.fork.start()

    def take_over(self, consultation: Call, transferor_side: str) -> None:
        """Attended: the consultation call's other party is the target, already answered."""
        agent, side = self.agent, other_side(transferor_side)
        dialog = consultation.a_dialog if side == "a" else consultation.b_dialog
        if dialog is None:
            self.finish("481 Call/Transaction Does Not Exist")
            return
        link, address = agent._peer(consultation, side)
        target = Branch(consultation.b.request if consultation.b else consultation_request(consultation), address, link)
        number = consultation.caller if side == "a" else consultation.callee
        self.target = number
        self.consultation = (consultation, transferor_side)
        ask = dialog.request("INVITE", sent_by(link))
        _log.info("call %s: attended transfer to %s (call %s)", self.call.id, number, consultation.id)

        def offered(response: Response) -> None:
            if response.status < 200:
                return
            if response.status >= 300 or not response.body:
                self.finish(f"{response.status} {response.reason}")
                return
            self.target_dialog = dialog
            self.target_invite_cseq = ask.cseq.number
            self.answered(target, response)

        agent.transactions.send_request(ask, link, address, offered, lambda: self.finish("408 Request Timeout"))

    def answered(self, branch: Branch, response: Response) -> None:
        agent, call = self.agent, self.call
        if self.target_dialog is not None and self.consultation is None:
            if self.target_ack is not None:  # a retransmitted 2xx: our ACK was lost
                agent.transactions.send_direct(self.target_ack, branch.link, branch.address)
            return
        if self.target_dialog is None:
            self.target_dialog = Dialog.as_uac(branch.request, response)
            self.target_invite_cseq = branch.request.cseq.number
        offer = response.body
        if not offer or call.state != ANSWERED:
            self.ack_target(branch, b"", "")
            agent.transactions.send_request(
                self.target_dialog.request("BYE", sent_by(branch.link)),
                branch.link,
                branch.address,
                lambda r: None,
                lambda: None,
            )
            self.finish("488 Not Acceptable Here" if not offer else "487 Request Terminated")
            return
        other = other_side(self.side)
        dialog = call.a_dialog if other == "a" else call.b_dialog
        assert dialog is not None
        link, address = agent._peer(call, other)
        reinvite = dialog.request("INVITE", sent_by(link), offer, "application/sdp")
        if agent.trunk is not None and agent.trunk.carries(link):
            tracing.to_headers(reinvite.headers, self.trace)

        def on_answer(answer: Response) -> None:
            if answer.status < 200:
                return
            if answer.status >= 300:
                self.ack_target(branch, b"", "")
                bye = self.target_dialog.request("BYE", sent_by(branch.link)) if self.target_dialog else None
                if bye is not None:
                    agent.transactions.send_request(bye, branch.link, branch.address, lambda r: None, lambda: None)
                self.finish(f"{answer.status} {answer.reason}")
                return
            dialog.refresh_target(answer)
            via = sent_by(link)
            agent.transactions.send_direct(dialog.ack(via, reinvite.cseq.number), link, address)
            if self.target_ack is None:
                self.ack_target(branch, answer.body, answer.headers.get("Content-Type") or "application/sdp")
                call.sdp_to[other] = offer
                self.take_place(branch, response, answer.body)

        agent.transactions.send_request(reinvite, link, address, on_answer, lambda: self.finish("408 Request Timeout"))

    def ack_target(self, branch: Branch, body: bytes, content_type: str) -> None:
        assert self.target_dialog is not None
        self.target_ack = self.target_dialog.ack(sent_by(branch.link), self.target_invite_cseq, body, content_type)
        self.agent.transactions.send_direct(self.target_ack, branch.link, branch.address)

    def take_place(self, branch: Branch, target_answer: Response, sdp: bytes) -> None:
        """The target replaces the transferor in the call; the transferor is told and hung up."""
        agent, call = self.agent, self.call
        assert self.target_dialog is not None
        self.notify("200 OK", done=True)
        if self.old_dialog is not None:
            bye = self.old_dialog.request("BYE", sent_by(self.old_peer[0]))
            agent.transactions.send_request(bye, *self.old_peer, lambda r: None, lambda: None)
        if self.consultation is not None:
            consultation, transferor_side = self.consultation
            agent.hand_over(consultation, other_side(transferor_side))
            agent._bye(consultation, transferor_side)
            agent._end(consultation, f"transferred: joined to call {call.id}")
        agent.replace_side(call, self.side, self.target_dialog, branch, self.target, target_answer, sdp)
        call.transfer = None
        _log.info("call %s: transferred to %s", call.id, self.target)

    def finish(self, status_line: str) -> None:
        """The transfer failed: the transferor stays in the call and learns why."""
        if self.call.transfer is self:
            self.call.transfer = None
            if status_line.split(maxsplit=1)[0] != "200":
                _log.info("call %s: transfer to %s failed: %s", self.call.id, self.target, status_line)
            self.notify(status_line, done=True)

    def notify(self, status_line: str, done: bool) -> None:
        """A NOTIFY of the implicit refer subscription (RFC 3515 2.4.4), with a sipfrag body."""
        if self.old_dialog is None:
            return
        link, address = self.old_peer
        via = sent_by(link)
        notify = self.old_dialog.request(
            "NOTIFY", via, f"SIP/2.0 {status_line}\r\n".encode(), "message/sipfrag;version=2.0"
        )
        notify.headers.add("Event", "refer")
        notify.headers.add("Subscription-State", "terminated;reason=noresource" if done else "active;expires=60")
        self.agent.transactions.send_request(notify, link, address, lambda r: None, lambda: None)

    def cancel(self) -> None:
        """The call ended while the target rang."""
        if self.fork is not None and self.fork.winner is None:
            self.fork.cancel()
        if self.fork is not None:
            for branch in self.fork.branches:
                branch.released()


def _replaces(headers: str) -> tuple[str, str, str]:
    """Call-ID, to-tag and from-tag of ``Replaces=...`` in a Refer-To URI's headers (RFC 3891)."""
    for item in headers.split("&"):
        name, _, value = item.partition("=")
        if name.strip().lower() != "replaces":
            continue
        call_id, *params = urllib.parse.unquote(value).split(";")
        tags = dict(p.strip().partition("=")[::2] for p in params)
        return call_id.strip(), tags.get("to-tag", ""), tags.get("from-tag", "")
    return "", "", ""


def consultation_request(call: Call) -> Request:
    """The request that started a call's leg A (a Branch needs one; it is not sent again)."""
    assert call.a_tx is not None
    return call.a_tx.request
