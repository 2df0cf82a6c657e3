"""This server's provider trunks at run time: where each provider is, who may speak for it, its
lines, its DIDs and (when configured) its outbound registration.

A provider's configured address is the only name the gateway ever resolves (RFC 3263, by
``sip/locate.py``): at start and again as the answers' TTLs run out, never while a call waits. A
call from a provider is recognised by its source address alone (``allow_from``, else the
addresses its configured address resolves to), as providers do not authenticate to their
customers; it then may only reach the DIDs configured for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import ipaddress
import logging
import time
from collections.abc import Callable

import grpc
import grpc.aio

from pbxmesh.registry.v1 import registry_pb2 as rpb
from pbxmesh.registry.v1 import registry_pb2_grpc as rpb_grpc
from services.runtime.config_pstn import DidEntry, ProviderEntry, host_and_port, is_ip
from services.runtime.tls import open_channel
from services.sipgw.provider_registration import Registration, RegistrationStatus
from services.sipgw.sip.locate import LocateError, Locator, Target
from services.sipgw.sip.transaction import TransactionLayer
from services.sipgw.sip.transport import Address, Link, TcpListener
from services.sipgw.trunk_lines import TrunkLines

_log = logging.getLogger(__name__)

REFRESH = 60.0  # seconds between two resolutions of a provider's name
REPORT_EVERY = 30.0  # seconds between two reports of the providers' states to the registry
RETRY = 5.0  # seconds before resolving again a name that did not resolve
MAX_REST = 300  # the longest a provider's Retry-After keeps calls from it, in seconds
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclasses.dataclass
class ProviderLink:
    entry: ProviderEntry
    lines: TrunkLines
    networks: tuple[Network, ...]
    targets: list[Target] = dataclasses.field(default_factory=list)
    calls_in: int = 0
    calls_out: int = 0
    failovers: int = 0
    registration: Registration | None = None  # when the provider is registered with
    resting_until: float = 0.0  # a 503 with Retry-After: no calls to it before (monotonic time)
    changed: Callable[[], None] = lambda: None  # told when whether it may take calls may have changed

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def domain(self) -> str:
        """The host named in Request-URIs, From and To."""
        return self.entry.domain or host_and_port(self.entry.address)[0]

    @property
    def codecs(self) -> tuple[str, ...]:
        return self.entry.codecs

    @property
    def up(self) -> bool:
        """Whether the provider may be offered calls now: it has an address and, when it is
        registered with, its registration holds."""
        registration = self.registration
        registered = registration is None or registration.status.state == "registered"
        return bool(self.targets) and registered and not self.resting

    @property
    def resting(self) -> bool:
        return time.monotonic() < self.resting_until

    def rest(self, retry_after: str | None) -> None:
        """A 503 with Retry-After (RFC 3261 21.5.4): no call goes to it for that long (at most
        MAX_REST seconds; a value that is not a number of seconds is ignored)."""
        seconds = (retry_after or "").split(";")[0].split("(")[0].strip()
        if seconds.isdigit() and int(seconds) > 0:
            rest = min(int(seconds), MAX_REST)
            self.resting_until = time.monotonic() + rest
            _log.warning("provider %s asks for no calls for %s s (503, Retry-After)", self.name, seconds)
            self.changed()
            with contextlib.suppress(RuntimeError):  # no loop: a unit test of the link alone
                asyncio.get_running_loop().call_later(rest, self.changed)

    def allows(self, source: Address) -> bool:
        try:
            ip = ipaddress.ip_address(source[0])
        except ValueError:
            return False
        networks = self.networks or tuple(ipaddress.ip_network(t.host) for t in self.targets)
        return any(ip in network for network in networks)


class Providers:
    def __init__(self, entries: tuple[ProviderEntry, ...], locator: Locator | None = None):
        self.locator = locator or Locator()
        self.links = [
            ProviderLink(e, TrunkLines(e.lines), tuple(ipaddress.ip_network(n, strict=False) for n in e.allow_from))
            for e in entries
        ]
        self._dids: dict[str, tuple[ProviderLink, DidEntry]] = {
            d.did: (link, d) for link in self.links for d in link.entry.dids
        }
        self.tcp: TcpListener | None = None
        self._task: asyncio.Task[None] | None = None
        self._report: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        for link in self.links:
            link.changed = self._changed.set

    def __bool__(self) -> bool:
        return bool(self.links)

    def account(self, name: str) -> tuple[str, str] | None:
        """The provider's username and password for its challenges; None without a username."""
        link = self.named(name)
        if link is None or not link.entry.username:
            return None
        return link.entry.username, link.entry.password.value

    def named(self, name: str) -> ProviderLink | None:
        return next((link for link in self.links if link.name == name), None)

    def from_source(self, source: Address) -> ProviderLink | None:
        """The provider a request from ``source`` comes from, if any."""
        return next((link for link in self.links if link.allows(source)), None)

    def did(self, provider: ProviderLink, number: str) -> DidEntry | None:
        """The DID ``number`` of ``provider`` (a DID reaches us only from its own provider)."""
        found = self._dids.get(number) or (self._dids.get("+" + number) if not number.startswith("+") else None)
        return found[1] if found is not None and found[0] is provider else None

    async def start(
        self, transactions: TransactionLayer, link: Link, registry: str = "", tcp: TcpListener | None = None
    ) -> None:
        """Resolves every provider once (so that calls can go out at once), then keeps resolving;
        registers with those that say so, from ``link`` (UDP), or from ``tcp`` for a provider
        reached over TCP (which may open connections to the providers' TCP addresses); tells the
        registry at ``registry`` whether each provider can take calls, so that the group tries
        others first when not."""
        self.tcp = tcp
        await asyncio.gather(*(self._resolve(p) for p in self.links))
        self._task = asyncio.create_task(self._refresh(), name="providers-dns")
        for provider in self.links:
            entry = provider.entry
            if not entry.register:
                continue
            provider.registration = Registration(
                provider.name,
                functools.partial(self._addresses, provider),
                provider.domain,
                entry.username,
                entry.password.value,
                transactions,
                tcp if tcp is not None and provider.targets and provider.targets[0].transport == "TCP" else link,
                expires=entry.register_expires,
                on_change=self._registration_changed,
            )
            provider.registration.start()
        if registry and self.links:
            self._report = asyncio.create_task(self._report_states(registry), name="providers-report")

    async def stop(self) -> None:
        for task in (self._task, self._report):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await asyncio.gather(*(p.registration.stop() for p in self.links if p.registration is not None))

    async def _addresses(self, provider: ProviderLink) -> list[Address]:
        return [(t.host, t.port) for t in provider.targets]

    def _registration_changed(self, status: RegistrationStatus) -> None:
        reason = f" ({status.last_status} {status.last_reason})" if status.last_status else ""
        log = _log.info if status.state == "registered" else _log.warning
        log("provider %s: registration %s%s", status.provider, status.state, reason)
        self._changed.set()

    async def _report_states(self, registry: str) -> None:
        """Every change, and every REPORT_EVERY seconds (a restarted registry starts from live)."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), REPORT_EVERY)
            self._changed.clear()
            try:
                async with open_channel(registry) as channel:
                    stub = rpb_grpc.RegistryServiceStub(channel)
                    for provider in self.links:
                        request = rpb.SetProviderStateRequest(provider=provider.name, live=provider.up)
                        try:
                            await stub.SetProviderState(request)
                        except grpc.aio.AioRpcError as error:
                            if error.code() != grpc.StatusCode.NOT_FOUND:  # NOT_FOUND: no route through it
                                raise
            except grpc.aio.AioRpcError as error:
                _log.info("telling the registry of the providers' states failed (%s)", error.code().name)

    async def _refresh(self) -> None:
        while True:
            wait = REFRESH if all(link.targets for link in self.links) else RETRY
            await asyncio.sleep(wait)
            await asyncio.gather(*(self._resolve(link) for link in self.links))

    async def _resolve(self, link: ProviderLink) -> None:
        transport = link.entry.transport.upper() or None
        try:
            targets = await self.locator.locate(link.entry.address, transport)
        except LocateError as error:
            if link.targets or not is_ip(host_and_port(link.entry.address)[0]):
                _log.warning("provider %s: %s (keeping its last addresses)", link.name, error)
            return
        # The phones' port speaks UDP and TCP; a provider found only over TLS is not reachable yet.
        usable = [t for t in targets if t.transport in ("UDP", "TCP")]
        if usable != link.targets:
            shown = ", ".join(f"{t.host}:{t.port}/{t.transport}" for t in usable) or "nothing usable"
            _log.info("provider %s is at %s", link.name, shown)
            self._changed.set()
        link.targets = usable
        if self.tcp is not None:
            self.tcp.dialable = {(t.host, t.port) for p in self.links for t in p.targets if t.transport == "TCP"}
