"""Gateways and phones in one process, on an in-memory network: the call core's rules tested
without sockets.

Each gateway is the real SIP core (transactions, dialogs, B2BUA, trunk proof and lines, router)
on fake links; the registry's plan is filled in directly and phones prove who they are by
being listed (digest is tested elsewhere). Every message is serialized and parsed again on its
way, and delivered on the next turn of the event loop, as a socket would.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections.abc import Callable
from typing import Any

from pbxmesh.registry.v1 import registry_pb2 as rpb
from services.sipgw.auth.trunk_proof import TrunkProof
from services.sipgw.core import SipCore
from services.sipgw.plan_feed import PlanFeed
from services.sipgw.registrar import Bindings, Decision
from services.sipgw.sip import Request, Response, parse
from services.sipgw.sip.dialog import Dialog, new_tag
from services.sipgw.sip.transaction import Timers, new_branch
from services.sipgw.sip.transport import Address, response_to, stamp_via
from services.sipgw.trunk import Trunk
from services.sipgw.trunk_lines import TrunkLines

FAST = Timers(t1=0.01, t2=0.08, t4=0.1)
SECRET = "a-group-secret-for-unit-tests"
_ports = itertools.count(7000)


class Network:
    """Delivers what a link sends to whoever listens at the address, a turn later."""

    def __init__(self) -> None:
        self.listeners: dict[Address, Callable[[Request | Response, Address], None]] = {}
        self.dropped: list[tuple[bytes, Address]] = []

    def deliver(self, data: bytes, source: Address, destination: Address) -> None:
        listener = self.listeners.get(destination)
        if listener is None:
            self.dropped.append((data, destination))
            return
        message = parse(data)
        message.check()
        if isinstance(message, Request):
            stamp_via(message, source)
        asyncio.get_running_loop().call_soon(listener, message, source)


class Link:
    def __init__(self, network: Network, name: str = "UDP") -> None:
        self.network = network
        self.name = name
        self.local: Address = ("127.0.0.1", next(_ports))

    def send(self, data: bytes, address: Address) -> None:
        self.network.deliver(data, self.local, address)


class Phones:
    """The registrar as the core sees it: every listed number is who it says it is."""

    def __init__(self) -> None:
        self.bindings = Bindings()

    def authorize(self, request: Request, source: Address) -> Decision:
        user = getattr(request.from_addr.uri, "user", None)
        return Decision(None, 0.0, user)


class Gateway:
    def __init__(self, network: Network, server_id: str, numbers: list[str], lines: int = 4):
        self.server_id = server_id
        self.network = network
        self.phones = Phones()
        self.plan = PlanFeed("127.0.0.1:1")  # never started: the tests fill the plan in
        self.trunk = Trunk(server_id, TrunkProof(SECRET), TrunkLines(lines))
        self.core = SipCore(
            self.phones,  # type: ignore[arg-type]
            set(numbers),
            self.plan,
            self.trunk,
            ring_timeout=10,
        )
        self.core.transactions.timers = FAST
        self.link = Link(network)
        self.trunk_link = Link(network)
        self.trunk.endpoint = self.trunk_link  # type: ignore[assignment]
        self.core.router.phone_links["UDP"] = self.link
        for link in (self.link, self.trunk_link):
            network.listeners[link.local] = functools.partial(self._receive, link)
        self.numbers = numbers

    def _receive(self, link: Link, message: Request | Response, source: Address) -> None:
        self.core.transactions.receive(message, source, link)

    @property
    def calls(self) -> Any:
        return self.core.calls

    def knows(self, *others: Gateway) -> None:
        """The plan names the other gateways' numbers and trunks (as the registry would)."""
        for other in others:
            trunk = f"{other.trunk_link.local[0]}:{other.trunk_link.local[1]}"
            for number in other.numbers:
                self.plan.routes[number] = rpb.Route(number=number, server_id=other.server_id, trunk_address=trunk)

    def lines_in_use(self) -> int:
        return self.trunk.lines.usage.in_use


def group(*gateways: Gateway) -> None:
    for gateway in gateways:
        gateway.knows(*(g for g in gateways if g is not gateway))


