"""W3C trace context as text, for the places gRPC metadata does not carry it: SIP headers between
gateways, and fields of the gateway's report stream to its callstate."""

from __future__ import annotations

from opentelemetry import context as otel_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

Context = otel_context.Context
TRACEPARENT = "traceparent"
_propagator = TraceContextTextMapPropagator()


def from_text(traceparent: str) -> Context | None:
    """The context a traceparent value names; None for an empty value."""
    return _propagator.extract({TRACEPARENT: traceparent}) if traceparent else None


def to_text(ctx: Context | None) -> str:
    """``ctx`` (default: none) as a traceparent value; empty when it holds no span."""
    if ctx is None:
        return ""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier, context=ctx)
    return carrier.get(TRACEPARENT, "")


def current() -> Context:
    return otel_context.get_current()
