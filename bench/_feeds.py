"""Clients that follow a registry's watch streams and note when each thing arrived."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable

import grpc.aio

from bench._harness import BenchError, channel
from pbxmesh.registry.v1 import registry_pb2 as pb
from pbxmesh.registry.v1 import registry_pb2_grpc as pb_grpc


class _Feed:
    """A stream follower as a task; ``wait_until`` wakes on each message instead of polling."""

    def __init__(self, address: str) -> None:
        self.channel = channel(address)
        self.stub = pb_grpc.RegistryServiceStub(self.channel)
        self.error = ""  # why the stream ended, if it did
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        raise NotImplementedError

    def _notify(self) -> None:
        self._changed.set()

    async def wait_until(self, predicate: Callable[[], bool], wait_s: float) -> bool:
        """True once ``predicate`` holds; False after ``wait_s``; BenchError if the stream ended."""
        deadline = time.monotonic() + wait_s
        while not predicate():
            if self.error:
                raise BenchError(f"{type(self).__name__} stream ended: {self.error}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._changed.wait()
        return True

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            # asyncio.wait, not awaiting the task: a cancellation of the caller must not be taken
            # for the feed's own and swallowed.
            await asyncio.wait([self._task], timeout=5)
        await self.channel.close()


@dataclasses.dataclass
class Snapshot:
    at: float  # perf_counter when its last message (the first with synced) arrived
    routes: int
    messages: int
    connected: bool


class NumbersFeed(_Feed):
    """Follows WatchNumbers by its contract: the snapshot ends at the first message with synced;
    a later change may be split into chunks, and only its last chunk has synced (and the removals).

    ``target``: ``complete_at`` is when a synced, connected message first left this client holding
    at least that many numbers. ``on_upsert`` sees every route with its message's arrival time.
    The channel keeps gRPC's default 4 MiB limit: chunking promises every message fits in it.
    """

    def __init__(
        self, address: str, *, target: int = 0, on_upsert: Callable[[pb.Route, float], None] | None = None
    ) -> None:
        super().__init__(address)
        self.target = target
        self.on_upsert = on_upsert
        self.owners: dict[str, str] = {}  # number -> server id
        self.snapshot: Snapshot | None = None
        self.complete_at: float | None = None
        self.messages = 0
        self.largest = 0  # bytes
        self.most_routes = 0  # in one message
        self.changes = 0  # complete changes after the snapshot
        self.most_chunks = 0  # messages of the longest change
        self.connected: bool | None = None
        self.flips: list[tuple[float, bool]] = []  # connected flag changes after the snapshot
        self.low_water = 0  # fewest numbers held at a synced message since reset_low_water()
        self.misplaced_removals = 0  # removals on a chunk that was not the last of its change
        self._chunks = 0

    def reset_low_water(self) -> None:
        self.low_water = len(self.owners)

    async def _follow(self) -> None:
        # wait_for_ready: a feed may start before its registry listens, and must not fail then.
        call = self.stub.WatchNumbers(pb.WatchNumbersRequest(), wait_for_ready=True)
        try:
            async for message in call:
                self._take(message, time.perf_counter())
            self.error = "the server ended the stream"
        except grpc.aio.AioRpcError as exc:
            self.error = f"{exc.code().name} ({(exc.details() or '')[:80]})"
        finally:
            call.cancel()
            self._notify()

    def _take(self, message: pb.WatchNumbersResponse, now: float) -> None:
        self.messages += 1
        self.largest = max(self.largest, message.ByteSize())
        self.most_routes = max(self.most_routes, len(message.upserted))
        for route in message.upserted:
            self.owners[route.number] = route.server_id
            if self.on_upsert is not None:
                self.on_upsert(route, now)
        for number in message.removed:
            self.owners.pop(number, None)
        self._chunks += 1
        if message.removed and not message.synced:
            self.misplaced_removals += 1
        if message.synced:
            held = len(self.owners)
            if self.snapshot is None:
                self.snapshot = Snapshot(now, held, self._chunks, message.connected)
            else:
                self.changes += 1
                self.most_chunks = max(self.most_chunks, self._chunks)
                if message.connected != self.connected:
                    self.flips.append((now, message.connected))
            self.connected = message.connected
            self._chunks = 0
            self.low_water = min(self.low_water, held)
            if self.complete_at is None and message.connected and held >= self.target:
                self.complete_at = now
        self._notify()


class MembersFeed(_Feed):
    """Follows WatchMembers; notes when each server joined and left."""

    def __init__(self, address: str) -> None:
        super().__init__(address)
        self.synced = False
        self.joined: dict[str, float] = {}
        self.left: dict[str, float] = {}

    async def _follow(self) -> None:
        call = self.stub.WatchMembers(pb.WatchMembersRequest())
        try:
            async for message in call:
                now = time.perf_counter()
                for member in message.upserted:
                    self.joined[member.server_id] = now
                    self.left.pop(member.server_id, None)
                for server_id in message.left:
                    self.left[server_id] = now
                self.synced = self.synced or message.synced
                self._notify()
            self.error = "the server ended the stream"
        except grpc.aio.AioRpcError as exc:
            self.error = f"{exc.code().name} ({(exc.details() or '')[:80]})"
        finally:
            call.cancel()
            self._notify()
