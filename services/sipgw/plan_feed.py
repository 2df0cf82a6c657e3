"""The group's numbering plan in the gateway's memory, fed by the local registry's WatchNumbers,
and the group's external routes, fed by its WatchExternalRoutes.

A call looks its number up here, not with one RPC per call. If the registry goes away the last
plan stays in use (the registry itself would have kept it too) and the feed reconnects; a fresh
snapshot then replaces it whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re

from pbxmesh.registry.v1 import registry_pb2 as pb
from pbxmesh.registry.v1 import registry_pb2_grpc as pb_grpc
from services.runtime.follow import follow
from services.sipgw.trunk_addresses import TrunkAddresses

_log = logging.getLogger(__name__)


class PlanFeed:
    def __init__(self, registry_address: str):
        self.registry_address = registry_address
        self.routes: dict[str, pb.Route] = {}
        self.connected = False
        self.synced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._external_task: asyncio.Task[None] | None = None
        # The group's routes to the outside, best first (the registry merges and orders them).
        self.external: tuple[pb.ExternalRoute, ...] = ()
        self._snapshot: dict[str, pb.Route] | None = None
        self._patterns: dict[str, re.Pattern[str]] = {}
        self.trunks = TrunkAddresses()  # the servers' advertised trunk addresses, resolved

    def resolve(self, number: str) -> pb.Route | None:
        return self.routes.get(number)

    def trunk_owner(self, address: tuple[str, int]) -> str | None:
        """The server whose trunk the plan puts at ``address`` (None: no member's)."""
        for route in self.routes.values():
            if not route.local and route.trunk_address and self.trunks.address(route.trunk_address) == address:
                return route.server_id
        return None

    def has_server(self, server_id: str) -> bool:
        """Whether ``server_id`` is in the plan: a live member with numbers (a member that leaves
        or dies loses its numbers, and with them its place on the trunk)."""
        return any(route.server_id == server_id for route in self.routes.values())

    def external_for(self, number: str) -> list[pb.ExternalRoute]:
        """The external routes of other servers whose pattern matches ``number``, best first."""
        found = []
        for route in self.external:
            if route.local:
                continue
            pattern = self._patterns.get(route.pattern)
            if pattern is None:
                try:
                    pattern = self._patterns[route.pattern] = re.compile(route.pattern)
                except re.error:
                    continue
            if pattern.fullmatch(number):
                found.append(route)
        return found

    def start(self) -> None:
        self._task = asyncio.create_task(self._follow(), name="plan-feed")
        self._external_task = asyncio.create_task(self._follow_external(), name="external-routes-feed")

    async def stop(self) -> None:
        for task in (self._task, self._external_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.trunks.close()

    async def _follow_external(self) -> None:
        def received(message: pb.WatchExternalRoutesResponse) -> None:
            self.external = tuple(message.routes)
            for route in message.routes:
                if not route.local:
                    self.trunks.learn(route.trunk_address)
            if len(self._patterns) > 4096:
                self._patterns.clear()

        await follow(
            "external routes feed",
            self.registry_address,
            lambda channel: pb_grpc.RegistryServiceStub(channel).WatchExternalRoutes(pb.WatchExternalRoutesRequest()),
            received,
            lambda: None,
            lambda: None,
        )

    async def _follow(self) -> None:
        def connected() -> None:
            self._snapshot = {}  # a fresh snapshot replaces the plan whole once it is complete

        def received(message: pb.WatchNumbersResponse) -> None:
            self._apply(message, self._snapshot)
            if self._snapshot is not None and message.synced:
                self.routes, self._snapshot = self._snapshot, None
                self.synced.set()
                _log.info("numbering plan: %d numbers from the registry", len(self.routes))

        def broken() -> None:
            self.connected = False

        await follow(
            "registry feed",
            self.registry_address,
            lambda channel: pb_grpc.RegistryServiceStub(channel).WatchNumbers(pb.WatchNumbersRequest()),
            received,
            connected,
            broken,
        )

    def _apply(self, message: pb.WatchNumbersResponse, snapshot: dict[str, pb.Route] | None) -> None:
        target = self.routes if snapshot is None else snapshot
        for route in message.upserted:
            target[route.number] = route
            if not route.local:
                self.trunks.learn(route.trunk_address)
        for number in message.removed:
            target.pop(number, None)
        self.connected = message.connected
