"""The process skeleton every service shares: one grpc.aio server with health, reflection and
error translation, and a run loop that turns SIGTERM into a graceful stop.

Health: the empty service name ("") answers for the process, and each service registers its own
names (its gRPC service, and parts such as the registry's group link) that it flips itself.

A probe port (``probes`` in the config) answers the same health checks in plain text, beside a
port that takes mutual TLS only: Kubernetes' gRPC probes (and most load balancers' health checks)
cannot present a client certificate, so they could not even finish the handshake on the main
port. The probe port serves health and reflection and nothing else.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from services.runtime.access import Guard
from services.runtime.addresses import join_host_port, parse_host_port
from services.runtime.config import Config, LimitsSection
from services.runtime.errors import ErrorInterceptor
from services.runtime.metrics import Metrics
from services.runtime.streams import StreamLimiter
from services.runtime.tls import TlsFiles, configure

_log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
HEALTH_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name

# Large enough for a numbering plan snapshot chunk and a 100k-number ListNumbers answer.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class Service(Protocol):
    """What a service hands to the skeleton."""

    def register(self, server: grpc.aio.Server) -> Iterable[str]:
        """Adds its servicers to ``server``; returns the full names of its gRPC services."""
        ...


class GrpcHost:
    """One gRPC server on one address; binding port 0 picks a free port (``port`` tells which)."""

    def __init__(
        self,
        listen: str,
        limits: LimitsSection | None = None,
        tls: TlsFiles | None = None,
        guard: Guard | None = None,
        probe: str = "",
    ):
        """With ``tls`` the port takes mutual TLS only, and ``guard`` (required then) checks who
        calls what. With ``probe`` (host:port) the same health checks are answered there too, in
        plain text."""
        if tls is not None and guard is None:
            raise ValueError("a TLS port needs a guard")
        self.listen = listen
        self.tls = tls
        self.guard = guard if tls is not None else None
        self.port = 0
        self.health = HealthServicer()
        # Every response stream of every service on this server counts against one limiter.
        limits = limits or LimitsSection()
        self.streams = StreamLimiter(limits.streams_per_client, limits.streams_total)
        self.server = grpc.aio.server(
            interceptors=[ErrorInterceptor(self.streams, self.guard)],
            options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ],
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._names: list[str] = [HEALTH_NAME]
        self.probe = probe
        self.probe_port = 0
        # Its own stream limiter: health watches of anyone who reaches the plain port must not
        # take the places of the API's clients.
        probe_streams = StreamLimiter(limits.streams_per_client, limits.streams_total)
        self.probe_server = _probe_server(self.health, probe_streams) if probe else None

    def add(self, service: Service) -> None:
        self._names.extend(service.register(self.server))

    @property
    def address(self) -> str:
        host, _ = parse_host_port(self.listen)
        return join_host_port(host, self.port)

    def bind(self) -> str:
        """Takes the port now (before ``start``), so that the address can be advertised; returns it."""
        if self.port == 0:
            try:
                if self.tls is None:
                    self.port = self.server.add_insecure_port(self.listen)
                else:
                    self.port = self.server.add_secure_port(self.listen, self.tls.server_credentials())
            except RuntimeError:
                self.port = 0
            if self.port == 0:
                raise OSError(f"cannot listen on {self.listen}")
        if self.probe_server is not None and self.probe_port == 0:
            try:
                self.probe_port = self.probe_server.add_insecure_port(self.probe)
            except RuntimeError:
                self.probe_port = 0
            if self.probe_port == 0:
                raise OSError(f"cannot listen on {self.probe} (the probe port)")
        return self.address

    @property
    def probe_address(self) -> str:
        """Where the probe port listens ("" without one)."""
        if not self.probe:
            return ""
        host, _ = parse_host_port(self.probe)
        return join_host_port(host, self.probe_port)

    async def start(self) -> None:
        self.bind()
        reflection.enable_server_reflection([*self._names, reflection.SERVICE_NAME], self.server)
        await self.server.start()
        if self.probe_server is not None:
            await self.probe_server.start()
            _log.info("health checks in plain text on %s", self.probe_address)
        for name in ["", *self._names]:
            await self.health.set(name, SERVING)

    async def set_health(self, name: str, serving: bool) -> None:
        await self.health.set(name, SERVING if serving else NOT_SERVING)

    async def stop(self, grace: float) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        # The probe port goes last, so that probes see NOT_SERVING for as long as the drain lasts.
        if self.probe_server is not None:
            await self.probe_server.stop(0)


def _probe_server(health: HealthServicer, streams: StreamLimiter) -> grpc.aio.Server:
    """A plain-text server holding only ``health`` and reflection: any other method there is
    UNIMPLEMENTED, whatever the main port serves."""
    server = grpc.aio.server(interceptors=[ErrorInterceptor(streams)], options=[("grpc.so_reuseport", 0)])
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection([HEALTH_NAME, reflection.SERVICE_NAME], server)
    return server


def service_host(
    config: Config, listen: str, is_member: Callable[[str], bool] | None = None, probe: str = ""
) -> GrpcHost:
    """The gRPC host of one service of the server ``config`` describes: with ``tls`` configured,
    mutual TLS on its port and on every channel the process opens (services/runtime/tls.py), and
    a guard that knows this server (and the live members through ``is_member``, for a service
    that other servers call). ``probe`` is the service's entry of ``config.probes``."""
    t = config.tls
    files = configure(t.ca_file, t.cert_file, t.key_file, config.server.id)
    guard = Guard(config.server.id, is_member) if files is not None else None
    return GrpcHost(listen, config.limits, files, guard, probe)


def count_refusals(host: GrpcHost, metrics: Metrics) -> None:
    """The metric of the calls the host's guard refused (none without TLS)."""
    if host.guard is not None:
        metrics.counter_of(
            "pbxmesh.api.refused", "gRPC calls refused: unauthenticated or not allowed", host.guard.counts
        )


async def run_until_signal(
    start: Callable[[], Awaitable[None]],
    stop: Callable[[bool], Awaitable[None]],
    crashed: asyncio.Event | None = None,
) -> int:
    """Starts, waits for SIGTERM or SIGINT (or ``crashed``), then stops.

    ``stop(graceful)`` is told whether to drain: SIGTERM drains, SIGINT and a crash do not.
    Returns the process exit code.
    """
    loop = asyncio.get_running_loop()
    received: asyncio.Queue[int] = asyncio.Queue()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, received.put_nowait, sig)
    await start()
    waiters = [asyncio.ensure_future(received.get())]
    if crashed is not None:
        waiters.append(asyncio.ensure_future(crashed.wait()))
    done, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    result = next(iter(done)).result()
    graceful = result == signal.SIGTERM
    _log.info("stopping (%s)", "drain" if graceful else "no drain")
    # A second signal during the drain stops waiting for it.
    try:
        stopper = asyncio.ensure_future(stop(graceful))
        second = asyncio.ensure_future(received.get())
        await asyncio.wait([stopper, second], return_when=asyncio.FIRST_COMPLETED)
        if not stopper.done():
            stopper.cancel()
        second.cancel()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return 0 if result is not True else 1
