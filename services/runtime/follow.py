"""Following a server stream for as long as the process runs: the registry's watches, read by the
gateway (numbering plan) and the callstate (members).

Any break (the server restarting, a network cut, a watcher dropped as too slow) reconnects after a
delay that doubles from RETRY_MIN to RETRY_MAX and starts again from a fresh snapshot; the break is
logged once per outage, not at every retry.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, Callable
from typing import TypeVar

import grpc
import grpc.aio

from services.runtime.backoff import Backoff
from services.runtime.tls import open_channel

_log = logging.getLogger(__name__)

RETRY_MIN = 0.2
RETRY_MAX = 5.0
T = TypeVar("T")


async def follow(
    name: str,
    address: str,
    open_stream: Callable[[grpc.aio.Channel], AsyncIterable[T]],
    on_message: Callable[[T], None],
    on_connect: Callable[[], None] = lambda: None,
    on_break: Callable[[], None] = lambda: None,
) -> None:
    backoff, said = Backoff(RETRY_MIN, RETRY_MAX), False
    while True:
        try:
            async with open_channel(address) as channel:
                on_connect()
                async for message in open_stream(channel):
                    backoff.reset()
                    said = False
                    on_message(message)
        except grpc.aio.AioRpcError as exc:
            if not said:
                _log.info("%s interrupted (%s); retrying", name, exc.code().name)
                said = True
        on_break()
        await backoff.sleep()
