"""Other servers' trunk addresses as the sockets want them.

A member record may advertise its trunk by name (a Kubernetes Service, a DNS name): the gateway
resolves it here, off the call path, and refreshes it now and then, since a name's address can
change. The names come from the group's registry (etcd, behind its own authentication), never from
a SIP message. A call to a server whose name is not resolved (yet) gets 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket

from services.runtime.addresses import parse_host_port
from services.sipgw.sip.transport import Address

_log = logging.getLogger(__name__)

REFRESH_SECONDS = 60.0


class TrunkAddresses:
    def __init__(self) -> None:
        self._known: dict[str, Address] = {}  # "host:port" as advertised -> (ip, port)
        self._names: set[str] = set()  # the advertised values that need resolving
        self._pending: dict[str, asyncio.Task[None]] = {}
        self._refresh: asyncio.Task[None] | None = None
        # Names resolve to addresses of the family the trunk's own socket speaks ("localhost" may
        # well be ::1 first, which an IPv4 socket cannot send to).
        self.family = socket.AF_INET

    def address(self, advertised: str) -> Address | None:
        """The socket address for an advertised ``host:port``; None while a name is unresolved."""
        known = self._known.get(advertised)
        if known is not None:
            return known
        host, port = parse_host_port(advertised)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            self.learn(advertised)
            return None
        self._known[advertised] = (host, port)
        return (host, port)

    def learn(self, advertised: str) -> None:
        """Starts resolving an advertised address (a route just named it)."""
        if not advertised or advertised in self._known or advertised in self._pending:
            return
        host, _ = parse_host_port(advertised)
        try:
            ipaddress.ip_address(host)
            return
        except ValueError:
            pass
        self._names.add(advertised)
        self._pending[advertised] = asyncio.create_task(self._resolve(advertised))
        if self._refresh is None:
            self._refresh = asyncio.create_task(self._refresh_now_and_then())

    async def _resolve(self, advertised: str) -> None:
        host, port = parse_host_port(advertised)
        try:
            found = await asyncio.get_running_loop().getaddrinfo(host, port, family=self.family, type=socket.SOCK_DGRAM)
        except OSError as error:
            _log.warning("trunk address %s does not resolve: %s", advertised, error)
        else:
            ip, resolved_port = found[0][4][0], int(found[0][4][1])
            if self._known.get(advertised) != (ip, resolved_port):
                _log.info("trunk address %s is %s:%s", advertised, ip, resolved_port)
            self._known[advertised] = (str(ip), resolved_port)
        finally:
            self._pending.pop(advertised, None)

    async def _refresh_now_and_then(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_SECONDS)
            for advertised in list(self._names):
                if advertised not in self._pending:
                    self._pending[advertised] = asyncio.create_task(self._resolve(advertised))

    async def close(self) -> None:
        tasks = [*self._pending.values(), *([self._refresh] if self._refresh else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
