"""Helpers for tests beyond the harness (tests.harness): a stream's next message, a cuttable
path to etcd. The harness's registry helpers are re-exported here for the tests that use them."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc.aio

from tests.harness.process import REPO, child_env
from tests.harness.servers import Group, Server, has_numbers, lacks_number, member_ids_are, owner_is
from tests.harness.wait import wait_for

__all__ = [
    "REPO",
    "Group",
    "Server",
    "TcpProxy",
    "child_env",
    "has_numbers",
    "lacks_number",
    "member_ids_are",
    "next_message",
    "owner_is",
    "wait_for",
]


async def next_message(stream: Any, timeout: float = 5.0) -> Any:
    """The next message of a server stream; fails the test if the stream ends or stays silent."""
    message = await asyncio.wait_for(stream.read(), timeout)
    assert message is not grpc.aio.EOF, "the stream ended"
    return message


class TcpProxy:
    """A loopback TCP relay in front of etcd whose path can be cut (a partition) and restored."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._open = asyncio.Event()
        self._open.set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cut(self) -> None:
        """Stops relaying bytes, without closing anything: to both sides etcd just goes silent."""
        self._open.clear()

    def restore(self) -> None:
        """Drops every relayed connection (as a partition's end often does) and relays again."""
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()
        self._open.set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._open.is_set():
            await self._open.wait()
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True)
        for w in (writer, up_writer):
            w.close()
            self._writers.discard(w)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            await self._open.wait()
            if writer.is_closing():
                break
            writer.write(data)
            await writer.drain()
        writer.close()

    async def close(self) -> None:
        self.restore()
        if self._server is not None:
            self._server.close()
