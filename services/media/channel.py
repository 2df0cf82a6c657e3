"""The control channel between the plane and one worker: length-prefixed JSON over an AF_UNIX
stream socket (one end of a socketpair), with file descriptors riding along (a leg's sockets moving
between workers).

Both ends read and write from their asyncio loop without blocking it: writes that the socket does
not take at once wait in order (so commands keep the order they were sent in). A descriptor arrives
with the first byte of the write it was sent with, so by the time the message that names it is
whole, it is already in ``fds`` (in the order sent).
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import socket
import struct
from collections.abc import Callable, Sequence
from typing import Any

Message = dict[str, Any]
_LENGTH = struct.Struct("!I")
_MAX_FDS = 16


class Channel:
    """One end of the control socket; ``on_message`` gets each message, ``on_close`` the end of it."""

    def __init__(
        self,
        sock: socket.socket,
        on_message: Callable[[Message], None],
        on_close: Callable[[], None],
    ):
        sock.setblocking(False)
        self.sock = sock
        self.on_message = on_message
        self.on_close = on_close
        self.fds: collections.deque[int] = collections.deque()
        self.closed = False
        self._loop = asyncio.get_running_loop()
        self._inbox = bytearray()
        self._outbox: collections.deque[tuple[memoryview, list[int]]] = collections.deque()
        self._writing = False
        self._loop.add_reader(sock.fileno(), self._readable)

    def send(self, message: Message, fds: Sequence[int] = ()) -> None:
        """Queues one message, with copies of ``fds`` (the caller may close its own at once)."""
        if self.closed:
            return
        body = json.dumps(message, separators=(",", ":")).encode()
        self._outbox.append((memoryview(_LENGTH.pack(len(body)) + body), [os.dup(fd) for fd in fds]))
        if not self._writing:
            self._write()

    async def drain(self) -> None:
        """Waits until everything queued has been written (or the channel closed)."""
        while self._outbox and not self.closed:  # noqa: ASYNC110 (rare: only when a worker stops)
            await asyncio.sleep(0.005)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._loop.remove_reader(self.sock.fileno())
        if self._writing:
            self._loop.remove_writer(self.sock.fileno())
        for _data, fds in self._outbox:
            for fd in fds:
                os.close(fd)
        self._outbox.clear()
        while self.fds:
            os.close(self.fds.popleft())
        self.sock.close()
        self.on_close()

    def _write(self) -> None:
        while self._outbox:
            data, fds = self._outbox[0]
            try:
                sent = socket.send_fds(self.sock, [data], fds) if fds else self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.close()
                return
            for fd in fds:
                os.close(fd)
            if sent < len(data):
                self._outbox[0] = (data[sent:], [])  # the descriptors went with the first part
                break
            self._outbox.popleft()
        want_writer = bool(self._outbox)
        if want_writer != self._writing:
            if want_writer:
                self._loop.add_writer(self.sock.fileno(), self._write)
            else:
                self._loop.remove_writer(self.sock.fileno())
            self._writing = want_writer

    def _readable(self) -> None:
        try:
            data, fds, _flags, _address = socket.recv_fds(self.sock, 65536, _MAX_FDS)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, fds = b"", []
        self.fds.extend(fds)
        if not data:
            self.close()
            return
        self._inbox += data
        while len(self._inbox) >= 4:
            (length,) = _LENGTH.unpack_from(self._inbox)
            if len(self._inbox) < 4 + length:
                break
            message = json.loads(self._inbox[4 : 4 + length])
            del self._inbox[: 4 + length]
            self.on_message(message)
            if self.closed:
                return
