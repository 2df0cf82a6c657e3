"""RTP packets (RFC 3550) read and written in Python: for the tools and tests that play a phone.

The relay itself reads and writes them in C (``_relay.c``), where each outbound leg sends one
stream: its own SSRC, sequence numbers that go on by one, timestamps that never go back, whatever
the source behind it (a partner, a new partner after a transfer, the music on hold, the partner's
phone restarting its stream), the marker bit on the first packet after a change (RFC 3550 section
5.1): a phone that sees the SSRC or the sequence jump may reset its jitter buffer or drop audio.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

HEADER = struct.Struct("!BBHII")


@dataclass(frozen=True)
class Packet:
    """The fields of an RTP packet the relay reads; ``payload`` without CSRCs, extension or padding."""

    payload_type: int
    marker: bool
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes


def parse(data: bytes) -> Packet | None:
    """The packet's fields, or None if it is not RTP version 2 or is cut short."""
    if len(data) < 12:
        return None
    first, second, sequence, timestamp, ssrc = HEADER.unpack_from(data)
    if first >> 6 != 2:
        return None
    start = 12 + 4 * (first & 0x0F)
    if first & 0x10:  # a header extension: its length in 32-bit words follows its profile id
        if len(data) < start + 4:
            return None
        start += 4 + 4 * int.from_bytes(data[start + 2 : start + 4], "big")
    end = len(data)
    if first & 0x20 and end > start:
        end -= data[-1]
    if end < start:
        return None
    return Packet(second & 0x7F, bool(second & 0x80), sequence, timestamp, ssrc, data[start:end])


def build(payload_type: int, marker: bool, sequence: int, timestamp: int, ssrc: int, payload: bytes) -> bytes:
    """A packet with a plain 12-byte header."""
    second = payload_type | (0x80 if marker else 0)
    return HEADER.pack(0x80, second, sequence, timestamp, ssrc) + payload
