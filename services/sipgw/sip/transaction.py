"""The transaction layer (RFC 3261 section 17, with RFC 6026's fix for 2xx to INVITE).

Four state machines, each named as the RFC names its states and timers:

    INVITE client      Calling -> Proceeding -> Completed (non-2xx, ACK sent here) / Accepted (2xx)
    non-INVITE client  Trying -> Proceeding -> Completed
    INVITE server      Proceeding -> Completed (non-2xx, wait ACK) -> Confirmed / Accepted (2xx)
    non-INVITE server  Trying -> Proceeding -> Completed

Retransmissions run only over UDP. Timers are ``loop.call_later`` handles, not tasks: a gateway at
a few thousand calls per second holds tens of thousands of transactions at once. Every
transaction ends in Terminated and leaves the table.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
from collections.abc import Callable

from services.sipgw.sip.fields import MAGIC_COOKIE
from services.sipgw.sip.headers import Headers
from services.sipgw.sip.message import Request, Response
from services.sipgw.sip.transport import Address, Link

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Timers:
    """RFC 3261 section 17.1.1.1 and table 4; tests shrink them."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0

    @property
    def b(self) -> float:  # INVITE client gives up; F, H, J, L, M are the same 64*T1
        return 64 * self.t1


def new_branch() -> str:
    return MAGIC_COOKIE + secrets.token_hex(8)


def _no_response(response: Response) -> None:
    return None


def _no_timeout() -> None:
    return None


def _reliable(link: Link) -> bool:
    return link.name != "UDP"


class _Transaction:
    state = ""

    def __init__(self, layer: TransactionLayer, key: tuple[str, ...], link: Link, address: Address):
        self.layer = layer
        self.key = key
        self.link = link
        self.address = address
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def _start(self, name: str, delay: float, action: Callable[[], None]) -> None:
        self._stop(name)
        self._timers[name] = self.layer.loop.call_later(delay, action)

    def _stop(self, name: str) -> None:
        handle = self._timers.pop(name, None)
        if handle is not None:
            handle.cancel()

    def _terminate(self) -> None:
        self.state = "Terminated"
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        self.layer._forget(self)


