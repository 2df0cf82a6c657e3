"""The process around one service: telemetry, start, wait for a signal, stop, exit code."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from services.runtime.config import Config
from services.runtime.grpc_server import run_until_signal
from services.runtime.telemetry import setup_telemetry

_log = logging.getLogger(__name__)

EXIT_REFUSED = 3


class App(Protocol):
    failed: asyncio.Event

    def start(self) -> Awaitable[None]: ...

    def stop(self, graceful: bool) -> Awaitable[None]: ...


async def serve(
    service: str, config: Config, build: Callable[[], App], refusals: tuple[type[BaseException], ...] = ()
) -> int:
    """Builds and runs an app until SIGTERM (drain) or SIGINT (no drain); an error in ``refusals``
    or a port that cannot be taken ends the start with EXIT_REFUSED and a log line that says why."""
    # Telemetry first: the gRPC instrumentation only sees servers and channels created after it.
    telemetry = setup_telemetry(service, config.server.id, config.telemetry.otlp_endpoint)
    refused: tuple[type[BaseException], ...] = (*refusals, OSError)
    try:
        app = build()

        async def start() -> None:
            try:
                await app.start()
            except BaseException:
                await app.stop(False)
                raise

        return await run_until_signal(start, app.stop, app.failed)
    except refused as exc:
        _log.error("refusing to start: %s", exc)
        return EXIT_REFUSED
    finally:
        telemetry.shutdown()
