"""One server's SIP gateway: SIP on UDP and TCP at ``listen.sip``, its gRPC API at ``listen.sipgw``."""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
from collections.abc import AsyncIterator, Iterable

import grpc.aio

from pbxmesh.sipgw.v1 import sipgw_pb2 as pb
from pbxmesh.sipgw.v1 import sipgw_pb2_grpc as pb_grpc
from services.runtime.config import Config, ConfigError, check_host_port
from services.runtime.config_calls import TARGET_RE, parse_target_uri
from services.runtime.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted, ServiceError
from services.runtime.grpc_server import GrpcHost
from services.runtime.metrics import Metrics
from services.runtime.subscription import Subscription
from services.sipgw.auth.trunk_proof import TrunkProof
from services.sipgw.b2bua import PlaceError
from services.sipgw.call import Call, Kind
from services.sipgw.core import SipCore
from services.sipgw.plan_feed import PlanFeed
from services.sipgw.registrar import Registrar
from services.sipgw.reporter import Reporter
from services.sipgw.scenarios import Scenarios
from services.sipgw.sip.transport import Receiver, TcpListener, UdpEndpoint
from services.sipgw.trunk import Trunk
from services.sipgw.trunk_lines import TrunkLines

_log = logging.getLogger(__name__)

DRAIN_SECONDS = 2.0
GC_THRESHOLD = 20_000
SIP_PORT_TRIES = 5  # listen.sip with port 0: ports tried for one free on both UDP and TCP

Ctx = grpc.aio.ServicerContext


class SipGatewayService(pb_grpc.SipGatewayServiceServicer):
    def __init__(self, core: SipCore, lines: TrunkLines):
        self.core = core
        self.lines = lines

    def register(self, server: grpc.aio.Server) -> Iterable[str]:
        pb_grpc.add_SipGatewayServiceServicer_to_server(self, server)
        return [pb.DESCRIPTOR.services_by_name["SipGatewayService"].full_name]

    async def ListRegistrations(
        self,
        request: pb.ListRegistrationsRequest,
        context: Ctx[pb.ListRegistrationsRequest, pb.ListRegistrationsResponse],
    ) -> pb.ListRegistrationsResponse:
        bindings = self.core.registrar.bindings
        now = bindings.now()
        return pb.ListRegistrationsResponse(
            registrations=[
                pb.Registration(
                    number=number,
                    contacts=[
                        pb.Contact(uri=b.contact, source=b.source, expires_in=b.remaining(now))
                        for b in bindings.lookup(number)
                    ],
                )
                for number in bindings.numbers()
            ]
        )

    async def ListCalls(
        self, request: pb.ListCallsRequest, context: Ctx[pb.ListCallsRequest, pb.ListCallsResponse]
    ) -> pb.ListCallsResponse:
        return pb.ListCallsResponse(calls=[call_pb(c) for c in self.core.calls.active()])

    async def WatchCalls(
        self, request: pb.WatchCallsRequest, context: Ctx[pb.WatchCallsRequest, pb.WatchCallsResponse]
    ) -> AsyncIterator[pb.WatchCallsResponse]:
        changes: Subscription[pb.Call] = Subscription()
        calls = self.core.calls

        def listen(call: Call) -> None:
            changes.put(call_pb(call))  # converted now: the call changes on

        calls.listeners.add(listen)
        try:
            yield pb.WatchCallsResponse(calls=[call_pb(c) for c in calls.active()], synced=True)
            while True:
                yield pb.WatchCallsResponse(calls=[await changes.get()], synced=True)
        finally:
            calls.listeners.discard(listen)

    async def HangUpCall(
        self, request: pb.HangUpCallRequest, context: Ctx[pb.HangUpCallRequest, pb.HangUpCallResponse]
    ) -> pb.HangUpCallResponse:
        if not request.call_id or len(request.call_id) > 64:
            raise InvalidArgument("call_id is required (at most 64 characters)", reason="INVALID_CALL_ID")
        if not self.core.calls.hang_up(request.call_id):
            raise NotFound(f"no call in progress has id {request.call_id}", reason="CALL_NOT_FOUND")
        return pb.HangUpCallResponse()

    async def PlaceCall(
        self, request: pb.PlaceCallRequest, context: Ctx[pb.PlaceCallRequest, pb.PlaceCallResponse]
    ) -> pb.PlaceCallResponse:
        for field in ("from_number", "caller_id", "called_id"):
            value = getattr(request, field)
            if (value or field == "from_number") and not TARGET_RE.fullmatch(value):
                raise InvalidArgument(f"{field}: {value!r} is not a number", reason="INVALID_NUMBER")
        if not TARGET_RE.fullmatch(request.to) and parse_target_uri(request.to) is None:
            raise InvalidArgument(
                f"to: {request.to!r} is neither a number nor sip:number@ip:port", reason="INVALID_TARGET"
            )
        try:
            call = self.core.calls.place(request.from_number, request.to, request.caller_id, request.called_id)
        except PlaceError as error:
            raise _place_error(error) from None
        return pb.PlaceCallResponse(call=call_pb(call))

    async def GetTrunkUsage(
        self, request: pb.GetTrunkUsageRequest, context: Ctx[pb.GetTrunkUsageRequest, pb.GetTrunkUsageResponse]
    ) -> pb.GetTrunkUsageResponse:
        usage = self.lines.usage
        return pb.GetTrunkUsageResponse(
            lines=usage.lines,
            in_use=usage.in_use,
            incoming=usage.incoming,
            outgoing=usage.outgoing,
            rejected=usage.rejected,
        )


