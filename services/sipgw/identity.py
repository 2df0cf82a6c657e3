"""Telling a phone who it now talks to (a transfer or a loop closed elsewhere or here).

The phone gets an UPDATE with P-Asserted-Identity, or a re-INVITE with its SDP unchanged where it
does not take UPDATE (the manner of RFC 4916). Each phone is told an identity once: the same news
arriving a second way (a loop closed here, and the peer server's word of it) sends nothing.
"""

from __future__ import annotations

from services.runtime.telemetry import ATTR_NUMBER
from services.sipgw import tracing
from services.sipgw.call import Call, Phase, Side
from services.sipgw.calls import CallTable
from services.sipgw.sip import Response
from services.sipgw.trunk import IDENTITY


def tell_party(
    table: CallTable,
    call: Call,
    side: Side,
    number: str,
    display: str,
    parent: tracing.Context | None = None,
) -> bool:
    """Tells the party on ``side`` that its party is now ``number`` (``display``); what the API
    shows of the other side follows. False if the call is not in progress."""
    leg = call.legs.get(side)
    if call.phase != Phase.ANSWERED or leg is None or leg.dialog is None:
        return False
    if leg.told == (number, display):
        return True  # this phone knows already
    leg.told = (number, display)
    name = display.replace('"', "")
    host = leg.link.local[0]
    identity = f'"{name}" <sip:{number}@{host}>' if name else f"<sip:{number}@{host}>"
    if leg.allows_update:
        request = table.request(leg, "UPDATE")
    else:
        request = table.request(leg, "INVITE", leg.sdp, "application/sdp")

    def on_answer(response: Response) -> None:
        if request.method == "INVITE" and 200 <= response.status < 300:
            table.ack(leg, request.cseq.number)

    request.headers.add(IDENTITY, identity)
    other = call.legs.get(side.other)
    if other is not None:  # what the API shows follows what the phone is told
        other.number, other.name = number, display
    with tracing.tracer.start_as_current_span("sip tell party", context=parent or call.trace) as span:
        span.set_attribute(ATTR_NUMBER, number)
        span.set_attribute("sip.method", request.method)
        table.send(leg, request, on_answer)
    table.log(call).info("phone told its party is now %s", number)
    return True
