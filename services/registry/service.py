"""The registry's gRPC API over one server's PlanView."""

from __future__ import annotations

import bisect
import itertools
import logging
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence

import grpc.aio
from opentelemetry import trace

from pbxmesh.registry.v1 import registry_pb2 as pb
from pbxmesh.registry.v1 import registry_pb2_grpc as pb_grpc
from services.registry.errors import (
    InvalidNumber,
    InvalidPage,
    NumberNotFound,
    NumberNotOwned,
    UnknownDepartment,
    UnknownProvider,
)
from services.registry.membership import GroupLink
from services.registry.plan import ExternalRoute, MembersChange, NumbersChange, PlanView, Route
from services.registry.records import MemberInfo, NumberRecord
from services.runtime.config import NUMBER_RE
from services.runtime.subscription import Subscription
from services.runtime.telemetry import ATTR_NUMBER, ATTR_ROUTE_SERVER_ID
from services.runtime.text import MAX_NAME, printable, problem

_log = logging.getLogger(__name__)

KIND_TO_PB = {
    "user": pb.NUMBER_KIND_USER,
    "department": pb.NUMBER_KIND_DEPARTMENT,
    "ivr": pb.NUMBER_KIND_IVR,
    "queue": pb.NUMBER_KIND_QUEUE,
    "conference": pb.NUMBER_KIND_CONFERENCE,
}
PB_TO_KIND = {v: k for k, v in KIND_TO_PB.items()}

# Routes per stream message: small enough for gRPC's default 4 MiB limit, and for the event loop
# to go on serving between two messages of a 100,000-number snapshot.
CHUNK = 2000
MAX_PAGE = 10_000

Ctx = grpc.aio.ServicerContext


def route_pb(route: Route) -> pb.Route:
    return pb.Route(
        number=route.number,
        server_id=route.server_id,
        server_name=route.server_name,
        local=route.local,
        display_name=route.display_name,
        department_id=route.department,
        kind=KIND_TO_PB.get(route.kind, pb.NUMBER_KIND_UNSPECIFIED),
        trunk_address=route.trunk_address,
    )


def external_pb(route: ExternalRoute) -> pb.ExternalRoute:
    return pb.ExternalRoute(
        pattern=route.pattern,
        server_id=route.server_id,
        server_name=route.server_name,
        provider=route.provider,
        priority=route.priority,
        local=route.local,
        trunk_address=route.trunk_address,
        join_revision=route.join_revision,
        live=route.up,
    )


def member_pb(member: MemberInfo, local_id: str) -> pb.Member:
    return pb.Member(
        server_id=member.server_id,
        name=member.name,
        join_revision=member.join_revision,
        local=member.server_id == local_id,
        registry_address=member.registry_address,
        trunk_address=member.trunk_address,
        callstate_address=member.callstate_address,
    )


def _check_number(number: str) -> None:
    if not NUMBER_RE.fullmatch(number):
        raise InvalidNumber(f"number {number[:40]!r} does not match {NUMBER_RE.pattern}")