def _place_error(error: PlaceError) -> ServiceError:
    if error.status == 404:
        return NotFound(error.reason, reason="NUMBER_NOT_FOUND")
    if error.status == 480:
        return FailedPrecondition(error.reason, reason="NOT_REGISTERED")
    if error.status == 503:
        return ResourceExhausted(error.reason, reason="NO_TRUNK_LINE")
    return FailedPrecondition(f"{error.status} {error.reason}", reason="CANNOT_CALL")


_STATES = {
    "dialing": pb.CALL_STATE_DIALING,
    "ringing": pb.CALL_STATE_RINGING,
    "answered": pb.CALL_STATE_ANSWERED,
    "ended": pb.CALL_STATE_ENDED,
}


_KINDS = {Kind.LOCAL: pb.CALL_KIND_LOCAL, Kind.TRUNK_IN: pb.CALL_KIND_TRUNK_IN, Kind.TRUNK_OUT: pb.CALL_KIND_TRUNK_OUT}


def call_pb(call: Call) -> pb.Call:
    message = pb.Call(
        call_id=call.id,
        caller=call.caller,
        callee=call.callee,
        state=_STATES.get(call.phase, pb.CALL_STATE_UNSPECIFIED),
        kind=_KINDS[call.kind],
        end_reason=call.end_reason,
    )
    message.started_at.FromNanoseconds(int(call.started_at * 1e9))
    if call.answered_at is not None:
        message.answered_at.FromNanoseconds(int(call.answered_at * 1e9))
    return message


def departments_of(config: Config) -> dict[str, list[str]]:
    """Department id -> this server's numbers in it (what ring_department rings)."""
    departments: dict[str, list[str]] = {}
    for entry in config.numbering.numbers:
        if entry.department:
            departments.setdefault(entry.department, []).append(entry.number)
    return departments


