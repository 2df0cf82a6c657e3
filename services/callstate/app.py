"""One server's callstate: its gRPC API at ``listen.callstate``, the group's other callstates found
through the local registry (``listen.registry``)."""

from __future__ import annotations

import asyncio
import logging

from services.callstate.model import CallBook
from services.callstate.peers import Peers
from services.callstate.service import CallStateService
from services.runtime.config import Config, ConfigError
from services.runtime.grpc_server import count_refusals, service_host
from services.runtime.metrics import Metrics

_log = logging.getLogger(__name__)

DRAIN_SECONDS = 2.0


class CallStateApp:
    def __init__(self, config: Config):
        if not config.listen.callstate:
            raise ConfigError("listen.callstate: required to run the callstate")
        self.config = config
        self.peers = Peers(config.listen.registry)
        self.host = service_host(config, config.listen.callstate, self.peers.is_member, config.probes.callstate)
        self.book = CallBook(config.server.id, config.server.name or config.server.id)
        self.service = CallStateService(self.book, self.peers)
        self.peers.on_left, self.peers.on_answer = self.service.on_left, self.service.on_answer
        self.failed = asyncio.Event()
        self.metrics = Metrics("callstate", config.server.id, config.telemetry.metrics.callstate)
        count_refusals(self.host, self.metrics)
        book = self.book

        def calls() -> list[tuple[float, dict[str, str]]]:
            active = book.active()
            cross = sum(1 for call in active if call.cross_server)
            return [(cross, {"cross_server": "true"}), (len(active) - cross, {"cross_server": "false"})]

        self.metrics.gauge("pbxmesh.callstate.calls", "calls this callstate follows", calls)

    async def start(self) -> None:
        self.host.add(self.service)
        self.peers.start()
        await self.host.start()
        _log.info("callstate of %s listening on %s", self.config.server.id, self.host.address)

    async def stop(self, graceful: bool) -> None:
        await self.host.stop(DRAIN_SECONDS if graceful else 0)
        await self.peers.stop()
