"""Test phones: real UDP sockets on 127.0.0.1 that send and receive RTP, and a plane to drive."""

from __future__ import annotations

import asyncio
import math
import random
import socket
from collections.abc import Callable
from pathlib import Path

import numpy as np

from services.media import g711, rtp
from services.media.plane import Event, LegInfo, Plane

Address = tuple[str, int]
PCMU_ONLY = [(0, "PCMU", 8000), (101, "telephone-event", 8000)]


def port_range(pairs: int = 200) -> tuple[int, int]:
    """A range of ports (random, so that tests running side by side rarely meet), below the ephemeral
    ports the phones get."""
    first = random.randrange(20000, 32000 - 2 * pairs, 2)
    return first, first + 2 * pairs - 1


class Events:
    """What the plane reported, with a wait for the next of a kind."""

    def __init__(self) -> None:
        self.seen: list[Event] = []
        self._changed = asyncio.Event()

    def __call__(self, event: Event) -> None:
        self.seen.append(event)
        self._changed.set()

    def of(self, kind: type) -> list[Event]:
        return [event for event in self.seen if isinstance(event, kind)]

    async def wait(self, kind: type, where: Callable[[Event], bool] = lambda e: True, timeout: float = 5.0) -> Event:
        async with asyncio.timeout(timeout):
            while True:
                for event in self.seen:
                    if isinstance(event, kind) and where(event):
                        return event
                self._changed.clear()
                await self._changed.wait()


class Phone(asyncio.DatagramProtocol):
    """One party: an RTP socket (and the RTCP one next to it), the packets it received."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[rtp.Packet] = asyncio.Queue()
        self.rtcp_received: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None
        self.rtcp: asyncio.DatagramTransport | None = None
        self.leg: LegInfo | None = None
        self.ssrc = random.getrandbits(32)
        self.sequence = random.getrandbits(16)
        self.timestamp = random.getrandbits(32)

    @classmethod
    async def open(cls) -> Phone:
        loop = asyncio.get_running_loop()
        phone = cls()
        for _ in range(50):  # an even port with a free odd one above it
            rtp_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            rtp_sock.bind(("127.0.0.1", 0))
            port = rtp_sock.getsockname()[1]
            rtcp_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                rtcp_sock.bind(("127.0.0.1", port + 1))
            except OSError:
                rtp_sock.close()
                rtcp_sock.close()
                continue
            break
        phone.transport, _ = await loop.create_datagram_endpoint(lambda: phone, sock=rtp_sock)
        phone.rtcp, _ = await loop.create_datagram_endpoint(lambda: _Rtcp(phone), sock=rtcp_sock)
        return phone

    @property
    def port(self) -> int:
        assert self.transport is not None
        port: int = self.transport.get_extra_info("sockname")[1]
        return port

    def datagram_received(self, data: bytes, addr: Address) -> None:
        packet = rtp.parse(data)
        if packet is not None:
            self.received.put_nowait(packet)

    def attach(
        self, plane: Plane, leg: LegInfo, codecs: list[tuple[int, str, int]], direction: str = "sendrecv"
    ) -> None:
        self.leg = leg
        plane.set_remote(leg.leg_id, "127.0.0.1", self.port, self.port + 1, codecs, direction)

    def send(self, payload: bytes, payload_type: int = 0, marker: bool = False, advance: int = 160) -> None:
        """One packet to its leg; the next one's sequence and timestamp follow."""
        assert self.transport is not None and self.leg is not None
        packet = rtp.build(payload_type, marker, self.sequence, self.timestamp, self.ssrc, payload)
        self.transport.sendto(packet, ("127.0.0.1", self.leg.rtp_port))
        self.sequence = (self.sequence + 1) & 0xFFFF
        self.timestamp = (self.timestamp + advance) & 0xFFFFFFFF

    def send_event(self, key: int, end: bool, duration: int, timestamp: int, payload_type: int = 101) -> None:
        assert self.transport is not None and self.leg is not None
        payload = bytes([key, 0x80 | 10 if end else 10]) + duration.to_bytes(2, "big")
        packet = rtp.build(payload_type, False, self.sequence, timestamp, self.ssrc, payload)
        self.transport.sendto(packet, ("127.0.0.1", self.leg.rtp_port))
        self.sequence = (self.sequence + 1) & 0xFFFF

    async def stream(self, samples: np.ndarray, law: str = g711.PCMU, payload_type: int = 0) -> None:
        """Sends the samples in 20 ms packets, paced in real time."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        for index in range(len(samples) // 160):
            self.send(g711.encode(law, samples[index * 160 : (index + 1) * 160]), payload_type)
            await asyncio.sleep(max(start + (index + 1) * 0.02 - loop.time(), 0))

    async def next(self, timeout: float = 2.0) -> rtp.Packet:
        return await asyncio.wait_for(self.received.get(), timeout)

    async def gather(self, seconds: float) -> list[rtp.Packet]:
        """Whatever arrives within ``seconds``."""
        await asyncio.sleep(seconds)
        return self.flush()

    def flush(self) -> list[rtp.Packet]:
        packets = []
        while not self.received.empty():
            packets.append(self.received.get_nowait())
        return packets

    def close(self) -> None:
        for transport in (self.transport, self.rtcp):
            if transport is not None:
                transport.close()


class _Rtcp(asyncio.DatagramProtocol):
    def __init__(self, phone: Phone):
        self.phone = phone

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.phone.rtcp_received.put_nowait(data)


def sine(frequency: float, seconds: float, level: float = 8000.0) -> np.ndarray:
    t = np.arange(int(seconds * 8000)) / 8000
    return np.round(level * np.sin(2 * math.pi * frequency * t)).astype(np.int16)


def dominant_frequency(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / 8000)[int(np.argmax(spectrum))])


async def started(events: Events, workers: int = 1, idle_seconds: float = 60.0, music: Path | None = None) -> Plane:
    from services.media.plane import MUSIC_ON_HOLD

    return await Plane.start(
        address="127.0.0.1",
        ports=port_range(),
        workers=workers,
        music_on_hold=music or MUSIC_ON_HOLD,
        on_event=events,
        idle_seconds=idle_seconds,
    )
