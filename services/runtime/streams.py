"""How many response streams (the watches) one client and the whole process may hold open.

A stream costs a queue, a listener on every change and a task for as long as it is open, so a
client that opens thousands of them could starve everyone else. Every response-streaming RPC of a
``GrpcHost`` goes through one ``StreamLimiter`` (``ErrorInterceptor`` admits it): beyond
``per_client`` streams from one client, or ``total`` streams in the process, a new stream gets
RESOURCE_EXHAUSTED with reason TOO_MANY_STREAMS. A client is a peer host as gRPC reports it
(``ipv4:10.0.0.7:53122`` -> ``10.0.0.7``): its connections and ports count together. A stream
gives its place back when it ends for any reason: finished, failed, canceled, or the client gone.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable

from services.runtime.errors import ResourceExhausted


class TooManyStreams(ResourceExhausted):
    reason = "TOO_MANY_STREAMS"


def client_of(peer: str) -> str:
    """The client a gRPC peer string names: its host, without the port (``unix`` for a socket)."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        host = urllib.parse.unquote(rest).rpartition(":")[0]
        return host.strip("[]") or rest
    return kind or "unknown"


class StreamLimiter:
    """Counts open streams per client and in all; ``open`` admits one or raises TooManyStreams."""

    def __init__(self, per_client: int, total: int):
        self.per_client = per_client
        self.total = total
        self._open: dict[str, int] = {}
        self._count = 0

    @property
    def count(self) -> int:
        return self._count

    def count_of(self, client: str) -> int:
        return self._open.get(client, 0)

    def open(self, peer: str) -> Callable[[], None]:
        """Admits a stream from ``peer``; returns its release, which may be called more than once."""
        client = client_of(peer)
        held = self._open.get(client, 0)
        if held >= self.per_client:
            raise TooManyStreams(
                f"this client holds {held} streams, the most one client may hold",
                metadata={"limit": "per_client", "max": str(self.per_client)},
            )
        if self._count >= self.total:
            raise TooManyStreams(
                "the server holds as many streams as it takes; try again later",
                metadata={"limit": "total", "max": str(self.total)},
            )
        self._open[client] = held + 1
        self._count += 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            self._count -= 1
            left = self._open[client] - 1
            if left:
                self._open[client] = left
            else:
                del self._open[client]  # no entry kept for a client that went away

        return release


__all__ = ["StreamLimiter", "TooManyStreams", "client_of"]
