"""The callstate's gRPC API: the gateway's report stream, peers' shares, and the call views."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import AsyncIterator, Iterable

import grpc.aio
from opentelemetry import trace

from pbxmesh.callstate.v1 import callstate_pb2 as cs
from pbxmesh.callstate.v1 import callstate_pb2_grpc as cs_grpc
from services.callstate.convert import call_pb, event_of, party_of, party_pb, share_of, share_pb
from services.callstate.model import ENDED, CallBook, CallRecord, Event, Outcome, Party
from services.callstate.peers import Peers
from services.runtime.access import current_caller
from services.runtime.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from services.runtime.logs import call_log, call_traces, trace_id_of
from services.runtime.subscription import Subscription, answer_while
from services.runtime.telemetry import ATTR_CALL_ID
from services.runtime.text import MAX_ID, MAX_NAME, problem
from services.runtime.trace_context import current, from_text, to_text

_log = logging.getLogger(__name__)

Ctx = grpc.aio.ServicerContext
tracer = trace.get_tracer("pbxmesh.callstate")
KEEP_ENDED = 60.0  # seconds an ended call stays visible to GetCall
MAX_REMEMBERED = 10_000  # calls a watch remembers the last message of (to send changes only)
HOLD_COMMANDS = 1_000  # commands kept while no gateway is connected, for the next one


class CallStateService(cs_grpc.CallStateServiceServicer):
    def __init__(self, book: CallBook, peers: Peers):
        self.book = book
        self.peers = peers
        self.gateway: Subscription[cs.ReportCallsResponse] | None = None  # the newest report stream
        # Commands made while no gateway was connected (it restarts, or reconnects after a
        # callstate restart): the next stream gets them; one for a call it no longer has is a no-op.
        self.held: collections.deque[cs.ReportCallsResponse] = collections.deque(maxlen=HOLD_COMMANDS)
        self._forgetting: set[str] = set()  # ended calls whose removal is scheduled
        book.listeners.add(self._forget_later)

    def register(self, server: grpc.aio.Server) -> Iterable[str]:
        cs_grpc.add_CallStateServiceServicer_to_server(self, server)
        return [cs.DESCRIPTOR.services_by_name["CallStateService"].full_name]

    # -- the gateway --------------------------------------------------------------------------

    async def ReportCalls(
        self,
        request_iterator: AsyncIterator[cs.ReportCallsRequest],
        context: Ctx[cs.ReportCallsRequest, cs.ReportCallsResponse],
    ) -> AsyncIterator[cs.ReportCallsResponse]:
        commands: Subscription[cs.ReportCallsResponse] = Subscription()
        self.gateway = commands
        while self.held:
            commands.put(self.held.popleft())

        async def read() -> None:
            async for request in request_iterator:
                for event in request.events:
                    self.report(event_of(event), event.traceparent)
                if request.replay:
                    self._end_missing({e.call_id for e in request.events})

        try:
            async for command in answer_while(read(), commands):
                yield command
        finally:
            if self.gateway is commands:
                self.gateway = None

    def report(self, event: Event, traceparent: str = "") -> None:
        if not event.call_id or len(event.call_id) > MAX_ID or not event.kind:
            _log.warning("gateway event without a call id or kind ignored")
            return
        wrong = _party_problem(event.local, "local") or _party_problem(event.remote, "remote")
        wrong = wrong or _text_problem(event.reason, "reason") or _text_problem(event.by, "by", MAX_ID)
        if wrong is not None:
            call_log(_log, event.call_id).warning("gateway event ignored: %s", wrong)
            return
        # Within the call's trace: what this change makes this server do (a share, a command) joins it.
        with tracer.start_as_current_span(f"callstate {event.kind}", context=from_text(traceparent)) as span:
            span.set_attribute(ATTR_CALL_ID, event.call_id)
            if traceparent:
                call_traces.setdefault(event.call_id, trace_id_of(span))
            self._follow_up(event.call_id, self.book.apply(event))

    def _end_missing(self, live: set[str]) -> None:
        """A (re)connected gateway replayed its live calls: the calls it had reported and no
        longer has ended while it was away (it restarted, or its changes were not sent)."""
        _log.info("the gateway reports %d live calls", len(live))
        gone = [c.call_id for c in self.book.active() if c.reported and c.call_id not in live]
        for call_id in gone:
            call_log(_log, call_id).info("no longer on the gateway; ended")
            event = Event(call_id, "ended", time.time(), reason="the gateway no longer has the call")
            self._follow_up(call_id, self.book.apply(event))

    def _follow_up(self, call_id: str, outcome: Outcome) -> None:
        call = self.book.calls.get(call_id)
        if outcome.share is not None and call is not None and call.peer_server_id:
            self.peers.send(call.peer_server_id, share_pb(outcome.share), current())
        if outcome.new_party is not None:
            party = party_pb(outcome.new_party)
            self.command(cs.ReportCallsResponse(call_id=call_id, new_party=party, traceparent=to_text(current())))

    def command(self, command: cs.ReportCallsResponse) -> None:
        if self.gateway is None:
            call_log(_log, command.call_id).warning("no gateway connected; the command waits for it")
            self.held.append(command)
            return
        self.gateway.put(command)

    # -- the other servers ----------------------------------------------------------------------

    async def ShareParty(
        self, request: cs.SharePartyRequest, context: Ctx[cs.SharePartyRequest, cs.SharePartyResponse]
    ) -> cs.SharePartyResponse:
        if not request.call_id or len(request.call_id) > MAX_ID:
            raise InvalidArgument(f"call_id is required (at most {MAX_ID} characters)", reason="INVALID_CALL_ID")
        if not request.server_id or request.server_id == self.book.server_id:
            raise InvalidArgument("server_id must name another server of the group", reason="INVALID_SERVER")
        sender = current_caller()
        if sender is not None and sender.name != request.server_id:
            # With TLS a server speaks for itself only: its certificate names who sends.
            raise PermissionDenied(f"{sender} may not share for server {request.server_id}", reason="NOT_THE_SENDER")
        wrong = _party_problem(party_of(request.party), "party") or _text_problem(request.reason, "reason")
        wrong = (
            wrong or _text_problem(request.held_by, "held_by", MAX_ID) or _text_problem(request.server_id, "server_id")
        )
        if wrong is not None:
            raise InvalidArgument(wrong, reason="INVALID_PARTY")
        if not self.peers.is_member(request.server_id):
            raise FailedPrecondition(f"server {request.server_id} is not a live member", reason="NOT_A_MEMBER")
        self._follow_up(request.call_id, self.book.shared(share_of(request)))
        return cs.SharePartyResponse(party=party_pb(self.book.answer_for(request.call_id, request.server_id)))

    def on_answer(self, request: cs.SharePartyRequest, answer: cs.SharePartyResponse) -> None:
        self.book.learned(request.call_id, party_of(answer.party))

    def on_left(self, server_id: str) -> None:
        """Another server left the group: its calls here end (the gateway hangs up its side)."""
        reason = f"server {server_id} left the group"
        for call in self.book.with_peer(server_id):
            self.command(cs.ReportCallsResponse(call_id=call.call_id, hang_up=reason))
            self.book.apply(Event(call.call_id, "ended", time.time(), reason=reason))

    # -- views --------------------------------------------------------------------------------

    async def GetCall(
        self, request: cs.GetCallRequest, context: Ctx[cs.GetCallRequest, cs.GetCallResponse]
    ) -> cs.GetCallResponse:
        call = self.book.calls.get(request.call_id)
        if call is None:
            raise NotFound(f"no call has id {request.call_id[:MAX_ID]!r}", reason="CALL_NOT_FOUND")
        return cs.GetCallResponse(call=call_pb(call))

    async def ListCalls(
        self, request: cs.ListCallsRequest, context: Ctx[cs.ListCallsRequest, cs.ListCallsResponse]
    ) -> cs.ListCallsResponse:
        return cs.ListCallsResponse(calls=[call_pb(c) for c in self.book.active()])

    async def WatchCalls(
        self, request: cs.WatchCallsRequest, context: Ctx[cs.WatchCallsRequest, cs.WatchCallsResponse]
    ) -> AsyncIterator[cs.WatchCallsResponse]:
        if problem(request.call_id, MAX_ID) is not None:
            raise InvalidArgument(
                f"call_id: at most {MAX_ID} characters, no control characters", reason="INVALID_CALL_ID"
            )
        wanted = request.call_id
        changes: Subscription[cs.Call] = Subscription()
        sent: dict[str, cs.Call] = {}  # the last state sent of each call: no message for no change

        def listen(call: CallRecord) -> None:
            if not wanted or call.call_id == wanted:
                message = call_pb(call)  # converted now: the record changes on
                if sent.get(call.call_id) != message:
                    sent.pop(call.call_id, None)
                    sent[call.call_id] = message
                    if len(sent) > MAX_REMEMBERED:  # the calls changed least recently go first
                        del sent[next(iter(sent))]
                    changes.put(message)

        self.book.listeners.add(listen)
        try:
            if wanted:
                found = self.book.calls.get(wanted)
                snapshot = [call_pb(found)] if found is not None else []
            else:
                snapshot = [call_pb(c) for c in self.book.active()]
            yield cs.WatchCallsResponse(calls=snapshot, synced=True)
            while True:
                yield cs.WatchCallsResponse(calls=[await changes.get()], synced=True)
        finally:
            self.book.listeners.discard(listen)

    def _forget_later(self, call: CallRecord) -> None:
        # Once per call: an ended call still changes (the other server's end time aligns it).
        if call.phase == ENDED and call.call_id not in self._forgetting:
            self._forgetting.add(call.call_id)
            asyncio.get_running_loop().call_later(KEEP_ENDED, self._forget, call)

    def _forget(self, call: CallRecord) -> None:
        self._forgetting.discard(call.call_id)
        if self.book.calls.get(call.call_id) is call:
            self.book.forget(call.call_id)
            call_traces.pop(call.call_id, None)


def _text_problem(value: str, field: str, limit: int = MAX_NAME) -> str | None:
    wrong = problem(value, limit)
    return f"{field} {wrong}" if wrong is not None else None


def _party_problem(party: Party, field: str) -> str | None:
    """A party goes into the plan-like views, the logs and, on the gateway, a SIP header
    (P-Asserted-Identity): the config file's rules for numbers, names and ids hold here too."""
    for name, value, limit in (
        ("number", party.number, MAX_ID),
        ("display_name", party.display_name, MAX_NAME),
        ("department", party.department, MAX_ID),
        ("server_id", party.server_id, MAX_ID),
        ("server_name", party.server_name, MAX_NAME),
        ("provider", party.provider, MAX_ID),
        ("router_server_id", party.router_server_id, MAX_ID),
    ):
        wrong = _text_problem(value, f"{field}.{name}", limit)
        if wrong is not None:
            return wrong
    return None
