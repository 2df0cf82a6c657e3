"""One server's SIP gateway: SIP on UDP and TCP at ``listen.sip``, its gRPC API at ``listen.sipgw``."""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

from services.runtime.config import Config, ConfigError, check_host_port
from services.runtime.config_admission import RateLimitSection, trunk_rate
from services.runtime.grpc_server import count_refusals, service_host
from services.runtime.metrics import Metrics
from services.sipgw.admission import Admission
from services.sipgw.anchor import Anchoring
from services.sipgw.auth.lockout import Lockout
from services.sipgw.auth.rate_limit import Rate
from services.sipgw.auth.trunk_proof import TrunkProof
from services.sipgw.call import Kind
from services.sipgw.core import SipCore
from services.sipgw.external import External
from services.sipgw.liveness import PeerMonitor, SessionTimer
from services.sipgw.media_link import MediaLink
from services.sipgw.plan_feed import PlanFeed
from services.sipgw.providers import Providers
from services.sipgw.registrar import Registrar
from services.sipgw.registrar.store import BindingsFile
from services.sipgw.reporter import Reporter
from services.sipgw.scenarios import Scenarios
from services.sipgw.secrets_watch import watch_trunk_secrets
from services.sipgw.service import SipGatewayService
from services.sipgw.sip.locate import Locator
from services.sipgw.sip.tls_trunk import TlsTrunk
from services.sipgw.sip.transport import Gate, Receiver, TcpListener, UdpEndpoint
from services.sipgw.toll import TollGuard
from services.sipgw.trunk import Trunk
from services.sipgw.trunk_lines import TrunkLines

_log = logging.getLogger(__name__)

DRAIN_SECONDS = 2.0
BYE_WAIT = 2.0  # seconds the BYEs of calls hung up at shutdown (and their report) may take
GC_THRESHOLD = 20_000
SIP_PORT_TRIES = 5  # listen.sip with port 0: ports tried for one free on both UDP and TCP


def departments_of(config: Config) -> dict[str, list[str]]:
    """Department id -> this server's numbers in it (what ring_department rings)."""
    departments: dict[str, list[str]] = {}
    for entry in config.numbering.numbers:
        if entry.department:
            departments.setdefault(entry.department, []).append(entry.number)
    return departments


def _proof(config: Config) -> TrunkProof:
    accepted = tuple(secret.value for secret in config.trunk.accept_secrets)
    return TrunkProof(config.trunk.secret.value, accepted=accepted)


