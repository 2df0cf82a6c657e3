"""One call through the gateway: two legs, their dialogs, and what the API shows of it."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import TYPE_CHECKING

from services.sipgw.fork import Branch, Fork
from services.sipgw.sip import Request, SipURI
from services.sipgw.sip.dialog import Dialog
from services.sipgw.sip.transaction import ServerTransaction
from services.sipgw.sip.transport import Address, Link

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span

    from services.sipgw.transfer import Transfer

DIALING, RINGING, ANSWERED, ENDED = "dialing", "ringing", "answered", "ended"


@dataclasses.dataclass
class Call:
    """Leg A is the caller: a phone or server whose INVITE we answer (``a_tx``), or for a call
    placed through the API the phone we rang first (``a_fork``). Leg B is the callee, rung on one
    or more branches (``b_fork``); ``b`` is the branch that answered."""

    id: str
    caller: str
    callee: str
    a_link: Link
    a_address: Address
    a_tag: str = ""
    a_tx: ServerTransaction | None = None
    a_fork: Fork | None = None
    a_dialog: Dialog | None = None
    # A placed call: A's 2xx with its offer waits for B's answer before it is ACKed (RFC 3725 4.1).
    a_invite: Request | None = None
    a_offer: bytes = b""
    a_answer: tuple[bytes, str] | None = None  # what its ACK carried, for a retransmitted 2xx
    b_fork: Fork | None = None
    b: Branch | None = None
    b_dialog: Dialog | None = None
    state: str = DIALING
    # A 2xx we sent to an INVITE of side "a" or "b", resent until its ACK (RFC 3261 13.3.1.4).
    unacked: dict[str, asyncio.TimerHandle] = dataclasses.field(default_factory=dict)
    trunk_in: bool = False  # holds one trunk line until the call ends
    trunk_out: bool = False  # leg B goes over the trunk (its branch holds the line)
    placed: bool = False
    # What callstate is told: the last change, the names shown, the other server, hold.
    event: str = "created"  # created, ringing, answered, held, resumed, ended
    caller_name: str = ""
    callee_name: str = ""
    peer_server_id: str = ""
    # The callee's server when a transfer sent the callee's side over the trunk (a call that came
    # in over the trunk and goes out again: this server is then in the middle).
    callee_server: str = ""
    path: tuple[str, ...] = ()
    held_by: str = ""  # "a" or "b": the side whose offer put the call on hold
    # The last SDP each side got from us, and whether it takes UPDATE (its Allow): what telling a
    # phone of a new party needs (UPDATE, else a re-INVITE with the SDP unchanged).
    sdp_to: dict[str, bytes] = dataclasses.field(default_factory=dict)
    allows_update: dict[str, bool] = dataclasses.field(default_factory=dict)
    # The identity each side's phone was last told of (number, name): told once, not again when
    # the same news comes a second way (a loop collapsed here, and the peer's word of it).
    told: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
    transfer: Transfer | None = None  # a REFER being carried out
    loop_of: str = ""  # this call came back over the trunk as part of that call: collapse once set up
    # The call's trace: its setup span (open until the answer) and the context later spans join.
    trace: Context | None = None
    setup_span: Span | None = None
    extra: list[Branch] = dataclasses.field(default_factory=list)  # legs that joined later (their lines)
    started_at: float = dataclasses.field(default_factory=time.time)
    answered_at: float | None = None
    end_reason: str = ""


def called_number(request: Request) -> str:
    """The number dialed: the Request-URI's user part."""
    return request.uri.user if isinstance(request.uri, SipURI) and request.uri.user else ""


def parse_address(text: str) -> Address:
    """``host:port`` (``[v6]:port`` too) as the sockets want it."""
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)
