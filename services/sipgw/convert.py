"""Between the gateway's calls and its protobuf messages."""

from __future__ import annotations

from pbxmesh.sipgw.v1 import sipgw_pb2 as pb
from services.sipgw.call import Call

STATES = {
    "dialing": pb.CALL_STATE_DIALING,
    "ringing": pb.CALL_STATE_RINGING,
    "answered": pb.CALL_STATE_ANSWERED,
    "ended": pb.CALL_STATE_ENDED,
}


def call_pb(call: Call) -> pb.Call:
    """What the API shows of a call.

    The only place that reads a Call for the API: when the call's fields change, this is the one
    function to adapt.
    """
    kind = pb.CALL_KIND_TRUNK_IN if call.trunk_in else pb.CALL_KIND_TRUNK_OUT if call.trunk_out else pb.CALL_KIND_LOCAL
    message = pb.Call(
        call_id=call.id,
        caller=call.caller,
        callee=call.callee,
        state=STATES.get(call.state, pb.CALL_STATE_UNSPECIFIED),
        kind=kind,
        end_reason=call.end_reason,
    )
    message.started_at.FromNanoseconds(int(call.started_at * 1e9))
    if call.answered_at is not None:
        message.answered_at.FromNanoseconds(int(call.answered_at * 1e9))
    return message
