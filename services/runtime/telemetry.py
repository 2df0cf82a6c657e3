"""Tracing and logging, wired in one place.

grpc.aio client and server instrumentation is always on, so trace context flows between services
even when nothing is exported; exporting over OTLP/gRPC is off unless ``telemetry.otlp_endpoint``
or the standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` names a collector. Health checks and the etcd
client's own calls (lease keepalives, watches) and pbxmesh's own watch streams stay out of traces.

Span attributes set by pbxmesh code (never a password, secret or SDP body):

    pbxmesh.server.id        id of the server that made the span
    pbxmesh.group            group name (etcd key prefix)
    pbxmesh.number           a dialed or published number
    pbxmesh.route.server_id  owner of a resolved number
    pbxmesh.call.id          a call's correlation id (the same on every server of the call)
    pbxmesh.call.caller      the calling number
    pbxmesh.call.callee      the called number
    pbxmesh.call.end_reason  why a call ended
    pbxmesh.transfer.target  the number a call is transferred to
    sip.method               the SIP request a span sends (UPDATE, INVITE)

One trace per call: see services/sipgw/tracing.py.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.instrumentation.grpc import (
    GrpcAioInstrumentorClient,
    GrpcAioInstrumentorServer,
    filters,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased

ATTR_SERVER_ID = "pbxmesh.server.id"
ATTR_GROUP = "pbxmesh.group"
ATTR_NUMBER = "pbxmesh.number"
ATTR_ROUTE_SERVER_ID = "pbxmesh.route.server_id"
ATTR_CALL_ID = "pbxmesh.call.id"
ATTR_CALLER = "pbxmesh.call.caller"
ATTR_CALLEE = "pbxmesh.call.callee"
ATTR_END_REASON = "pbxmesh.call.end_reason"
ATTR_TRANSFER_TARGET = "pbxmesh.transfer.target"

_instrumented = False


class Telemetry:
    """Owns the tracer provider of one process; ``shutdown`` flushes what is pending."""

    def __init__(self, provider: TracerProvider | None, installed: TracerProvider | None = None):
        self.provider = provider  # the exporting one, if any
        self.installed = installed

    @property
    def exporting(self) -> bool:
        return self.provider is not None

    def shutdown(self) -> None:
        if self.installed is not None:
            self.installed.shutdown()


def setup_telemetry(
    service_name: str, server_id: str, otlp_endpoint: str = "", environ: Mapping[str, str] | None = None
) -> Telemetry:
    """Installs gRPC instrumentation, a tracer provider and, if an endpoint is known, an OTLP span
    exporter."""
    global _instrumented
    env = os.environ if environ is None else environ
    if not _instrumented:
        # Long-lived watch streams are not traced: a span that lasts for days tells nothing, and the
        # instrumentation logs context errors when such a stream is canceled.
        quiet = filters.negate(
            filters.any_of(
                filters.health_check(),
                filters.service_prefix("etcdserverpb"),
                filters.method_prefix("Watch"),
                filters.method_name("ReportCalls"),
            )
        )
        GrpcAioInstrumentorServer(filter_=quiet).instrument()  # type: ignore[no-untyped-call]
        GrpcAioInstrumentorClient(filter_=quiet).instrument()  # type: ignore[no-untyped-call]
        _instrumented = True
    endpoint = otlp_endpoint or env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
    resource = Resource.create(
        {"service.name": f"pbxmesh-{service_name}", "service.namespace": "pbxmesh", ATTR_SERVER_ID: server_id}
    )
    # A real provider even when nothing is exported: spans then have ids, which the logs carry and
    # the trace context passes on. A server that exports records every trace; one that does not
    # starts none (its spans cost next to nothing then) and records only those an exporting server
    # sent it: tracing is meant to be on for the whole group.
    sampler = ParentBased(ALWAYS_ON) if endpoint else ParentBased(ALWAYS_OFF)
    provider = TracerProvider(resource=resource, sampler=sampler)
    if endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True)))
    trace.set_tracer_provider(provider)
    return Telemetry(provider if endpoint else None, provider)