class Phone:
    """A phone registered on a gateway: answers every call (SDP offer or answer as asked), takes
    UPDATE, re-INVITE, NOTIFY and BYE, and can call, transfer and hang up."""

    def __init__(self, network: Network, gateway: Gateway, number: str, answer: bool = True):
        self.network, self.gateway, self.number = network, gateway, number
        self.address: Address = ("127.0.0.1", next(_ports))
        self.answers = answer
        self.received: list[Request] = []
        self.dialogs: list[Dialog] = []  # the phone's side of each call it is in, newest last
        self.responses: list[Response] = []
        self.version = 1
        network.listeners[self.address] = self._receive
        gateway.phones.bindings.update(number, [(self._contact(), 3600)], f"{self.address[0]}:{self.address[1]}",
                                       f"reg-{number}", 1)  # fmt: skip

    def _contact(self) -> str:
        return f"sip:{self.number}@{self.address[0]}:{self.address[1]}"

    def sdp(self) -> bytes:
        self.version += 1
        return (
            f"v=0\r\no={self.number} 1 {self.version} IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio {self.address[1] + 1000} RTP/AVP 0\r\n"
        ).encode()

    def _send(self, data: bytes) -> None:
        self.network.deliver(data, self.address, self.gateway.link.local)

    def _receive(self, message: Request | Response, source: Address) -> None:
        if isinstance(message, Response):
            self.responses.append(message)
            return
        self.received.append(message)
        if message.method == "ACK":
            return
        if message.method == "INVITE" and not message.to_addr.tag:
            if not self.answers:
                self._send(response_to(message.headers, 486, "Busy Here").to_bytes())
                return
            tag = new_tag()
            answer = self._answer(message, 200, tag)
            self.dialogs.append(Dialog.as_uas(message, tag, f"<{self._contact()}>"))
            self._send(answer.to_bytes())
            return
        status = 200
        answer = response_to(message.headers, status, "OK")
        if message.method == "INVITE":
            answer.headers.add("Contact", f"<{self._contact()}>")
            answer.headers.add("Content-Type", "application/sdp")
            answer.body = self.sdp()
        self._send(answer.to_bytes())

    def _answer(self, invite: Request, status: int, tag: str) -> Response:
        answer = response_to(invite.headers, status, "OK")
        answer.headers.set("To", f"{invite.headers.get('To')};tag={tag}")
        answer.headers.add("Contact", f"<{self._contact()}>")
        answer.headers.add("Allow", "INVITE, ACK, BYE, CANCEL, UPDATE, REFER, NOTIFY")
        answer.headers.add("Content-Type", "application/sdp")
        answer.body = self.sdp()
        return answer

    def _via(self) -> str:
        return f"SIP/2.0/UDP {self.address[0]}:{self.address[1]}"

    def call(self, number: str) -> None:
        """Dials ``number``; the call's dialog is made from the gateway's 200 OK (ACKed)."""
        tag, call_id, body = new_tag(), f"{new_tag()}@{self.address[0]}", self.sdp()
        invite = parse(
            f"INVITE sip:{number}@{self.gateway.link.local[0]} SIP/2.0\r\n"
            f"Via: {self._via()};branch={new_branch()};rport\r\nMax-Forwards: 70\r\n"
            f"From: <sip:{self.number}@127.0.0.1>;tag={tag}\r\nTo: <sip:{number}@127.0.0.1>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <{self._contact()}>\r\n"
            "Allow: INVITE, ACK, BYE, CANCEL, UPDATE, REFER, NOTIFY\r\nContent-Type: application/sdp\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        assert isinstance(invite, Request)
        self._outgoing = invite
        self._send(invite.to_bytes())

    def ack_answer(self) -> None:
        """ACKs the 200 OK to the call this phone placed, making its dialog."""
        answer = next(r for r in reversed(self.responses) if r.status == 200 and r.cseq.method == "INVITE")
        dialog = Dialog.as_uac(self._outgoing, answer)
        self.dialogs.append(dialog)
        self._send(dialog.ack(self._via(), 1).to_bytes())

    def in_dialog(self, method: str, extra: dict[str, str] | None = None, sdp: bytes = b"") -> Request:
        dialog = self.dialogs[-1]
        request = dialog.request(method, self._via(), sdp, "application/sdp" if sdp else "")
        for name, value in (extra or {}).items():
            request.headers.add(name, value)
        self._send(request.to_bytes())
        return request

    def transfer(self, number: str) -> None:
        """A blind transfer of the phone's current call to ``number``."""
        self.in_dialog("REFER", {"Refer-To": f"<sip:{number}@127.0.0.1>"})

    def hang_up(self) -> None:
        self.in_dialog("BYE")

    def got(self, method: str) -> list[Request]:
        return [r for r in self.received if r.method == method]

    def told(self) -> list[str]:
        """The identities the gateway told this phone of (P-Asserted-Identity of UPDATE/re-INVITE)."""
        return [
            r.headers.get("P-Asserted-Identity") or "" for r in self.received if r.headers.get("P-Asserted-Identity")
        ]


async def settle(condition: Callable[[], bool], what: str, timeout: float = 3.0) -> None:
    """Runs the loop until ``condition`` holds (messages travel a turn at a time)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not so after {timeout} s: {what}")
        await asyncio.sleep(0.005)
