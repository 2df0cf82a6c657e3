"""The gateway's link to its server's media service: one Attach stream, kept open for the life of
the process.

The call core is synchronous (a SIP message in, messages out), so nothing in it waits for the media
service: commands are queued on the stream (the service applies them in order), and the legs a
new call needs are taken from a stock of pairs opened ahead of time, refilled in the background.
No stock (the service is away, or a burst emptied it) means the call goes without anchoring.

When the stream breaks (the service died or restarted) the legs it gave are gone: ``on_lost`` is
told at once, so that the calls anchored on it go back to direct media.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
from collections.abc import AsyncIterator, Callable

import grpc
import grpc.aio

from pbxmesh.media.v1 import media_pb2 as pb
from pbxmesh.media.v1 import media_pb2_grpc as pb_grpc
from services.runtime.backoff import Backoff
from services.runtime.tls import open_channel

_log = logging.getLogger(__name__)

STOCK = 16  # pairs of legs kept ready: the calls that can start at once without waiting
RETRY_MIN, RETRY_MAX = 0.2, 2.0


@dataclasses.dataclass(frozen=True)
class MediaLeg:
    leg_id: str
    address: str
    rtp_port: int
    rtcp_port: int


class MediaLink:
    def __init__(self, address: str, stock: int = STOCK):
        self.address = address
        self.stock_size = stock
        self.instance = ""  # the media service process attached to ("" while none)
        self.on_lost: Callable[[], None] = lambda: None
        self.stock: list[tuple[MediaLeg, MediaLeg]] = []
        self._queue: asyncio.Queue[pb.AttachRequest | None] | None = None
        self._asked = 0  # pairs asked for and not yet given
        self._ids = itertools.count(1)
        self._task: asyncio.Task[None] | None = None

    @property
    def attached(self) -> bool:
        return bool(self.instance)

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def take_pair(self) -> tuple[MediaLeg, MediaLeg] | None:
        """Two legs on one worker for a new call, or None (then the call's media goes direct)."""
        if not self.stock:
            self._refill()
            return None
        pair = self.stock.pop()
        self._refill()
        return pair

    def send(self, request: pb.AttachRequest) -> None:
        """Queues a command; dropped when no media service is attached (its legs are gone anyway)."""
        if self._queue is not None:
            self._queue.put_nowait(request)

    def _refill(self) -> None:
        """Asks for the pairs missing from the stock in one request, once half of it is gone
        (one message for many calls: each message on the stream costs both processes)."""
        missing = self.stock_size - len(self.stock) - self._asked
        if self._queue is None or missing < max(1, self.stock_size // 2):
            return
        self._asked += missing
        self._queue.put_nowait(pb.AttachRequest(open_legs=pb.OpenLegs(request_id=next(self._ids), count=2 * missing)))

    async def _run(self) -> None:
        backoff, said = Backoff(RETRY_MIN, RETRY_MAX), False
        while True:
            try:
                async with open_channel(self.address) as channel:
                    await self._attach(pb_grpc.MediaServiceStub(channel), backoff)
            except grpc.aio.AioRpcError as exc:
                if not said:
                    why = exc.code().name
                    _log.warning("media service at %s unavailable (%s): calls get direct media", self.address, why)
                    said = True
            finally:
                lost = self.attached
                self.instance, self.stock, self._asked, self._queue = "", [], 0, None
                if lost:
                    _log.warning("the media service went away: its calls go back to direct media")
                    self.on_lost()
            await backoff.sleep()

    async def _attach(self, stub: pb_grpc.MediaServiceAsyncStub, backoff: Backoff) -> None:
        queue: asyncio.Queue[pb.AttachRequest | None] = asyncio.Queue()

        async def requests() -> AsyncIterator[pb.AttachRequest]:
            while (request := await queue.get()) is not None:
                yield request

        stream = stub.Attach(requests())
        async for response in stream:
            which = response.WhichOneof("event")
            if which == "attached":
                self.instance, self._queue = response.attached.instance, queue
                backoff.reset()
                _log.info("attached to the media service at %s", self.address)
                self._refill()
            elif which == "legs_opened":
                opened = response.legs_opened
                legs = [MediaLeg(x.leg_id, x.address, x.rtp_port, x.rtcp_port) for x in opened.legs]
                self._asked = max(0, self._asked - max(1, len(legs) // 2))
                self.stock += list(zip(legs[0::2], legs[1::2], strict=True))
                if opened.error:
                    self._asked = 0  # asked again when the next call takes a pair
                    _log.warning("the media service opened no legs: %s", opened.error)
            # Digits and finished prompts are for the voice menus to come.
