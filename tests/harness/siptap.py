"""A UDP relay between a SIP tool and a gateway that counts what passes: each request the tool
sends, and which of them got any answer. The tool sends to the tap, the tap to the gateway from
one socket of its own (so the gateway answers the tap, as it answers the packet's source), and the
answers go back to the tool. Everything stays on 127.0.0.1.

Sipvicious reports what it learnt, not what it was told: the tap counts that independently of the
tool's output and of the gateway's own metrics.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections import Counter

Address = tuple[str, int]
_BRANCH = re.compile(rb"\r\n(?:Via|v): [^\r]*?;branch=([^;,\s]+)", re.IGNORECASE)
_CREDENTIALS = re.compile(rb"\r\n(?:Proxy-)?Authorization:", re.IGNORECASE)
_HEADER_NAME = re.compile(rb"\r\n([A-Za-z-]+):")


@dataclasses.dataclass
class Request:
    method: str
    with_credentials: bool  # a password guess
    answers: list[int] = dataclasses.field(default_factory=list)  # statuses, retransmissions included


class SipTap:
    def __init__(self, target: Address):
        self.target = target
        self.requests: dict[bytes, Request] = {}  # by Via branch, the first sighting
        self.responses: list[bytes] = []  # every answer, as the gateway sent it
        self.address: Address = ("127.0.0.1", 0)
        self._tool: Address | None = None
        self._front: asyncio.DatagramTransport | None = None
        self._back: asyncio.DatagramTransport | None = None
        self.last_seen = time.monotonic()  # the last datagram either way

    async def quiet(self, seconds: float = 0.2, timeout: float = 5.0) -> None:
        """Until nothing has passed for ``seconds`` (the gateway's last answers are through)."""
        deadline = time.monotonic() + timeout
        while True:
            left = min(seconds - (time.monotonic() - self.last_seen), deadline - time.monotonic())
            if left <= 0:
                return
            await asyncio.sleep(left)  # then look again: something may have passed meanwhile

    async def start(self) -> SipTap:
        loop = asyncio.get_running_loop()
        tap = self

        class Front(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
                tap._tool = (str(addr[0]), int(str(addr[1])))
                tap._from_tool(data)

        class Back(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
                tap._from_gateway(data)

        front, _ = await loop.create_datagram_endpoint(Front, local_addr=("127.0.0.1", 0))
        back, _ = await loop.create_datagram_endpoint(Back, local_addr=("127.0.0.1", 0))
        self._front, self._back = front, back
        self.address = self._front.get_extra_info("sockname")[:2]
        return self

    def close(self) -> None:
        for transport in (self._front, self._back):
            if transport is not None:
                transport.close()

    def _from_tool(self, data: bytes) -> None:
        self.last_seen = time.monotonic()
        if not data.startswith(b"SIP/2.0 "):
            branch = _BRANCH.search(data)
            key = branch.group(1) if branch else data[:64]
            method = data.split(b" ", 1)[0].decode("ascii", "replace")
            self.requests.setdefault(key, Request(method, bool(_CREDENTIALS.search(data))))
        assert self._back is not None
        self._back.sendto(data, self.target)

    def _from_gateway(self, data: bytes) -> None:
        self.last_seen = time.monotonic()
        if data.startswith(b"SIP/2.0 "):
            self.responses.append(data)
            branch = _BRANCH.search(data)
            request = self.requests.get(branch.group(1)) if branch else None
            if request is not None:
                request.answers.append(int(data[8:11]))
        if self._tool is not None and self._front is not None:
            self._front.sendto(data, self._tool)

    # What the tests read.

    def sent(self, method: str | None = None, guesses: bool | None = None) -> int:
        return len(self._select(method, guesses))

    def answered(self, method: str | None = None, guesses: bool | None = None) -> int:
        """Requests that got any answer at all (a retransmitted answer counts once)."""
        return sum(1 for r in self._select(method, guesses) if r.answers)

    def statuses(self, method: str | None = None, guesses: bool | None = None) -> Counter[int]:
        """The final status each answered request got."""
        return Counter(r.answers[-1] for r in self._select(method, guesses) if r.answers)

    def header_names(self) -> set[str]:
        """Every header name in any answer, lower case."""
        return {name.decode().lower() for response in self.responses for name in _HEADER_NAME.findall(response)}

    def _select(self, method: str | None, guesses: bool | None) -> list[Request]:
        return [
            r
            for r in self.requests.values()
            if (method is None or r.method == method) and (guesses is None or r.with_credentials == guesses)
        ]