class RegistryService(pb_grpc.RegistryServiceServicer):
    def __init__(self, view: PlanView, link: GroupLink):
        self.view = view
        self.link = link
        self._sorted: tuple[int, list[str]] = (-1, [])

    def register(self, server: grpc.aio.Server) -> Iterable[str]:
        pb_grpc.add_RegistryServiceServicer_to_server(self, server)
        return [pb.DESCRIPTOR.services_by_name["RegistryService"].full_name]

    async def ResolveNumber(
        self,
        request: pb.ResolveNumberRequest,
        context: Ctx[pb.ResolveNumberRequest, pb.ResolveNumberResponse],
    ) -> pb.ResolveNumberResponse:
        _check_number(request.number)
        route = self.view.resolve(request.number)
        span = trace.get_current_span()
        span.set_attribute(ATTR_NUMBER, request.number)
        if route is None:
            external = self.view.external_for(request.number)
            if not external:
                raise NumberNotFound(f"no live member has number {request.number} and no external route matches it")
            span.set_attribute(ATTR_ROUTE_SERVER_ID, external[0].server_id)
            return pb.ResolveNumberResponse(external=[external_pb(r) for r in external])
        span.set_attribute(ATTR_ROUTE_SERVER_ID, route.server_id)
        return pb.ResolveNumberResponse(route=route_pb(route))

    async def ListNumbers(
        self, request: pb.ListNumbersRequest, context: Ctx[pb.ListNumbersRequest, pb.ListNumbersResponse]
    ) -> pb.ListNumbersResponse:
        if not 0 <= request.page_size <= MAX_PAGE:
            raise InvalidPage(f"page_size must be between 0 and {MAX_PAGE}")
        if request.page_token:
            _check_number(request.page_token)
        size = request.page_size or MAX_PAGE
        numbers = self._sorted_numbers()
        routes = self.view.routes
        start = bisect.bisect_right(numbers, request.page_token) if request.page_token else 0
        page: list[Route] = []
        for number in itertools.islice(numbers, start, None):
            route = routes.get(number)
            if route is None or (request.server_id and route.server_id != request.server_id):
                continue
            if len(page) == size:
                return pb.ListNumbersResponse(routes=[route_pb(r) for r in page], next_page_token=page[-1].number)
            page.append(route)
        return pb.ListNumbersResponse(routes=[route_pb(r) for r in page])

    def _sorted_numbers(self) -> list[str]:
        """The plan's numbers in order, sorted again only after the plan changed."""
        if self._sorted[0] != self.view.version:
            self._sorted = (self.view.version, sorted(self.view.routes))
        return self._sorted[1]

    async def WatchNumbers(
        self, request: pb.WatchNumbersRequest, context: Ctx[pb.WatchNumbersRequest, pb.WatchNumbersResponse]
    ) -> AsyncIterator[pb.WatchNumbersResponse]:
        changes: Subscription[NumbersChange | MembersChange] = Subscription()
        unsubscribe = (self.view.on_numbers(changes.put), self.view.on_members(changes.put))
        try:
            # Snapshot and subscription with no await between them: nothing is missed or doubled.
            routes = [self.view.routes[n] for n in self._sorted_numbers()]
            connected = self.view.connected
            for message in _route_messages(routes, (), connected):
                yield message
            while True:
                change = await changes.get()
                if isinstance(change, MembersChange):
                    if change.connected != connected:
                        connected = change.connected
                        yield pb.WatchNumbersResponse(synced=True, connected=connected)
                    continue
                for message in _route_messages(change.upserted, change.removed, connected):
                    yield message
        finally:
            for stop in unsubscribe:
                stop()

    async def ListMembers(
        self, request: pb.ListMembersRequest, context: Ctx[pb.ListMembersRequest, pb.ListMembersResponse]
    ) -> pb.ListMembersResponse:
        local = self.view.local_id
        return pb.ListMembersResponse(
            members=[member_pb(m, local) for m in self.view.live_members()], connected=self.view.connected
        )

    async def WatchMembers(
        self, request: pb.WatchMembersRequest, context: Ctx[pb.WatchMembersRequest, pb.WatchMembersResponse]
    ) -> AsyncIterator[pb.WatchMembersResponse]:
        local = self.view.local_id
        changes: Subscription[MembersChange] = Subscription()
        unsubscribe = self.view.on_members(changes.put)
        try:
            members = [member_pb(m, local) for m in self.view.live_members()]
            yield pb.WatchMembersResponse(upserted=members, synced=True, connected=self.view.connected)
            while True:
                change = await changes.get()
                yield pb.WatchMembersResponse(
                    upserted=[member_pb(m, local) for m in change.upserted],
                    left=list(change.left),
                    synced=True,
                    connected=change.connected,
                )
        finally:
            unsubscribe()

    async def ListDepartments(
        self,
        request: pb.ListDepartmentsRequest,
        context: Ctx[pb.ListDepartmentsRequest, pb.ListDepartmentsResponse],
    ) -> pb.ListDepartmentsResponse:
        return pb.ListDepartmentsResponse(
            departments=[
                pb.Department(
                    id=d.id,
                    name=d.name,
                    server_ids=list(d.server_ids),
                    numbers=[route_pb(r) for r in d.numbers],
                )
                for d in self.view.merged_departments()
            ]
        )

    async def ListConflicts(
        self,
        request: pb.ListConflictsRequest,
        context: Ctx[pb.ListConflictsRequest, pb.ListConflictsResponse],
    ) -> pb.ListConflictsResponse:
        def claim(member: MemberInfo, record: NumberRecord) -> pb.Claim:
            return pb.Claim(
                server_id=member.server_id,
                server_name=member.name,
                join_revision=member.join_revision,
                display_name=record.name,
            )

        return pb.ListConflictsResponse(
            conflicts=[
                pb.Conflict(
                    number=c.number,
                    winner=claim(c.winner, c.winner_record),
                    losers=[claim(m, r) for m, r in c.losers],
                    reason=pb.CONFLICT_REASON_OWN_NUMBER if c.own_number else pb.CONFLICT_REASON_EARLIER_JOIN,
                )
                for c in self.view.conflicts()
            ]
        )

    async def UpsertNumber(
        self, request: pb.UpsertNumberRequest, context: Ctx[pb.UpsertNumberRequest, pb.UpsertNumberResponse]
    ) -> pb.UpsertNumberResponse:
        _check_number(request.number)
        if request.kind not in PB_TO_KIND and request.kind != pb.NUMBER_KIND_UNSPECIFIED:
            raise InvalidNumber(f"unknown number kind {request.kind}", reason="INVALID_KIND")
        # The display name goes into every server's plan, their logs and SIP headers (From,
        # P-Asserted-Identity): the config file's rule for names holds here too.
        wrong = problem(request.display_name, MAX_NAME)
        if wrong is not None:
            raise InvalidNumber(f"display_name {wrong}", reason="INVALID_DISPLAY_NAME")
        own_departments = self.view.departments[self.view.local_id]
        if request.department_id and request.department_id not in own_departments:
            raise UnknownDepartment(f"this server has no department {printable(request.department_id[:64])!r}")
        record = NumberRecord(
            number=request.number,
            name=request.display_name,
            department=request.department_id,
            kind=PB_TO_KIND.get(request.kind, "user"),
        )
        await self.link.upsert_number(record)
        route = self.view.resolve(request.number)
        assert route is not None and route.local
        return pb.UpsertNumberResponse(route=route_pb(route))

    async def RemoveNumber(
        self, request: pb.RemoveNumberRequest, context: Ctx[pb.RemoveNumberRequest, pb.RemoveNumberResponse]
    ) -> pb.RemoveNumberResponse:
        _check_number(request.number)
        if request.number not in self.view.plans[self.view.local_id]:
            raise NumberNotOwned(f"this server has no own number {request.number}")
        await self.link.remove_number(request.number)
        return pb.RemoveNumberResponse()

    async def ListExternalRoutes(
        self,
        request: pb.ListExternalRoutesRequest,
        context: Ctx[pb.ListExternalRoutesRequest, pb.ListExternalRoutesResponse],
    ) -> pb.ListExternalRoutesResponse:
        return pb.ListExternalRoutesResponse(
            routes=[external_pb(r) for r in self.view.external_routes], connected=self.view.connected
        )

    async def WatchExternalRoutes(
        self,
        request: pb.WatchExternalRoutesRequest,
        context: Ctx[pb.WatchExternalRoutesRequest, pb.WatchExternalRoutesResponse],
    ) -> AsyncIterator[pb.WatchExternalRoutesResponse]:
        changes: Subscription[tuple[ExternalRoute, ...] | MembersChange] = Subscription()
        unsubscribe = (self.view.on_external(changes.put), self.view.on_members(changes.put))
        try:
            routes, connected = self.view.external_routes, self.view.connected
            yield pb.WatchExternalRoutesResponse(routes=[external_pb(r) for r in routes], connected=connected)
            while True:
                change = await changes.get()
                if isinstance(change, MembersChange):
                    if change.connected == connected:
                        continue
                    connected = change.connected
                else:
                    routes = change
                yield pb.WatchExternalRoutesResponse(routes=[external_pb(r) for r in routes], connected=connected)
        finally:
            for stop in unsubscribe:
                stop()

    async def SetProviderState(
        self,
        request: pb.SetProviderStateRequest,
        context: Ctx[pb.SetProviderStateRequest, pb.SetProviderStateResponse],
    ) -> pb.SetProviderStateResponse:
        routes = [r for r in self.view.external[self.view.local_id] if r.provider == request.provider]
        if not routes:
            raise UnknownProvider(f"this server has no route through a provider {printable(request.provider[:64])!r}")
        await self.link.set_provider_state(request.provider, request.live)
        return pb.SetProviderStateResponse(routes=len(routes))


def _route_messages(
    upserted: Sequence[Route], removed: Sequence[str], connected: bool
) -> Iterator[pb.WatchNumbersResponse]:
    """Splits a change into messages of at most CHUNK routes, converted one message at a time."""
    count = max(1, -(-len(upserted) // CHUNK))
    for i in range(count):
        last = i == count - 1
        yield pb.WatchNumbersResponse(
            upserted=[route_pb(r) for r in upserted[i * CHUNK : (i + 1) * CHUNK]],
            removed=list(removed) if last else [],
            synced=last,
            connected=connected,
        )
