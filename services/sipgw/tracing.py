"""One trace per call, across servers.

A call's setup opens a span; every later span of the call (a transfer, telling a phone its new
party, the end) is its child, on this server and, through the trace context carried along, on the
others: a ``traceparent`` header on trunk requests (taken only from the trunk, whose requests prove
they come from the group; a phone's is ignored), the ``traceparent`` field of the events the gateway
reports to its callstate, and gRPC metadata between callstates (the gRPC instrumentation). Span
attributes are listed in services/runtime/telemetry.py; no SDP, password or secret goes in a span.
"""

from __future__ import annotations

from opentelemetry import trace

from services.runtime.trace_context import Context, from_text, to_text
from services.sipgw.sip import Request
from services.sipgw.sip.headers import Headers
from services.sipgw.trunk import TRACEPARENT

tracer = trace.get_tracer("pbxmesh.sipgw")


def from_trunk(request: Request) -> Context | None:
    """The trace context a trunk request carries (its proof was checked), if any."""
    return from_text(request.headers.get(TRACEPARENT) or "")


def to_headers(headers: Headers, ctx: Context | None) -> None:
    value = to_text(ctx)
    if value:
        headers.set(TRACEPARENT, value)


__all__ = ["Context", "from_text", "from_trunk", "to_headers", "to_text", "tracer"]