class ClientTransaction(_Transaction):
    """Sends one request and delivers its responses; ``on_timeout`` fires on Timer B/F or no route."""

    def __init__(
        self,
        layer: TransactionLayer,
        request: Request,
        link: Link,
        address: Address,
        on_response: Callable[[Response], None],
        on_timeout: Callable[[], None],
    ):
        super().__init__(layer, (request.top_via.branch or "", request.cseq.method), link, address)
        self.request = request
        self.invite = request.method == "INVITE"
        self.on_response = on_response
        self.on_timeout = on_timeout
        self._wire = request.to_bytes()
        self.state = "Calling" if self.invite else "Trying"

    def start(self) -> None:
        timers = self.layer.timers
        self.link.send(self._wire, self.address)
        if not _reliable(self.link):
            self._retransmit_after(timers.t1)
        self._start("B", timers.b, self._timed_out)  # Timer B (INVITE) or F (non-INVITE)

    def _retransmit_after(self, interval: float) -> None:
        def fire() -> None:
            if self.state in ("Calling", "Trying") or (self.state == "Proceeding" and not self.invite):
                self.link.send(self._wire, self.address)
                next_interval = interval * 2 if self.invite else min(interval * 2, self.layer.timers.t2)
                self._retransmit_after(next_interval)

        self._start("A", interval, fire)  # Timer A (INVITE) or E (non-INVITE)

    def _terminate(self) -> None:
        super()._terminate()
        # Nothing is delivered once Terminated: the owner's callbacks go, so that an owner that
        # holds this transaction (a fork's branch) is not kept in a cycle through them.
        self.on_response, self.on_timeout = _no_response, _no_timeout

    def _timed_out(self) -> None:
        if self.state in ("Calling", "Trying", "Proceeding"):
            on_timeout = self.on_timeout
            self._terminate()
            on_timeout()
        elif self.state in ("Accepted", "Completed"):
            self._terminate()

    def receive(self, response: Response) -> None:
        status = response.status
        if self.state == "Terminated":
            return
        if status < 200:
            if self.state in ("Calling", "Trying", "Proceeding"):
                self.state = "Proceeding"
                if self.invite:
                    self._stop("A")
                self.on_response(response)
            return
        if self.invite:
            self._invite_final(response)
        elif self.state in ("Trying", "Proceeding"):
            self.state = "Completed"
            self._stop("A")
            self._stop("B")
            self.on_response(response)
            self._start("K", 0 if _reliable(self.link) else self.layer.timers.t4, self._terminate)

    def _invite_final(self, response: Response) -> None:
        if 200 <= response.status < 300:
            if self.state in ("Calling", "Proceeding"):
                # RFC 6026: stay Accepted for Timer M so 2xx retransmissions reach the dialog layer.
                self.state = "Accepted"
                self._stop("A")
                self._start("B", self.layer.timers.b, self._terminate)  # Timer M
            if self.state == "Accepted":
                self.on_response(response)
            return
        if self.state in ("Calling", "Proceeding"):
            self.state = "Completed"
            self._stop("A")
            self._stop("B")
            self.on_response(response)
            self._start("D", 0 if _reliable(self.link) else 32.0, self._terminate)
        if self.state == "Completed":
            self.layer.send_direct(self._ack_for(response), self.link, self.address)  # retransmissions too

    def _ack_for(self, response: Response) -> Request:
        """RFC 3261 17.1.1.3: the ACK for a non-2xx final response belongs to the transaction."""
        original = self.request.headers
        headers = Headers()
        headers.add("Via", original.get_lines("Via")[0].split(",")[0])
        for name in ("Route", "From"):
            for value in original.get_lines(name):
                headers.add(name, value)
        headers.add("To", response.headers.get("To") or "")
        headers.add("Call-ID", self.request.call_id)
        headers.add("CSeq", f"{self.request.cseq.number} ACK")
        headers.add("Max-Forwards", "70")
        return Request("ACK", self.request.uri, headers)


class ServerTransaction(_Transaction):
    """Holds one received request; ``respond`` sends (and over UDP retransmits) the answer."""

    def __init__(self, layer: TransactionLayer, key: tuple[str, ...], request: Request, link: Link, address: Address):
        super().__init__(layer, key, link, address)
        self.request = request
        self.invite = request.method == "INVITE"
        self.state = "Proceeding" if self.invite else "Trying"
        self.last: bytes | None = None
        self.on_ack: Callable[[Request], None] | None = None
        self.on_cancel: Callable[[Request], None] | None = None

    def respond(self, response: Response) -> None:
        if self.state in ("Completed", "Confirmed", "Accepted", "Terminated"):
            return
        wire = response.to_bytes()
        self.last = wire
        self.link.send(wire, self.address)
        status_class = f"{response.status // 100}xx"
        counts = self.layer.responses_sent
        counts[status_class] = counts.get(status_class, 0) + 1
        timers = self.layer.timers
        reliable = _reliable(self.link)
        if response.status < 200:
            if not self.invite:
                self.state = "Proceeding"
            return
        if not self.invite:
            self.state = "Completed"
            self._start("J", 0 if reliable else timers.b, self._terminate)
        elif response.status < 300:
            # RFC 6026: Accepted absorbs INVITE retransmissions; the 2xx itself is the dialog's to resend.
            self.state = "Accepted"
            self._start("L", timers.b, self._terminate)
        else:
            self.state = "Completed"
            if not reliable:
                self._resend_after(timers.t1)
            self._start("H", timers.b, self._terminate)

    def drop(self) -> None:
        """No answer will ever be sent (the request is refused silently): the transaction goes now
        rather than wait in the table forever. A retransmission is then a new request, refused
        the same way."""
        if self.last is None and self.state in ("Trying", "Proceeding"):
            self._terminate()

    def _resend_after(self, interval: float) -> None:
        def fire() -> None:
            if self.state == "Completed" and self.last is not None:
                self.link.send(self.last, self.address)
                self._resend_after(min(interval * 2, self.layer.timers.t2))

        self._start("G", interval, fire)

    def receive_again(self, request: Request) -> None:
        """A retransmission of the request, or the ACK of a non-2xx final answer."""
        if request.method == "ACK":
            if self.state == "Completed":
                self.state = "Confirmed"
                self._stop("G")
                self._stop("H")
                self._start("I", 0 if _reliable(self.link) else self.layer.timers.t4, self._terminate)
            return
        if self.last is not None and self.state in ("Proceeding", "Trying", "Completed"):
            self.link.send(self.last, self.address)


