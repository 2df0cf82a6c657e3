"""One server's callstate: its gRPC API at ``listen.callstate``, the group's other callstates found
through the local registry (``listen.registry``)."""

from __future__ import annotations

import asyncio
import logging

from services.callstate.model import CallBook
from services.callstate.peers import Peers
from services.callstate.service import CallStateService
from services.runtime.config import Config, ConfigError
from services.runtime.grpc_server import GrpcHost

_log = logging.getLogger(__name__)

DRAIN_SECONDS = 2.0


class CallStateApp:
    def __init__(self, config: Config):
        if not config.listen.callstate:
            raise ConfigError("listen.callstate: required to run the callstate")
        self.config = config
        self.host = GrpcHost(config.listen.callstate)
        self.book = CallBook(config.server.id, config.server.name or config.server.id)
        self.peers = Peers(config.listen.registry)
        self.service = CallStateService(self.book, self.peers)
        self.peers.on_left, self.peers.on_answer = self.service.on_left, self.service.on_answer
        self.failed = asyncio.Event()

    async def start(self) -> None:
        self.host.add(self.service)
        self.peers.start()
        await self.host.start()
        _log.info("callstate of %s listening on %s", self.config.server.id, self.host.address)

    async def stop(self, graceful: bool) -> None:
        await self.host.stop(DRAIN_SECONDS if graceful else 0)
        await self.peers.stop()
