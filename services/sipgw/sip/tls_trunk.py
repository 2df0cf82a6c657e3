"""The inter-server trunk over TLS (RFC 3261 section 26, RFC 5630): SIP on TLS connections between
the gateways of a group, with the group's CA on both ends.

A gateway with ``tls`` configured listens for the trunk on TLS (TCP, ``listen.trunk``) and takes
only connections that present a certificate of the group's CA naming a live member of the group;
toward a peer it opens one TLS connection per peer address and checks that the certificate there
names the server the plan says lives at that address (the host name checked is the server id). A
request that comes in is tagged with the server its connection proved (``peer_id``): the trunk
then refuses one that claims another origin. The HMAC proof of each request stays, as a second
factor. Messages sent while a connection is being opened wait for it (a few, in order); if it
cannot be opened they are dropped and the transaction layer's timers report the failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import cast

from services.runtime.pki import identity_of
from services.sipgw.sip.transport import Address, Gate, Receiver, TcpConnection, _Inbound

_log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 5.0
MAX_WAITING = 64  # messages kept for a connection being opened


def contexts(ca_file: str, cert_file: str, key_file: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """The listening side's context (client certificates required) and the connecting side's."""
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=ca_file)
    server.verify_mode = ssl.CERT_REQUIRED
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    client.load_cert_chain(cert_file, key_file)
    for context in (server, client):
        context.minimum_version = ssl.TLSVersion.TLSv1_2
    return server, client


def server_named(transport: asyncio.BaseTransport) -> str | None:
    """The server id the other end's verified certificate names, if it names a server."""
    cert = transport.get_extra_info("peercert") or {}
    uris = [value for kind, value in cert.get("subjectAltName", ()) if kind == "URI"]
    identity = identity_of(uris)
    return identity.name if identity is not None and identity.kind == "server" else None


class TlsConnection(TcpConnection):
    """One TLS connection of the trunk, accepted or opened: a TCP connection of the SIP transport
    whose other end must prove a member of the group before anything it sends is read."""

    def __init__(self, owner: TlsTrunk, key: Address | None = None):
        super().__init__(owner.inbound, owner.pool, "TLS")
        self.owner = owner
        self._key = key  # the peer address it was opened to (None: accepted)
        self.local = owner.local
        self.peer_id: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.owner.reload_if_changed()  # for the next handshake
        peer = transport.get_extra_info("peername")
        self.peer = (peer[0], peer[1])
        self.peer_id = server_named(transport)
        if self.peer_id is None or not self.owner.is_member(self.peer_id):
            why = (
                "its certificate names no server" if self.peer_id is None else f"server {self.peer_id} is not a member"
            )
            _log.warning("trunk TLS connection from %s:%s refused: %s", *self.peer, why)
            self.owner.refused += 1
            transport.close()
            return
        self._transport = cast(asyncio.Transport, transport)
        self.owner.pool[self._key or self.peer] = self

    def connection_lost(self, exc: Exception | None) -> None:
        key = self._key or self.peer
        if self.owner.pool.get(key) is self:
            del self.owner.pool[key]


class TlsTrunk:
    """The trunk's link: a TLS listener, and connections opened to peers on demand."""

    name = "TLS"

    def __init__(
        self,
        receiver: Receiver,
        files: tuple[str, str, str],
        server_at: Callable[[Address], str | None],
        is_member: Callable[[str], bool],
        gate: Gate | None = None,
    ):
        self.inbound = _Inbound(receiver, gate)
        self.files = files
        self.server_context, self.client_context = contexts(*files)
        self.server_at = server_at  # the member whose trunk the plan puts at an address
        self.is_member = is_member
        self.pool: dict[Address, TcpConnection] = {}
        self.refused = 0
        self.local: Address = ("", 0)
        self._server: asyncio.Server | None = None
        self._waiting: dict[Address, list[bytes]] = {}
        self._opening: set[asyncio.Task[None]] = set()
        self._stamps = self._file_stamps()

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        receiver: Receiver,
        files: tuple[str, str, str],
        server_at: Callable[[Address], str | None],
        is_member: Callable[[str], bool],
        gate: Gate | None = None,
    ) -> TlsTrunk:
        trunk = cls(receiver, files, server_at, is_member, gate)
        loop = asyncio.get_running_loop()
        trunk._server = await loop.create_server(
            lambda: TlsConnection(trunk),
            host,
            port,
            ssl=trunk.server_context,
            reuse_address=True,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
        )
        sockname = trunk._server.sockets[0].getsockname()
        trunk.local = (sockname[0], sockname[1])
        return trunk

    def send(self, data: bytes, address: Address) -> None:
        connection = self.pool.get(address)
        if connection is not None:
            connection.send(data, address)
            return
        waiting = self._waiting.get(address)
        if waiting is not None:
            if len(waiting) < MAX_WAITING:
                waiting.append(data)
            return
        self._waiting[address] = [data]
        task = asyncio.get_running_loop().create_task(self._open(address))
        self._opening.add(task)
        task.add_done_callback(self._opening.discard)

    async def _open(self, address: Address) -> None:
        waiting = self._waiting[address]
        try:
            server_id = self.server_at(address)
            if server_id is None:
                _log.warning("trunk: no member of the group has its trunk at %s:%s; not connecting", *address)
                return
            self.reload_if_changed()
            loop = asyncio.get_running_loop()
            try:
                _, connection = await asyncio.wait_for(
                    loop.create_connection(
                        lambda: TlsConnection(self, address),
                        address[0],
                        address[1],
                        ssl=self.client_context,
                        server_hostname=server_id,
                    ),
                    HANDSHAKE_TIMEOUT,
                )
            except (OSError, ssl.SSLError, TimeoutError) as error:
                _log.warning("trunk: TLS to server %s at %s:%s failed: %s", server_id, *address, error)
                return
            for data in waiting:
                connection.send(data, address)
        finally:
            self._waiting.pop(address, None)

    def _file_stamps(self) -> tuple[float, ...]:
        stamps = []
        for name in self.files:
            with contextlib.suppress(OSError):
                stamps.append(Path(name).stat().st_mtime)
        return tuple(stamps)

    def reload_if_changed(self) -> None:
        """Renewed certificates (or a CA added to the bundle) serve from the next handshake on."""
        stamps = self._file_stamps()
        if stamps == self._stamps:
            return
        try:
            for context in (self.server_context, self.client_context):
                context.load_cert_chain(self.files[1], self.files[2])
                context.load_verify_locations(cafile=self.files[0])
        except (OSError, ssl.SSLError) as error:
            _log.error("trunk: TLS files changed but do not load (%s); the loaded ones stay in use", error)
            return
        self._stamps = stamps
        _log.info("trunk: TLS files reloaded")

    def close(self) -> None:
        for connection in list(self.pool.values()):
            connection.close()
        for task in self._opening:
            task.cancel()
        if self._server is not None:
            self._server.close()
