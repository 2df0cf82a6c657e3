"""Between the callstate's records and its protobuf messages."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from pbxmesh.callstate.v1 import callstate_pb2 as cs
from services.callstate.model import ANSWERED, DIALING, ENDED, HELD, RINGING, CallRecord, Event, Party, Share

PHASES = {
    DIALING: cs.CALL_PHASE_DIALING,
    RINGING: cs.CALL_PHASE_RINGING,
    ANSWERED: cs.CALL_PHASE_ANSWERED,
    HELD: cs.CALL_PHASE_HELD,
    ENDED: cs.CALL_PHASE_ENDED,
}
PHASE_NAMES = {value: name for name, value in PHASES.items()}
EVENT_KINDS = {
    cs.EVENT_KIND_CREATED: "created",
    cs.EVENT_KIND_RINGING: "ringing",
    cs.EVENT_KIND_ANSWERED: "answered",
    cs.EVENT_KIND_HELD: "held",
    cs.EVENT_KIND_RESUMED: "resumed",
    cs.EVENT_KIND_TRANSFERRED: "transferred",
    cs.EVENT_KIND_ENDED: "ended",
    cs.EVENT_KIND_REROUTED: "rerouted",
}


def stamp(at: float) -> Timestamp:
    value = Timestamp()
    value.FromNanoseconds(int(at * 1e9))
    return value


def seconds(value: Timestamp) -> float:
    return value.ToNanoseconds() / 1e9


def party_pb(party: Party) -> cs.Party:
    return cs.Party(
        number=party.number,
        display_name=party.display_name,
        department=party.department,
        server_id=party.server_id,
        server_name=party.server_name,
        external=party.external,
        provider=party.provider,
        router_server_id=party.router_server_id,
    )


def party_of(message: cs.Party) -> Party:
    return Party(
        message.number,
        message.display_name,
        message.department,
        message.server_id,
        message.server_name,
        message.external,
        message.provider,
        message.router_server_id,
    )


def event_of(message: cs.CallEvent) -> Event:
    return Event(
        call_id=message.call_id,
        kind=EVENT_KINDS.get(message.kind, ""),
        at=seconds(message.at),
        local=party_of(message.local_party),
        remote=party_of(message.remote_party),
        peer_server_id=message.peer_server_id,
        outgoing=message.outgoing,
        by=message.by,
        reason=message.reason,
        path=tuple(message.path),
    )


def share_pb(share: Share) -> cs.SharePartyRequest:
    return cs.SharePartyRequest(
        call_id=share.call_id,
        server_id=share.server_id,
        party=party_pb(share.party),
        phase=PHASES[share.phase],
        at=stamp(share.at),
        segment=share.segment,
        held_by=share.held_by,
        reason=share.reason,
    )


def share_of(message: cs.SharePartyRequest) -> Share:
    return Share(
        call_id=message.call_id,
        server_id=message.server_id,
        party=party_of(message.party),
        phase=PHASE_NAMES.get(message.phase, DIALING),
        at=seconds(message.at),
        segment=message.segment,
        held_by=message.held_by,
        reason=message.reason,
    )


def call_pb(call: CallRecord) -> cs.Call:
    message = cs.Call(
        call_id=call.call_id,
        local_party=party_pb(call.local),
        remote_party=party_pb(call.remote),
        phase=PHASES[call.phase],
        cross_server=call.cross_server,
        peer_server_id=call.peer_server_id,
        held_by=call.held_by,
        started_at=stamp(call.started_at),
        end_reason=call.end_reason,
        path=list(call.path),
        outgoing=call.outgoing,
    )
    if call.answered_at is not None:
        message.answered_at.CopyFrom(stamp(call.answered_at))
    if call.ended_at is not None:
        message.ended_at.CopyFrom(stamp(call.ended_at))
    for segment in call.segments:
        item = message.segments.add(
            segment_id=f"{call.call_id}/{segment.n}",
            started_at=stamp(segment.started_at),
            local_party=party_pb(segment.local),
            remote_party=party_pb(segment.remote),
            server_ids=list(segment.server_ids),
            held=segment.held,
        )
        if segment.ended_at is not None:
            item.ended_at.CopyFrom(stamp(segment.ended_at))
    return message