class TransactionLayer:
    """Matches what the transport delivers to transactions and hands the rest to the core.

    ``on_request(transaction, request)`` gets each new request (ACK for a 2xx and stray CANCELs
    come with a transaction that expects no answer); ``on_stray(response)`` gets responses that
    match no client transaction.
    """

    def __init__(
        self,
        on_request: Callable[[ServerTransaction, Request], None],
        on_stray: Callable[[Response], None] | None = None,
        timers: Timers | None = None,
    ):
        # Called on every request this layer sends (ACKs it makes included), before it goes out:
        # the gateway signs its trunk requests here.
        self.sign: Callable[[Request, Link], None] | None = None
        self.on_request = on_request
        self.on_stray = on_stray
        self.timers = timers or Timers()
        self.loop = asyncio.get_event_loop()
        self.clients: dict[tuple[str, ...], ClientTransaction] = {}
        self.responses_sent: dict[str, int] = {}  # "1xx".."6xx" -> responses sent (retransmissions not counted)
        self.servers: dict[tuple[str, ...], ServerTransaction] = {}

    def send_direct(self, request: Request, link: Link, address: Address) -> None:
        """A request outside any transaction (the ACK for a 2xx), signed like the others."""
        if self.sign is not None:
            self.sign(request, link)
        link.send(request.to_bytes(), address)

    def send_request(
        self,
        request: Request,
        link: Link,
        address: Address,
        on_response: Callable[[Response], None],
        on_timeout: Callable[[], None],
    ) -> ClientTransaction:
        if self.sign is not None:
            self.sign(request, link)
        transaction = ClientTransaction(self, request, link, address, on_response, on_timeout)
        self.clients[transaction.key] = transaction
        transaction.start()
        return transaction

    def receive(self, message: Request | Response, source: Address, link: Link) -> None:
        """The transport's receiver."""
        if isinstance(message, Response):
            key = (message.top_via.branch or "", message.cseq.method)
            client = self.clients.get(key)
            if client is not None:
                client.receive(message)
            elif self.on_stray is not None:
                self.on_stray(message)
            return
        server_key = self._server_key(message)
        existing = self.servers.get(server_key)
        if existing is not None and not (message.method == "ACK" and existing.state == "Accepted"):
            existing.receive_again(message)
            return
        # An ACK for a 2xx that reuses the INVITE's branch (some phones do) still reaches the core.
        transaction = ServerTransaction(self, server_key, message, link, source)
        if message.method != "ACK":
            self.servers[server_key] = transaction
        self.on_request(transaction, message)

    def invite_for(self, cancel: Request) -> ServerTransaction | None:
        """The INVITE server transaction a CANCEL is about (same branch and sent-by)."""
        return self.servers.get((*self._server_key(cancel)[:2], "INVITE"))

    @staticmethod
    def _server_key(request: Request) -> tuple[str, ...]:
        """RFC 3261 17.2.3: branch and sent-by; the method, with ACK matching its INVITE."""
        via = request.top_via
        sent_by = f"{via.host}:{via.port or ''}"
        method = "INVITE" if request.method == "ACK" else request.method
        return (via.branch or "", sent_by, method)

    def _forget(self, transaction: _Transaction) -> None:
        table: dict[tuple[str, ...], ClientTransaction] | dict[tuple[str, ...], ServerTransaction]
        table = self.clients if isinstance(transaction, ClientTransaction) else self.servers
        if table.get(transaction.key) is transaction:
            del table[transaction.key]