class SipGatewayApp:
    def __init__(self, config: Config):
        for key in ("sip", "sipgw"):
            if not getattr(config.listen, key):
                raise ConfigError(f"listen.{key}: required to run the SIP gateway")
        self.config = config
        self.host = GrpcHost(config.listen.sipgw)
        realm = config.server.name or config.server.id
        registrar = Registrar(config.sip.accounts, realm, algorithms=config.sip.digest_algorithms)
        self.lines = TrunkLines(config.trunk.lines)
        self.plan = PlanFeed(config.listen.registry)
        self.trunk = (
            Trunk(config.server.id, TrunkProof(config.trunk.secret.value), self.lines) if config.listen.trunk else None
        )
        self.core = SipCore(
            registrar,
            {n.number for n in config.numbering.numbers},
            self.plan,
            self.trunk,
            Scenarios(config.scenarios),
            departments_of(config),
            ring_timeout=config.sip.ring_timeout,
        )
        numbering = {n.number: (n.name, n.department) for n in config.numbering.numbers}
        self.reporter = (
            Reporter(config.listen.callstate, self.core.calls, config.server.id, numbering)
            if config.listen.callstate
            else None
        )
        self.failed = asyncio.Event()
        self.metrics = Metrics("sipgw", config.server.id, config.telemetry.metrics.sipgw)
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
        m.gauge("pbxmesh.trunk.lines", "trunk lines configured", lambda: [(lines.usage.lines, {})])
        m.gauge("pbxmesh.trunk.lines_in_use", "trunk lines in use", lambda: [(lines.usage.in_use, {})])
        m.counter_of(
            "pbxmesh.trunk.rejected", "calls refused for want of a trunk line", lambda: [(lines.usage.rejected, {})]
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

    async def start(self) -> None:
        host, port = check_host_port(self.config.listen.sip, "listen.sip")
        receive = self.core.transactions.receive
        self.udp, self.tcp = await _open_sip(host, port, receive)
        self.core.router.phone_links["UDP"] = self.udp
        if self.trunk is not None:
            trunk_host, trunk_port = check_host_port(self.config.listen.trunk, "listen.trunk")
            self.trunk.endpoint = await UdpEndpoint.open(trunk_host, trunk_port, receive)
            if ":" in self.trunk.endpoint.local[0]:
                self.plan.trunks.family = socket.AF_INET6
        self.plan.start()
        if self.reporter is not None:
            self.reporter.start()
        self.core.router.phone_links["TCP"] = self.tcp
        self.host.add(SipGatewayService(self.core, self.lines))
        await self.host.start()
        _log.info(
            "sipgw of %s: SIP on %s:%s (UDP, TCP), API on %s",
            self.config.server.id,
            self.udp.local[0],
            self.udp.local[1],
            self.host.address,
        )
        if self.trunk is not None and self.trunk.endpoint is not None:
            _log.info("sipgw of %s: trunk on %s:%s (UDP)", self.config.server.id, *self.trunk.endpoint.local)
        # What start-up made (modules, gRPC, protobuf) lives as long as the process: keep it out of
        # the collector's reach, and collect calls' short-lived objects in larger batches. A full
        # collection over everything held stalls the loop for tens of milliseconds.
        gc.freeze()
        gc.set_threshold(GC_THRESHOLD, 20, 50)

    async def stop(self, graceful: bool) -> None:
        await self.host.stop(DRAIN_SECONDS if graceful else 0)
        await self.plan.stop()
        if self.reporter is not None:
            await self.reporter.stop()
        if self.trunk is not None and self.trunk.endpoint is not None:
            self.trunk.endpoint.close()
        if self.udp is not None:
            self.udp.close()
        if self.tcp is not None:
            await self.tcp.close()


async def _open_sip(host: str, port: int, receive: Receiver) -> tuple[UdpEndpoint, TcpListener]:
    """UDP and TCP on one port (RFC 3261 18.1). With port 0 the TCP side follows the port the
    system gave UDP, which some TCP socket may hold already: then another port is tried."""
    for attempt in range(SIP_PORT_TRIES):
        udp = await UdpEndpoint.open(host, port, receive)
        try:
            return udp, await TcpListener.open(host, udp.local[1], receive)
        except OSError:
            udp.close()
            if port != 0 or attempt == SIP_PORT_TRIES - 1:
                raise
    raise RuntimeError("unreachable: the last try returns or raises")