class SipGatewayApp:
    """The gateway's parts built from one config; the process skeleton starts and stops it."""

    def __init__(self, config: Config, config_path: Path | None = None):
        self.config_path = config_path
        for key in ("sip", "sipgw"):
            if not getattr(config.listen, key):
                raise ConfigError(f"listen.{key}: required to run the SIP gateway")
        self.config = config
        self.host = service_host(config, config.listen.sipgw, probe=config.probes.sipgw)
        realm = config.server.name or config.server.id
        registrar = Registrar(
            config.sip.accounts, realm, lockout=Lockout(config.sip.lockout), algorithms=config.sip.digest_algorithms
        )
        self.store = (
            BindingsFile(Path(config.sip.bindings_file), registrar.bindings) if config.sip.bindings_file else None
        )
        self.lines = TrunkLines(config.trunk.lines)
        self.plan = PlanFeed(config.listen.registry)
        self.trunk = Trunk(config.server.id, _proof(config), self.lines) if config.listen.trunk else None
        self.core = SipCore(
            registrar,
            {n.number for n in config.numbering.numbers},
            self.plan,
            self.trunk,
            Scenarios(config.scenarios),
            departments_of(config),
            ring_timeout=config.sip.ring_timeout,
        )
        self.core.require_tls = config.sip.require_tls
        self.providers = Providers(config.providers, _locator(config))
        self.guard = TollGuard(config.external)
        router = self.core.router
        router.external = External(
            router,
            config.routes,
            self.providers,
            self.guard,
            {n.number: n.department for n in config.numbering.numbers},
        )
        self.core.providers = self.providers
        self.core.calls.setup.providers = self.providers
        # Everything from the network passes here before the transaction layer (admission.py).
        self.admission = Admission(
            self.core.transactions.receive,
            _rate(config.sip.rate_limit),
            _rate(trunk_rate(config.trunk.rate_limit, config.trunk.lines)),
            config.sip.drop_user_agents,
            ongoing=self.core.ongoing,
        )
        if self.trunk is not None:
            self.admission.is_trunk = self.trunk.carries
        if self.providers:
            self.admission.is_provider = lambda source: self.providers.from_source(source) is not None
        numbering = {n.number: (n.name, n.department) for n in config.numbering.numbers}
        self.reporter = (
            Reporter(config.listen.callstate, self.core.calls, config.server.id, numbering)
            if config.listen.callstate
            else None
        )
        table = self.core.calls.table
        table.credentials = self.providers.account
        self.media = MediaLink(config.listen.media) if config.listen.media else None
        table.media = Anchoring(self.media, config.recording.required, srtp=config.tls.enabled)
        if self.media is not None:
            self.media.on_lost = lambda: table.media.go_direct(table.active(), table.offer)
        self.sessions = SessionTimer(table, config.sip.session_expires)
        self.peers = PeerMonitor(table, self.trunk) if self.trunk is not None else None
        self.failed = asyncio.Event()
        self.tls: TcpListener | None = None
        self._watch: asyncio.Task[None] | None = None
        self.metrics = Metrics("sipgw", config.server.id, config.telemetry.metrics.sipgw)
        count_refusals(self.host, self.metrics)
        self._measure()
        self.udp: UdpEndpoint | None = None
        self.tcp: TcpListener | None = None

    def _measure(self) -> None:
        calls, lines, bindings = self.core.calls, self.lines, self.core.registrar.bindings
        m = self.metrics

        def active() -> list[tuple[float, dict[str, str]]]:
            kinds = dict.fromkeys(Kind, 0)
            for call in calls.active():
                kinds[call.kind] += 1
            return [(count, {"kind": str(kind)}) for kind, count in kinds.items()]

        m.gauge(
            "pbxmesh.sip.registrations",
            "numbers with at least one registered phone",
            lambda: [(len(bindings.numbers()), {})],
        )
        m.gauge("pbxmesh.calls.active", "calls in progress, by kind", active)
        anchoring = self.core.calls.table.media
        m.counter_of(
            "pbxmesh.calls.unanchored",
            "calls set up with direct media because the media service could not be had",
            lambda: [(anchoring.unanchored, {})],
        )
        m.counter_of(
            "pbxmesh.calls.moved_to_direct_media",
            "calls moved to direct media because the media service went away mid-call",
            lambda: [(anchoring.moved, {})],
        )
        m.gauge("pbxmesh.trunk.lines", "trunk lines configured", lambda: [(lines.usage.lines, {})])
        m.gauge("pbxmesh.trunk.lines_in_use", "trunk lines in use", lambda: [(lines.usage.in_use, {})])
        m.counter_of(
            "pbxmesh.trunk.rejected", "calls refused for want of a trunk line", lambda: [(lines.usage.rejected, {})]
        )
        trunk = self.trunk
        if trunk is not None:
            m.counter_of(
                "pbxmesh.trunk.refused_requests",
                "trunk requests refused for a missing, wrong, expired or replayed proof",
                lambda: [(trunk.refused, {})],
            )
        admission = self.admission
        m.counter_of(
            "pbxmesh.sip.rate_limited",
            "requests dropped unanswered over their source address's rate limit, by port (phones, trunk) "
            "and method (register, invite, options, other)",
            lambda: [(n, {"port": port, "method": c}) for (port, c), n in admission.rate_limited.items()],
        )
        m.counter_of(
            "pbxmesh.sip.scanners_dropped",
            "requests dropped unanswered for a scanner's User-Agent (sip.drop_user_agents), by port and method",
            lambda: [(n, {"port": port, "method": c}) for (port, c), n in admission.scanners.items()],
        )
        lockout = self.core.registrar.lockout
        m.gauge("pbxmesh.sip.locked_accounts", "accounts locked out now", lambda: [(lockout.locked("account"), {})])
        m.gauge(
            "pbxmesh.sip.locked_sources", "source addresses locked out now", lambda: [(lockout.locked("source"), {})]
        )
        m.counter_of(
            "pbxmesh.sip.lockout_refused",
            "requests dropped unanswered by the password lockout, by what was locked (account, source)",
            lambda: [(n, {"locked": kind}) for kind, n in lockout.refused.items()],
        )
        responses = self.core.transactions.responses_sent
        m.counter_of(
            "pbxmesh.sip.responses",
            "SIP responses sent, by class",
            lambda: [(n, {"class": c}) for c, n in responses.items()],
        )
        setup = m.meter.create_histogram(
            "pbxmesh.calls.setup_time",
            unit="s",
            description="from a call's first INVITE to its answer",
            explicit_bucket_boundaries_advisory=[0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30],
        )
        self.core.calls.record_setup = setup.record
        providers, guard = self.providers.links, self.guard
        m.counter_of(
            "pbxmesh.external.refused",
            "external calls refused by the toll fraud guard, by reason",
            lambda: [(n, {"reason": r}) for r, n in guard.refused.items()],
        )
        m.gauge("pbxmesh.external.calls", "external calls in progress", lambda: [(guard.total, {})])
        m.gauge(
            "pbxmesh.provider.lines_in_use",
            "a provider's lines in use",
            lambda: [(p.lines.usage.in_use, {"provider": p.name}) for p in providers],
        )
        m.counter_of(
            "pbxmesh.provider.calls",
            "calls through a provider, by direction",
            lambda: [
                (n, {"provider": p.name, "direction": d})
                for p in providers
                for d, n in (("in", p.calls_in), ("out", p.calls_out))
            ],
        )
        m.counter_of(
            "pbxmesh.provider.failovers",
            "calls a provider refused or left unanswered, tried on the next route",
            lambda: [(p.failovers, {"provider": p.name}) for p in providers],
        )
        m.gauge(
            "pbxmesh.provider.up",
            "1 while a provider can take calls",
            lambda: [(int(p.up), {"provider": p.name}) for p in providers],
        )

    async def start(self) -> None:
        host, port = check_host_port(self.config.listen.sip, "listen.sip")
        if self.store is not None:
            self._restore_registrations(self.store)
        receive, gate = self.admission.receive, self.admission
        self.udp, self.tcp = await _open_sip(host, port, receive, gate)
        self.core.router.phone_links["UDP"] = self.udp
        self.core.router.phone_links["TCP"] = self.tcp
        await self.providers.start(self.core.transactions, self.udp, self.config.listen.registry, self.tcp)
        if self.trunk is not None:
            trunk_host, trunk_port = check_host_port(self.config.listen.trunk, "listen.trunk")
            tls = self.config.tls
            if tls.enabled:
                files = (tls.ca_file, tls.cert_file, tls.key_file)
                self.trunk.endpoint = await TlsTrunk.open(
                    trunk_host, trunk_port, receive, files, self.plan.trunk_owner, self.plan.has_server, gate
                )
            else:
                self.trunk.endpoint = await UdpEndpoint.open(trunk_host, trunk_port, receive, gate)
            if ":" in self.trunk.endpoint.local[0]:
                self.plan.trunks.family = socket.AF_INET6
        self.plan.start()
        if self.trunk is not None and self.config_path is not None:
            self._watch = asyncio.create_task(watch_trunk_secrets(self.config_path, self.trunk.proof))
        if self.media is not None:
            self.media.start()
        self.sessions.start()
        if self.peers is not None:
            self.peers.start()
        if self.reporter is not None:
            self.reporter.start()
        self.core.router.phone_links["TCP"] = self.tcp
        if self.config.listen.sips:
            sips_host, sips_port = check_host_port(self.config.listen.sips, "listen.sips")
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self.config.tls.cert_file, self.config.tls.key_file)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            self.tls = await TcpListener.open(sips_host, sips_port, receive, gate, context)
            self.core.router.phone_links["TLS"] = self.tls
            _log.info("sipgw of %s: phones' SIP over TLS on %s:%s", self.config.server.id, *self.tls.local)
        self.host.add(SipGatewayService(self.core, self.lines, self.providers))
        await self.host.start()
        _log.info(
            "sipgw of %s: SIP on %s:%s (UDP, TCP), API on %s",
            self.config.server.id,
            self.udp.local[0],
            self.udp.local[1],
            self.host.address,
        )
        if self.trunk is not None and self.trunk.endpoint is not None:
            _log.info(
                "sipgw of %s: trunk on %s:%s (%s)",
                self.config.server.id,
                *self.trunk.endpoint.local,
                self.trunk.endpoint.name,
            )
        # What start-up made (modules, gRPC, protobuf) lives as long as the process: keep it out of
        # the collector's reach, and collect calls' short-lived objects in larger batches. A full
        # collection over everything held stalls the loop for tens of milliseconds.
        gc.freeze()
        gc.set_threshold(GC_THRESHOLD, 20, 50)

    async def stop(self, graceful: bool) -> None:
        if self._watch is not None:
            self._watch.cancel()
        await self._drain_calls(graceful)
        await self.host.stop(DRAIN_SECONDS if graceful else 0)
        await self.sessions.stop()
        if self.peers is not None:
            await self.peers.stop()
        await self.plan.stop()
        await self.providers.stop()
        if self.reporter is not None:
            await self.reporter.stop()
        if self.media is not None:
            await self.media.stop()
        if self.trunk is not None and self.trunk.endpoint is not None:
            self.trunk.endpoint.close()
        if self.udp is not None:
            self.udp.close()
        if self.tcp is not None:
            await self.tcp.close()
        if self.tls is not None:
            await self.tls.close()
        if self.store is not None:
            self.store.write()

    def _restore_registrations(self, store: BindingsFile) -> None:
        """The registrations kept before a restart come back; the file must be writable."""
        restored = store.load()
        try:
            store.write(strict=True)
        except OSError as error:
            raise ConfigError(f"sip.bindings_file: cannot write {store.path} ({error.strerror or error})") from None
        store.bindings.on_change = store.changed
        _log.info("%d registrations restored from %s", restored, store.path)

    async def _drain_calls(self, graceful: bool) -> None:
        """No new calls from now on; with ``graceful`` (SIGTERM) the calls in progress may finish
        for sip.drain_seconds; those left are hung up with a Reason, and their BYEs answered."""
        if self.udp is None:
            return  # it never started
        self.core.draining = True
        calls = self.core.calls
        if graceful:
            await _until(lambda: not calls.active(), self.config.sip.drain_seconds)
        left = calls.active()
        if not left:
            return
        _log.info("%d calls still in progress: hanging them up", len(left))
        calls.end_all("the server is shutting down")
        await _until(lambda: not self.core.transactions.clients, BYE_WAIT)
        if self.reporter is not None:
            await self.reporter.flush(BYE_WAIT)


async def _until(check: Callable[[], bool], seconds: float) -> None:
    """Polls ``check`` until it holds or ``seconds`` pass (calls and transactions end on their
    own timers and messages; there is no event to wait on)."""
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        if check():
            return
        await asyncio.sleep(0.05)


def _locator(config: Config) -> Locator:
    servers = [check_host_port(s, f"dns.servers[{i}]") for i, s in enumerate(config.dns.servers)]
    return Locator(servers or None)


def _rate(section: RateLimitSection) -> Rate:
    return Rate(section.per_second, section.burst)


async def _open_sip(host: str, port: int, receive: Receiver, gate: Gate) -> tuple[UdpEndpoint, TcpListener]:
    """UDP and TCP on one port (RFC 3261 18.1). With port 0 the TCP side follows the port the
    system gave UDP, which some TCP socket may hold already: then another port is tried."""
    for attempt in range(SIP_PORT_TRIES):
        udp = await UdpEndpoint.open(host, port, receive, gate)
        try:
            return udp, await TcpListener.open(host, udp.local[1], receive, gate)
        except OSError:
            udp.close()
            if port != 0 or attempt == SIP_PORT_TRIES - 1:
                raise
    raise RuntimeError("unreachable: the last try returns or raises")
