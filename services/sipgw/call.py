"""One call through the gateway: two legs of one kind, and what the API shows of it.

The gateway is a back-to-back agent: each call is two dialogs it holds itself, one per side. The
caller's side is whoever's INVITE the gateway answered (or, for a call placed through the API,
the phone it rang first); the callee's side is the party rung for it, a phone of this server or
another server behind the trunk. Each side is a ``Leg``: the party, where its packets go, the
dialog with it, and what it was last sent. A transfer or a loop closed here puts a new leg in a
side's place; the call keeps its id. The media plane attaches to legs (one media session each).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from services.sipgw.sip import Request, SipURI
from services.sipgw.sip.dialog import Dialog
from services.sipgw.sip.transaction import ServerTransaction
from services.sipgw.sip.transport import Address, Link

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span

    from services.sipgw.anchor import Anchor
    from services.sipgw.fork import Branch, Fork
    from services.sipgw.handover import HandOver
    from services.sipgw.transfer import Transfer


class Side(enum.StrEnum):
    CALLER = "caller"
    CALLEE = "callee"

    @property
    def other(self) -> Side:
        return Side.CALLEE if self is Side.CALLER else Side.CALLER


class Phase(enum.StrEnum):
    DIALING = "dialing"
    RINGING = "ringing"
    ANSWERED = "answered"
    ENDED = "ended"


class Change(enum.StrEnum):
    """What last happened to a call, as callstate is told."""

    CREATED = "created"
    RINGING = "ringing"
    ANSWERED = "answered"
    HELD = "held"
    RESUMED = "resumed"
    TRANSFERRED = "transferred"  # a new party on one side
    REROUTED = "rerouted"  # the same party through another server (a hand-over)
    ENDED = "ended"


class Kind(enum.StrEnum):
    """What the API and metrics call a call: between own phones, or which way it crosses the trunk."""

    LOCAL = "local"
    TRUNK_IN = "trunk_in"
    TRUNK_OUT = "trunk_out"


@dataclasses.dataclass
class Leg:
    """One side of a call: the party, where its packets go, the gateway's dialog with it."""

    number: str
    name: str
    link: Link
    address: Address
    dialog: Dialog | None = None
    trunk: bool = False  # the party is behind the trunk (another server, or a full URI)
    server: str = ""  # the group's server behind the trunk, when known
    provider: str = ""  # the provider the party is behind (the PSTN), on this server
    peer_instance: str = ""  # that server's gateway process: a restarted one forgot this leg
    # Gives back the trunk line this leg holds; called once, when the leg leaves the call.
    line: Callable[[], None] | None = None
    invite: Request | None = None  # the INVITE the gateway sent to make this leg (its 2xx is ACKed again)
    unacked: asyncio.TimerHandle | None = None  # the gateway's 2xx to it, resent until its ACK
    sdp: bytes = b""  # the last SDP it got from the gateway
    allows_update: bool = False  # its Allow names UPDATE: telling it a new party needs no re-INVITE
    told: tuple[str, str] | None = None  # the identity it was last told of (number, name)
    # Requests its provider challenged: the CSeq one was first sent with -> the one it went again
    # with (a 2xx to a re-INVITE sent again is ACKed with the new one).
    resent: dict[int, int] = dataclasses.field(default_factory=dict)
    refreshed_at: float = dataclasses.field(default_factory=time.monotonic)  # session timer (RFC 4028)

    @classmethod
    def from_branch(cls, branch: Branch, dialog: Dialog, number: str, name: str = "") -> Leg:
        """The leg a forked branch became by answering; its trunk line goes with it."""
        line, branch.release = branch.release, None
        return cls(
            number,
            name,
            branch.link,
            branch.address,
            dialog,
            trunk=branch.over_trunk,
            server=branch.peer_server_id,
            provider=branch.provider,
            line=line,
            invite=branch.request,
        )

    def release_line(self) -> None:
        line, self.line = self.line, None
        if line is not None:
            line()

    def stop_resending(self) -> None:
        if self.unacked is not None:
            self.unacked.cancel()
            self.unacked = None


