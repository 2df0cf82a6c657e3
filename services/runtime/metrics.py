"""Metrics through OpenTelemetry, scraped by Prometheus from each service's own endpoint.

``telemetry.metrics.<service>`` (host:port) turns a service's endpoint on; empty leaves it off. What
a service measures it registers here as callbacks over its own state (observed at scrape time, so a
scrape costs the service nothing in between) and as counters and histograms updated where things
happen. Metric names are listed in README.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource

from services.runtime.config import check_host_port

Reading = Callable[[], Iterable[tuple[float, dict[str, str]]]]


class Metrics:
    """One process's meter; ``gauge``/``counter_of`` observe state, the rest record events."""

    def __init__(self, service: str, server_id: str, address: str):
        self.address = address
        self.meter = self._start(service, server_id, address) if address else metrics.NoOpMeter("pbxmesh")

    @staticmethod
    def _start(service: str, server_id: str, address: str) -> metrics.Meter:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import start_http_server

        host, port = check_host_port(address, f"telemetry.metrics.{service}")
        start_http_server(port, addr=host)
        resource = Resource.create({"service.name": f"pbxmesh-{service}", "pbxmesh.server.id": server_id})
        provider = MeterProvider(resource=resource, metric_readers=[PrometheusMetricReader()])
        return provider.get_meter("pbxmesh")

    def gauge(self, name: str, description: str, read: Reading) -> None:
        self.meter.create_observable_gauge(name, [_observe(read)], description=description)

    def counter_of(self, name: str, description: str, read: Reading) -> None:
        """A count kept elsewhere (only ever growing), observed at scrape time."""
        self.meter.create_observable_counter(name, [_observe(read)], description=description)


def _observe(read: Reading) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def callback(options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(value, attributes) for value, attributes in read()]

    return callback
