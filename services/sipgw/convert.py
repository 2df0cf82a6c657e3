"""Between the gateway's calls and its protobuf messages."""

from __future__ import annotations

from pbxmesh.sipgw.v1 import sipgw_pb2 as pb
from services.sipgw.call import Call, Kind, Phase

PHASES = {
    Phase.DIALING: pb.CALL_STATE_DIALING,
    Phase.RINGING: pb.CALL_STATE_RINGING,
    Phase.ANSWERED: pb.CALL_STATE_ANSWERED,
    Phase.ENDED: pb.CALL_STATE_ENDED,
}
KINDS = {Kind.LOCAL: pb.CALL_KIND_LOCAL, Kind.TRUNK_IN: pb.CALL_KIND_TRUNK_IN, Kind.TRUNK_OUT: pb.CALL_KIND_TRUNK_OUT}


def call_pb(call: Call) -> pb.Call:
    """What the API shows of a call: its parties as each side's leg shows them now."""
    message = pb.Call(
        call_id=call.id,
        caller=call.caller,
        callee=call.callee,
        state=PHASES[call.phase],
        kind=KINDS[call.kind],
        end_reason=call.end_reason,
    )
    message.started_at.FromNanoseconds(int(call.started_at * 1e9))
    if call.answered_at is not None:
        message.answered_at.FromNanoseconds(int(call.answered_at * 1e9))
    return message
