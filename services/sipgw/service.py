"""The gateway's gRPC API: registrations, calls (list, watch, place, hang up), trunk usage and the
password lockout (list, unlock)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterable

import grpc.aio

from pbxmesh.sipgw.v1 import sipgw_pb2 as pb
from pbxmesh.sipgw.v1 import sipgw_pb2_grpc as pb_grpc
from services.runtime.config_calls import TARGET_RE, parse_target_uri
from services.runtime.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ServiceError,
    Unavailable,
)
from services.runtime.subscription import Subscription
from services.sipgw.auth.lockout import MAX_KEY, Kind, LockoutEntry
from services.sipgw.b2bua import PlaceError
from services.sipgw.call import Call
from services.sipgw.convert import call_pb
from services.sipgw.core import SipCore
from services.sipgw.providers import Providers
from services.sipgw.trunk_lines import TrunkLines

Ctx = grpc.aio.ServicerContext
MAX_LOCKOUTS_LISTED = 1000


_REGISTRATION = {
    "unregistered": pb.REGISTRATION_STATE_UNREGISTERED,
    "registering": pb.REGISTRATION_STATE_REGISTERING,
    "registered": pb.REGISTRATION_STATE_REGISTERED,
    "failed": pb.REGISTRATION_STATE_FAILED,
}


class SipGatewayService(pb_grpc.SipGatewayServiceServicer):
    """``pbxmesh.sipgw.v1.SipGatewayService`` over one gateway's SIP core and trunk lines."""

    def __init__(self, core: SipCore, lines: TrunkLines, providers: Providers | None = None):
        self.core = core
        self.lines = lines
        self.providers = providers

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

    async def ListProviders(
        self, request: pb.ListProvidersRequest, context: Ctx[pb.ListProvidersRequest, pb.ListProvidersResponse]
    ) -> pb.ListProvidersResponse:
        found = []
        for provider in self.providers.links if self.providers is not None else ():
            status = provider.registration.status if provider.registration is not None else None
            found.append(
                pb.Provider(
                    name=provider.name,
                    address=provider.entry.address,
                    targets=[f"{t.host}:{t.port}/{t.transport}" for t in provider.targets],
                    register=status is not None,
                    registration=_REGISTRATION[status.state if status is not None else "unregistered"],
                    last_status=(status.last_status or 0) if status is not None else 0,
                    last_reason=status.last_reason if status is not None else "",
                    expires_at=(status.expires_at or 0.0) if status is not None else 0.0,
                    live=provider.up,
                    lines=provider.lines.usage.lines,
                    lines_in_use=provider.lines.usage.in_use,
                    calls_in=provider.calls_in,
                    calls_out=provider.calls_out,
                )
            )
        return pb.ListProvidersResponse(providers=found)

    async def ListLockouts(
        self, request: pb.ListLockoutsRequest, context: Ctx[pb.ListLockoutsRequest, pb.ListLockoutsResponse]
    ) -> pb.ListLockoutsResponse:
        entries = self.core.registrar.lockout.entries(include_failing=request.include_failing)
        return pb.ListLockoutsResponse(
            lockouts=[_lockout_pb(e) for e in entries[:MAX_LOCKOUTS_LISTED]],
            truncated=len(entries) > MAX_LOCKOUTS_LISTED,
        )

    async def Unlock(
        self, request: pb.UnlockRequest, context: Ctx[pb.UnlockRequest, pb.UnlockResponse]
    ) -> pb.UnlockResponse:
        target = request.target
        if not target or len(target) > MAX_KEY or not target.isprintable():
            raise InvalidArgument(
                f"target: a number or an IP address is required (at most {MAX_KEY} characters)",
                reason="INVALID_TARGET",
            )
        cleared = self.core.registrar.lockout.unlock(target)
        if not cleared:
            raise NotFound(f"no failed authentications are on record for {target}", reason="NOT_LOCKED_OUT")
        return pb.UnlockResponse(cleared=[_lockout_kind(kind) for kind in cleared])


def _lockout_kind(kind: Kind) -> pb.LockoutKind.ValueType:
    return pb.LockoutKind.Value(f"LOCKOUT_KIND_{kind.upper()}")


def _lockout_pb(entry: LockoutEntry) -> pb.Lockout:
    return pb.Lockout(
        kind=_lockout_kind(entry.kind),
        key=entry.key,
        failures=entry.failures,
        locked_for=math.ceil(entry.locked_for),
        delay_ms=round(entry.delay * 1000),
    )


def _place_error(error: PlaceError) -> ServiceError:
    """The SIP status a placed call failed with, as the API's error."""
    if error.status == 404:
        return NotFound(error.reason, reason="NUMBER_NOT_FOUND")
    if error.status == 480:
        return FailedPrecondition(error.reason, reason="NOT_REGISTERED")
    if error.media:
        return Unavailable(error.reason, reason="MEDIA_UNAVAILABLE")
    if error.status == 503:
        return ResourceExhausted(error.reason, reason="NO_TRUNK_LINE")
    return FailedPrecondition(f"{error.status} {error.reason}", reason="CANNOT_CALL")
