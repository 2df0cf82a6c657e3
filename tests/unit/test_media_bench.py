"""The media bench's load generator counts what a relay loses: compiled here, run 1 s against a UDP
echo in this test that drops and duplicates chosen packets."""

from __future__ import annotations

import asyncio
import shutil
import socket
import struct
from pathlib import Path
from typing import cast

import pytest

from bench._rtpload import compile_rtpload, run_load, stream_ports

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is needed to build the generator")

HEADER = 12
MAGIC = 0x52544C44


class LossyEcho(asyncio.DatagramProtocol):
    """Returns every packet to its sender, except sequence numbers ending in 3 (dropped); the
    packet of sequence 7 comes back twice."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.seen = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        assert self.transport is not None
        self.seen += 1
        magic, _stream, sequence = struct.unpack_from("!III", data, HEADER)
        assert magic == MAGIC
        if sequence % 10 == 3:
            return
        self.transport.sendto(data, addr)
        if sequence == 7:
            self.transport.sendto(data, addr)


def free_even_base(count: int) -> int:
    """A base port whose next ``2 * count`` ports are free now (good enough for a test)."""
    for base in range(47000, 60000, 200):
        probes = []
        try:
            for port in stream_ports(base, count):
                probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                probes.append(probe)
                probe.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for probe in probes:
                probe.close()
    raise RuntimeError("no free ports")


async def test_generator_counts_sent_received_lost_and_duplicates(tmp_path: Path) -> None:
    binary = compile_rtpload(tmp_path)
    loop = asyncio.get_running_loop()
    transport, echo = await loop.create_datagram_endpoint(LossyEcho, local_addr=("127.0.0.1", 0))
    try:
        echo_port = transport.get_extra_info("sockname")[1]
        result = await run_load(
            binary,
            base_port=free_even_base(2),
            destinations=[("127.0.0.1", echo_port)] * 2,
            seconds=1.0,
            drain_ms=200,
        )
    finally:
        transport.close()
    # 50 packets a second for 1 s from each of the 2 streams; sequences 3, 13, ..., 43 dropped.
    assert result.sent == 100
    assert echo.seen == 100
    assert result.lost == 10
    assert result.received == 90
    assert result.loss_percent == pytest.approx(10.0)
    assert result.streams_with_loss == 2
    assert result.duplicates == 2
    assert result.foreign == 0
    assert result.send_errors == 0
    assert 0 < result.p50_us <= result.p99_us <= result.max_us + 10
