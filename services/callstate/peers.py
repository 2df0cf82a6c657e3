"""The other servers' callstates: where they are (the registry's member records) and a sender per
peer that delivers shares in order.

Members come from the local registry's WatchMembers. A member that leaves while this server is
connected to the group (its lease expired, or it left) is reported to ``on_left``: its calls end
here. A server that is itself cut off ends nothing: its peers may well be alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import grpc
import grpc.aio
from opentelemetry import trace

from pbxmesh.callstate.v1 import callstate_pb2 as cs
from pbxmesh.callstate.v1 import callstate_pb2_grpc as cs_grpc
from pbxmesh.registry.v1 import registry_pb2 as pb
from pbxmesh.registry.v1 import registry_pb2_grpc as pb_grpc
from services.runtime.backoff import Backoff
from services.runtime.follow import follow
from services.runtime.tls import links_version, open_channel
from services.runtime.trace_context import Context

_log = logging.getLogger(__name__)
tracer = trace.get_tracer("pbxmesh.callstate")

SHARE_TIMEOUT = 2.0
# How long a share is retried (the peer restarting, its view of the group a moment behind this
# one's) before it is given up; the shares behind it to the same peer wait meanwhile.
SHARE_PATIENCE = 10.0
RETRY_FIRST, RETRY_LAST = 0.05, 1.0
# Answers that will not change by asking again.
FINAL = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.PERMISSION_DENIED}


class Peers:
    def __init__(self, registry_address: str):
        self.registry_address = registry_address
        # Set by the owner: a member left (while connected); a peer answered a share.
        self.on_left: Callable[[str], None] = lambda server_id: None
        self.on_answer: Callable[[cs.SharePartyRequest, cs.SharePartyResponse], None] = lambda r, a: None
        self.members: dict[str, pb.Member] = {}
        self.synced = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._queues: dict[str, asyncio.Queue[tuple[cs.SharePartyRequest, Context | None]]] = {}
        self._channels: dict[tuple[str, str, int], grpc.aio.Channel] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._snapshot: dict[str, pb.Member] | None = None

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._follow(), name="members-feed"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for channel in self._channels.values():
            await channel.close()

    def is_member(self, server_id: str) -> bool:
        return server_id in self.members

    def send(self, server_id: str, request: cs.SharePartyRequest, trace_context: Context | None = None) -> None:
        """Queues a share for ``server_id``; shares to one peer leave in the order they were queued,
        each in the trace it belongs to."""
        queue = self._queues.get(server_id)
        if queue is None:
            queue = self._queues[server_id] = asyncio.Queue()
            self._tasks.append(asyncio.create_task(self._deliver(server_id, queue), name=f"share-{server_id}"))
        queue.put_nowait((request, trace_context))

    async def _deliver(self, server_id: str, queue: asyncio.Queue[tuple[cs.SharePartyRequest, Context | None]]) -> None:
        while True:
            request, trace_context = await queue.get()
            with tracer.start_as_current_span("callstate share", context=trace_context):
                await self._share(server_id, request)

    async def _share(self, server_id: str, request: cs.SharePartyRequest) -> None:
        deadline = asyncio.get_running_loop().time() + SHARE_PATIENCE
        backoff, attempt = Backoff(RETRY_FIRST, RETRY_LAST), 0
        while True:
            attempt += 1
            member = self.members.get(server_id)
            if member is not None and member.callstate_address:
                try:
                    stub = cs_grpc.CallStateServiceStub(self._channel(server_id, member.callstate_address))
                    answer = await stub.ShareParty(request, timeout=SHARE_TIMEOUT)
                except grpc.aio.AioRpcError as exc:
                    why = exc.code().name
                    if exc.code() in FINAL:
                        _log.warning("call %s: server %s refused a share (%s)", request.call_id, server_id, why)
                        return
                else:
                    self.on_answer(request, answer)
                    return
            else:
                why = "not a member" if member is None else "no callstate address"
            if asyncio.get_running_loop().time() + backoff.delay > deadline:
                _log.warning(
                    "call %s: gave up sharing with server %s after %d attempts (%s)",
                    request.call_id, server_id, attempt, why,
                )  # fmt: skip
                return
            if attempt == 1 or attempt % 5 == 0:
                _log.info("call %s: sharing with server %s failed (%s), retrying", request.call_id, server_id, why)
            await backoff.sleep()

    def _channel(self, server_id: str, address: str) -> grpc.aio.Channel:
        """The channel to a peer's callstate; with TLS, the peer must present the certificate of
        ``server_id`` (its record in the registry says where, its certificate says who). A channel
        opened before the TLS files were renewed is replaced."""
        key = (server_id, address, links_version())
        channel = self._channels.get(key)
        if channel is None:
            for old in [k for k in self._channels if k[:2] == key[:2]]:
                self._closing.add(asyncio.create_task(self._channels.pop(old).close(grace=SHARE_TIMEOUT)))
            channel = self._channels[key] = open_channel(address, server_id)
        return channel

    async def _follow(self) -> None:
        def connected() -> None:
            self._snapshot = {}

        def received(message: pb.WatchMembersResponse) -> None:
            self._snapshot = self._apply(message, self._snapshot)

        await follow(
            "members feed",
            self.registry_address,
            lambda channel: pb_grpc.RegistryServiceStub(channel).WatchMembers(pb.WatchMembersRequest()),
            received,
            connected,
        )

    def _apply(
        self, message: pb.WatchMembersResponse, snapshot: dict[str, pb.Member] | None
    ) -> dict[str, pb.Member] | None:
        if snapshot is not None:
            for member in message.upserted:
                snapshot[member.server_id] = member
            for server_id in message.left:
                snapshot.pop(server_id, None)
            if not message.synced:
                return snapshot
            gone = [s for s in self.members if s not in snapshot]
            self.members = snapshot
            self.synced.set()
        else:
            for member in message.upserted:
                self.members[member.server_id] = member
            gone = [s for s in message.left if self.members.pop(s, None) is not None]
        if message.connected:
            for server_id in gone:
                _log.info("server %s left the group", server_id)
                self.on_left(server_id)
        return None
