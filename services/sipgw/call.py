"""One call through the gateway: two legs, their dialogs, and what the API shows of it."""

from __future__ import annotations

import asyncio
import dataclasses
import time

from services.sipgw.sip import Request, SipURI
from services.sipgw.sip.dialog import Dialog
from services.sipgw.sip.transaction import ClientTransaction, ServerTransaction
from services.sipgw.sip.transport import Address, Link

RINGING, ANSWERED, ENDED = "ringing", "answered", "ended"


@dataclasses.dataclass
class Call:
    id: str
    caller: str
    callee: str
    a_tx: ServerTransaction
    a_tag: str
    b_request: Request
    b_address: Address
    b_link: Link
    b_tx: ClientTransaction | None = None
    a_dialog: Dialog | None = None
    b_dialog: Dialog | None = None
    state: str = "dialing"
    # A 2xx we sent to an INVITE of side "a" or "b", resent until its ACK (RFC 3261 13.3.1.4).
    unacked: dict[str, asyncio.TimerHandle] = dataclasses.field(default_factory=dict)
    canceled: bool = False
    trunk_in: bool = False  # each holds one trunk line until the call ends
    trunk_out: bool = False
    started_at: float = dataclasses.field(default_factory=time.time)
    answered_at: float | None = None
    end_reason: str = ""

    @property
    def a_address(self) -> Address:
        return self.a_tx.address


def called_number(request: Request) -> str:
    """The number dialed: the Request-URI's user part."""
    return request.uri.user if isinstance(request.uri, SipURI) and request.uri.user else ""


def parse_address(text: str) -> Address:
    """``host:port`` (``[v6]:port`` too) as the sockets want it."""
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)
