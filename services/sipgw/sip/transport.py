"""The transport layer (RFC 3261 section 18): UDP and TCP on one address each.

What arrives is parsed and handed up with the address it came from and the link to answer on.
A request's top Via is stamped with ``received`` and ``rport`` (RFC 3581), so that answers go
back to where the request really came from, never to a host named inside the message. A request
that cannot be parsed but can be answered gets its 400 (or 505) here; anything else malformed is
dropped. On TCP a framing error closes the connection, as the stream can no longer be trusted.
A ``Gate`` (the gateway's admission) may stop a datagram before it is parsed and a 400 before it
is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl as ssl_module
from collections.abc import Callable
from typing import Protocol, cast

from services.sipgw.sip.errors import ParseError
from services.sipgw.sip.fields import parse_via
from services.sipgw.sip.headers import Headers, split_list
from services.sipgw.sip.message import Request, Response
from services.sipgw.sip.parser import StreamFramer, parse

_log = logging.getLogger(__name__)

Address = tuple[str, int]
UDP_BUFFER = 4 * 1024 * 1024  # bursts of a few thousand calls per second must not overflow it
DIAL_TIMEOUT = 10.0  # seconds to open a TCP connection to a provider


class Link(Protocol):
    """Where a message came in, and how to send on the same path."""

    name: str  # "UDP" or "TCP"
    local: Address

    def send(self, data: bytes, address: Address) -> None: ...


Receiver = Callable[[Request | Response, Address, Link], None]


class Gate(Protocol):
    """Asked before any work is done on what arrived (services/sipgw/admission.py)."""

    def before_parse(self, data: bytes, source: Address, link: Link) -> bool:
        """False: drop this datagram without parsing it."""
        ...

    def broken(self, source: Address, link: Link) -> bool:
        """A malformed message arrived; False: send it no 400."""
        ...


def stamp_via(request: Request, source: Address) -> None:
    """RFC 3261 18.2.1 and RFC 3581: note in the top Via where the request came from."""
    lines = request.headers.get_lines("Via")
    first = split_list(lines[0])
    top = parse_via(first[0])
    host, port = source
    params = dict(top.params)
    if top.has_rport:
        params["received"] = host
        params["rport"] = str(port)
    elif top.host.strip("[]") != host:
        params["received"] = host
    else:
        return
    first[0] = str(top._replace(params=params))
    request.headers.set_first("Via", ", ".join(first))


def scheme(link: Link) -> str:
    """The URI scheme of what is reached over ``link``: sips over TLS (RFC 5630: TLS on every hop),
    sip otherwise."""
    return "sips" if link.name == "TLS" else "sip"


def scheme_of(uri: object) -> str:
    """The scheme a Contact takes in a dialog whose request was sent to ``uri`` (RFC 3261 12.1.1:
    sips for a sips Request-URI; a phone that called a sip URI over TLS gets sip)."""
    return "sips" if str(uri).lower().startswith("sips:") else "sip"


def sent_by(link: Link) -> str:
    """The start of our Via for a request leaving on ``link`` ("SIP/2.0/UDP host:port")."""
    return f"SIP/2.0/{link.name} {link.local[0]}:{link.local[1]}"


def reply_to_broken(error: ParseError) -> bytes | None:
    """The answer to a request that failed to parse or check, if it can have one."""
    if not error.can_reply or error.headers is None:
        return None
    reason = "Version Not Supported" if error.status == 505 else f"Bad Request ({error.reason})"
    return response_to(error.headers, error.status, reason).to_bytes()


def response_to(request_headers: Headers, status: int, reason: str) -> Response:
    """A response carrying the fields RFC 3261 8.2.6.2 says to copy: Via, From, To, Call-ID, CSeq."""
    headers = Headers()
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        for value in request_headers.get_lines(name):
            headers.add(name, value)
    return Response(status, reason, headers)


class _Inbound:
    """What both transports do with a message that arrived."""

    def __init__(self, receiver: Receiver, gate: Gate | None = None):
        self.receiver = receiver
        self.gate = gate

    def deliver(self, message: Request | Response, source: Address, link: Link) -> None:
        try:
            message.check()
            if isinstance(message, Request):
                stamp_via(message, source)
        except ParseError as error:
            self.reject(error, source, link)
            return
        self.receiver(message, source, link)

    def reject(self, error: ParseError, source: Address, link: Link) -> None:
        answer = reply_to_broken(error)
        _log.debug("malformed SIP from %s:%s over %s: %s", source[0], source[1], link.name, error.reason)
        allowed = self.gate is None or self.gate.broken(source, link)
        if answer is not None and allowed:
            link.send(answer, source)


class UdpEndpoint(asyncio.DatagramProtocol):
    """One UDP socket: every datagram is one message."""

    name = "UDP"

    def __init__(self, receiver: Receiver, gate: Gate | None = None):
        self._inbound = _Inbound(receiver, gate)
        self._gate = gate
        self._transport: asyncio.DatagramTransport | None = None
        self.local: Address = ("", 0)

    @classmethod
    async def open(cls, host: str, port: int, receiver: Receiver, gate: Gate | None = None) -> UdpEndpoint:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_BUFFER)
        sock.bind((host, port))
        _, endpoint = await loop.create_datagram_endpoint(lambda: cls(receiver, gate), sock=sock)
        return endpoint

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)
        sockname = transport.get_extra_info("sockname")
        self.local = (sockname[0], sockname[1])

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        source = (str(addr[0]), int(str(addr[1])))
        if data.strip(b"\r\n") == b"":
            return  # a keepalive (RFC 5626 section 3.5.1)
        if self._gate is not None and not self._gate.before_parse(data, source, self):
            return
        try:
            message = parse(data)
        except ParseError as error:
            self._inbound.reject(error, source, self)
            return
        self._inbound.deliver(message, source, self)

    def send(self, data: bytes, address: Address) -> None:
        if self._transport is not None:
            self._transport.sendto(data, address)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class TcpConnection(asyncio.Protocol):
    """One TCP (or TLS) connection, accepted or opened; messages are cut from the stream by
    Content-Length."""

    name = "TCP"

    def __init__(self, inbound: _Inbound, pool: dict[Address, TcpConnection], name: str = "TCP"):
        self.name = name
        self._inbound = inbound
        self._pool = pool
        self._framer = StreamFramer()
        self._transport: asyncio.Transport | None = None
        self.local: Address = ("", 0)
        self.peer: Address = ("", 0)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        local, peer = transport.get_extra_info("sockname"), transport.get_extra_info("peername")
        self.local, self.peer = (local[0], local[1]), (peer[0], peer[1])
        self._pool[self.peer] = self

    def data_received(self, data: bytes) -> None:
        try:
            messages = self._framer.feed(data)
        except ParseError as error:
            self._inbound.reject(error, self.peer, self)
            self.close()
            return
        for message in messages:
            self._inbound.deliver(message, self.peer, self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._pool.get(self.peer) is self:
            del self._pool[self.peer]

    def send(self, data: bytes, address: Address) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class TcpListener:
    """Accepts TCP connections on one address, and opens them to send where none is open yet,
    but only to the addresses in ``dialable`` (the providers' configured targets): a connection
    is never opened to an address a message named, nor back to a phone whose own connection
    went. With ``ssl`` it is the TLS listener of phones (RFC 3261 section 26): messages go back to
    a phone over the connection it opened, never over a new one (it has no certificate to check)."""

    name = "TCP"

    def __init__(self, receiver: Receiver, gate: Gate | None = None, ssl: ssl_module.SSLContext | None = None):
        self.ssl = ssl
        self.name = "TLS" if ssl is not None else "TCP"
        self._inbound = _Inbound(receiver, gate)
        self._pool: dict[Address, TcpConnection] = {}
        self._server: asyncio.Server | None = None
        self.local: Address = ("", 0)
        self.dialable: set[Address] = set()
        self._waiting: dict[Address, list[bytes]] = {}  # messages for connections being opened
        self._dialing: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        receiver: Receiver,
        gate: Gate | None = None,
        ssl: ssl_module.SSLContext | None = None,
    ) -> TcpListener:
        listener = cls(receiver, gate, ssl)
        loop = asyncio.get_running_loop()
        listener._server = await loop.create_server(
            lambda: TcpConnection(listener._inbound, listener._pool, listener.name),
            host,
            port,
            reuse_address=True,
            ssl=ssl,
            ssl_handshake_timeout=10.0 if ssl is not None else None,
        )
        sockname = listener._server.sockets[0].getsockname()
        listener.local = (sockname[0], sockname[1])
        return listener

    async def connection_to(self, address: Address) -> TcpConnection:
        """The open connection to ``address``, or a new one."""
        existing = self._pool.get(address)
        if existing is not None:
            return existing
        if self.ssl is not None:
            raise ConnectionError(f"no TLS connection from {address[0]}:{address[1]} to reuse")
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(
            lambda: TcpConnection(self._inbound, self._pool), address[0], address[1]
        )
        return connection

    def send(self, data: bytes, address: Address) -> None:
        connection = self._pool.get(address)
        if connection is not None:
            connection.send(data, address)
        elif address in self._waiting:
            self._waiting[address].append(data)
        elif address in self.dialable and self.ssl is None:
            self._waiting[address] = [data]
            task = asyncio.get_running_loop().create_task(self._dial(address))
            self._dialing.add(task)
            task.add_done_callback(self._dialing.discard)
        else:
            _log.debug("no TCP connection to %s:%s; message dropped", *address)

    async def _dial(self, address: Address) -> None:
        """Opens a connection to ``address`` and sends what waited for it (dropped, with a
        warning, when it cannot be opened: the transactions time out as over a lossy network)."""
        try:
            connection = await asyncio.wait_for(self.connection_to(address), DIAL_TIMEOUT)
        except (OSError, TimeoutError) as error:
            _log.warning("cannot open a TCP connection to %s:%s: %s", *address, error or "timed out")
            self._waiting.pop(address, None)
            return
        for data in self._waiting.pop(address, []):
            connection.send(data, address)

    @property
    def connections(self) -> int:
        return len(self._pool)

    async def close(self) -> None:
        for task in list(self._dialing):
            task.cancel()
        for connection in list(self._pool.values()):
            connection.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