@dataclasses.dataclass
class Placed:
    """A call placed through the API: its first party answers with an offer, which goes to the
    second; the second's answer comes back in the first party's ACK (RFC 3725 4.1)."""

    fork: Fork  # ringing the first party
    caller: str  # the number the second party sees as the caller
    offer: bytes = b""
    ack_body: tuple[bytes, str] | None = None  # what its ACK carried, for a retransmitted 2xx


@dataclasses.dataclass
class Call:
    id: str
    legs: dict[Side, Leg]
    dialed: str  # the number (or URI) the callee's side was called as
    # The side of this server's own party: the caller unless the call came in over the trunk.
    home: Side = Side.CALLER
    phase: Phase = Phase.DIALING
    invite: ServerTransaction | None = None  # the caller's INVITE, answered by the gateway
    caller_tag: str = ""  # the gateway's To tag toward the caller
    fork: Fork | None = None  # ringing the callee's side
    placed: Placed | None = None
    event: Change = Change.CREATED  # the last change, what callstate is told
    path: tuple[str, ...] = ()  # the servers the call passed before this one, oldest first
    held_by: Side | None = None  # the side whose offer put the call on hold
    transfer: Transfer | None = None  # a REFER being carried out
    handover: HandOver | None = None  # this server was asked to call the server behind a leg directly
    handing_over: bool = False  # this server, in the middle, asked to be left out of the call
    loop_of: str = ""  # this call came back over the trunk as part of that call: closed once set up
    media: Anchor | None = None  # its legs on the media service; None: the parties talk directly
    # The call's trace: its setup span (open until the answer) and the context later spans join.
    trace: Context | None = None
    setup_span: Span | None = None
    started_at: float = dataclasses.field(default_factory=time.time)
    answered_at: float | None = None
    end_reason: str = ""

    def leg(self, side: Side) -> Leg:
        return self.legs[side]

    def party(self, side: Side) -> tuple[str, str]:
        """Number and name shown for a side (before the answer, the callee is the number dialed)."""
        leg = self.legs.get(side)
        if leg is not None:
            return leg.number, leg.name
        if side == Side.CALLER:
            return (self.placed.caller if self.placed is not None else ""), ""
        return self.dialed, ""

    @property
    def caller(self) -> str:
        return self.party(Side.CALLER)[0]

    @property
    def callee(self) -> str:
        return self.party(Side.CALLEE)[0]

    @property
    def kind(self) -> Kind:
        caller, callee = self.legs.get(Side.CALLER), self.legs.get(Side.CALLEE)
        if caller is not None and caller.trunk:
            return Kind.TRUNK_IN
        ringing = self.fork.branches if self.fork is not None and callee is None else []
        if (callee is not None and callee.trunk) or any(b.over_trunk for b in ringing):
            return Kind.TRUNK_OUT
        return Kind.LOCAL

    @property
    def peer_server(self) -> str:
        """The group's server on the far side of this server's party, if any."""
        far = self.legs.get(self.home.other)  # an outgoing trunk call learns it at the answer
        return far.server if far is not None and far.trunk else ""

    def passed(self) -> tuple[str, ...]:
        """Every server the call is known to have been on besides this one: the path it came by,
        then the servers behind its legs (what a trunk INVITE for it carries on)."""
        seen = list(self.path)
        seen += [leg.server for leg in self.legs.values() if leg.server and leg.server not in seen]
        return tuple(seen)

    def dialogs(self) -> list[Dialog]:
        return [leg.dialog for leg in self.legs.values() if leg.dialog is not None]


def called_number(request: Request) -> str:
    """The number dialed: the Request-URI's user part."""
    return request.uri.user if isinstance(request.uri, SipURI) and request.uri.user else ""
