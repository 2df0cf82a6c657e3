"""The gateway's calls, reported to this server's callstate over one long-lived stream.

Each (re)connection starts with every live call (``replay``), so a callstate that restarted knows
them again at once; then every change follows as it happens. What the callstate sends back are
commands for a call: tell the phone its new party, or hang up (its other server left the group).
While the callstate is away, changes are not queued: the next replay carries the calls' states.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping

import grpc
import grpc.aio

from pbxmesh.callstate.v1 import callstate_pb2 as cs
from pbxmesh.callstate.v1 import callstate_pb2_grpc as cs_grpc
from services.runtime.backoff import Backoff
from services.runtime.follow import RETRY_MAX, RETRY_MIN
from services.runtime.logs import call_log
from services.runtime.tls import open_channel
from services.sipgw import tracing
from services.sipgw.b2bua import B2BUA
from services.sipgw.call import Call, Change, Kind, Phase, Side

_log = logging.getLogger(__name__)

KINDS = {
    Change.CREATED: cs.EVENT_KIND_CREATED,
    Change.RINGING: cs.EVENT_KIND_RINGING,
    Change.ANSWERED: cs.EVENT_KIND_ANSWERED,
    Change.HELD: cs.EVENT_KIND_HELD,
    Change.RESUMED: cs.EVENT_KIND_RESUMED,
    Change.TRANSFERRED: cs.EVENT_KIND_TRANSFERRED,
    Change.REROUTED: cs.EVENT_KIND_REROUTED,
    Change.ENDED: cs.EVENT_KIND_ENDED,
}


class Reporter:
    def __init__(self, address: str, calls: B2BUA, server_id: str, numbering: Mapping[str, tuple[str, str]]):
        self.address = address
        self.calls = calls
        self.server_id = server_id
        self.numbering = numbering  # own number -> (name, department)
        self.connected = asyncio.Event()
        self._queue: asyncio.Queue[cs.CallEvent] | None = None  # None while no stream is open
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.calls.listeners.add(self._changed)
        self._task = asyncio.create_task(self._run(), name="callstate-report")

    async def flush(self, timeout: float) -> None:
        """Waits (at most ``timeout`` seconds) until the changes queued so far are on the stream."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self._queue is not None and not self._queue.empty():
            if asyncio.get_running_loop().time() > deadline:
                return
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.05)  # the last batch taken from the queue is written

    async def stop(self) -> None:
        self.calls.listeners.discard(self._changed)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _changed(self, call: Call) -> None:
        if self._queue is not None:
            self._queue.put_nowait(self.event(call, call.event, time.time()))

    async def _run(self) -> None:
        backoff = Backoff(RETRY_MIN, RETRY_MAX)
        while True:
            queue: asyncio.Queue[cs.CallEvent] = asyncio.Queue()
            self._queue = queue  # from now on changes queue up behind the replay
            try:
                async with open_channel(self.address) as channel:
                    stream = cs_grpc.CallStateServiceStub(channel).ReportCalls(self._requests(queue))
                    self.connected.set()
                    async for command in stream:
                        backoff.reset()
                        self._command(command)
            except grpc.aio.AioRpcError as exc:
                quiet = not self.connected.is_set() and backoff.delay > RETRY_MIN  # said once per outage
                (_log.debug if quiet else _log.info)("callstate stream interrupted (%s); retrying", exc.code().name)
            self._queue = None
            self.connected.clear()
            await backoff.sleep()

    async def _requests(self, queue: asyncio.Queue[cs.CallEvent]) -> AsyncIterator[cs.ReportCallsRequest]:
        yield cs.ReportCallsRequest(events=[e for call in self.calls.active() for e in self.replay(call)], replay=True)
        while True:
            batch = [await queue.get()]
            while not queue.empty():
                batch.append(queue.get_nowait())
            yield cs.ReportCallsRequest(events=batch)

    def replay(self, call: Call) -> list[cs.CallEvent]:
        """The events that bring a callstate that knows nothing to this call's state."""
        events = [self.event(call, Change.CREATED, call.started_at)]
        if call.phase in (Phase.RINGING, Phase.ANSWERED):
            events.append(self.event(call, Change.RINGING, call.started_at))
        if call.phase == Phase.ANSWERED and call.answered_at is not None:
            events.append(self.event(call, Change.ANSWERED, call.answered_at))
            if call.held_by:
                events.append(self.event(call, Change.HELD, call.answered_at))
        return events

    def event(self, call: Call, kind: Change, at: float) -> cs.CallEvent:
        # The local party is this server's own (its home side); the remote one is on the other side.
        local, remote = self._party(call, call.home), self._party(call, call.home.other)
        peer = call.peer_server
        by = "" if call.held_by is None else ("local" if call.held_by == call.home else "remote")
        message = cs.CallEvent(
            call_id=call.id,
            kind=KINDS[kind],
            local_party=local,
            remote_party=remote,
            peer_server_id=peer,
            outgoing=call.home == Side.CALLER,
            by=by,
            reason=call.end_reason if call.phase == Phase.ENDED else "",
            path=[*call.path, self.server_id],
            traceparent=tracing.to_text(call.trace),
        )
        message.at.FromNanoseconds(int(at * 1e9))
        return message

    def _party(self, call: Call, side: Side) -> cs.Party:
        number, name = call.party(side)
        leg = call.legs.get(side)
        if leg is not None and leg.provider:
            # The outside world, through one of this server's providers.
            return cs.Party(
                number=number,
                display_name=name,
                server_id=self.server_id,
                external=True,
                provider=leg.provider,
                router_server_id=self.server_id,
            )
        # A callee still ringing over the trunk is remote too; its server is known at the answer.
        remote = leg.trunk if leg is not None else side == Side.CALLEE and call.kind == Kind.TRUNK_OUT
        if remote:
            return cs.Party(number=number, display_name=name, server_id=leg.server if leg is not None else "")
        own_name, department = self.numbering.get(number, ("", ""))
        return cs.Party(number=number, display_name=name or own_name, department=department, server_id=self.server_id)

    def _command(self, command: cs.ReportCallsResponse) -> None:
        which = command.WhichOneof("command")
        if which == "hang_up":
            if self.calls.hang_up(command.call_id, command.hang_up):
                call_log(_log, command.call_id).info("hung up: %s", command.hang_up)
        elif which == "new_party":
            party = command.new_party
            self.calls.tell_party(
                command.call_id, party.number, party.display_name, tracing.from_text(command.traceparent)
            )
