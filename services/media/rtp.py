"""RTP headers (RFC 3550) as the relay needs them: read the fields, write a leg's own header.

Each outbound leg sends one stream (``OutboundStream``): its own SSRC, sequence numbers that go on
by one, timestamps that never go back, whatever the source behind it (a partner, a new partner after
a transfer, the music on hold, the partner's phone restarting its stream). A phone that sees the
SSRC or the sequence jump may reset its jitter buffer or drop audio; one continuous stream with the
marker bit on the first packet after a change is what RFC 3550 section 5.1 asks of a mixer-like
source, and what phones handle best.
"""

from __future__ import annotations

import os
import struct
import time
from dataclasses import dataclass
from typing import Any

HEADER = struct.Struct("!BBHII")
FIELDS = struct.Struct("!HII")  # sequence, timestamp, SSRC: after the first two bytes
CLOCK_RATE = 8000
_SEQ = 1 << 16
_TS = 1 << 32


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


class OutboundStream:
    """One leg's outgoing RTP stream: maps each source's sequence numbers and timestamps onto its own.

    A source is whatever key the caller gives (the partner leg and its SSRC, the player): when it
    changes, the offsets are recomputed so that the sequence continues at the last one plus one and
    the timestamp moves on by the wall time elapsed since the last packet sent.
    """

    def __init__(self) -> None:
        self.ssrc = int.from_bytes(os.urandom(4), "big")
        self._source: object = None
        self._source_ssrc = -1
        self._seq_offset = 0
        self._ts_offset = 0
        self.last_sequence = int.from_bytes(os.urandom(2), "big")
        self.last_timestamp = int.from_bytes(os.urandom(4), "big")
        self._last_sent = 0.0
        self._started = False

    def header(
        self, source: object, source_ssrc: int, payload_type: int, marker: int, sequence: int, timestamp: int
    ) -> bytes:
        """The header for one packet of ``source`` (a partner leg, the player; ``source_ssrc`` is its
        stream's SSRC) with its own sequence and timestamp, sent now. Per packet: kept lean."""
        now = time.monotonic()
        if source is not self._source or source_ssrc != self._source_ssrc:
            if self._started:
                advance = max(round((now - self._last_sent) * CLOCK_RATE), 1)
            else:
                advance = 0
                self._started = True
            self._seq_offset = (self.last_sequence + 1 - sequence) % _SEQ
            self._ts_offset = (self.last_timestamp + advance - timestamp) % _TS
            self._source, self._source_ssrc = source, source_ssrc
            marker = 0x80
        out_sequence = (sequence + self._seq_offset) % _SEQ
        out_timestamp = (timestamp + self._ts_offset) % _TS
        self.last_sequence = out_sequence
        self.last_timestamp = out_timestamp
        self._last_sent = now
        return HEADER.pack(0x80, payload_type | (0x80 if marker else 0), out_sequence, out_timestamp, self.ssrc)

    def state(self) -> dict[str, Any]:
        """What another worker needs to go on with this stream (a leg moved there)."""
        return {
            "ssrc": self.ssrc,
            "sequence": self.last_sequence,
            "timestamp": self.last_timestamp,
            "sent": self._last_sent,
            "started": self._started,
        }

    @classmethod
    def resume(cls, state: dict[str, Any]) -> OutboundStream:
        """The stream a moved leg had; its next packet counts as a new source (the monotonic clock is
        the machine's, so the elapsed time holds across processes)."""
        stream = cls()
        stream.ssrc = int(state["ssrc"])
        stream.last_sequence = int(state["sequence"])
        stream.last_timestamp = int(state["timestamp"])
        stream._last_sent = float(state["sent"])
        stream._started = bool(state["started"])
        return stream


# RFC 4733 section 3.2: events 0-15 are the DTMF keys.
DTMF_KEYS = "0123456789*#ABCD"


@dataclass(frozen=True)
class TelephoneEvent:
    """One RFC 4733 event payload: which key, whether this is its end, its duration in clock ticks."""

    event: int
    end: bool
    duration: int

    @property
    def key(self) -> str | None:
        return DTMF_KEYS[self.event] if self.event < len(DTMF_KEYS) else None


def parse_event(payload: bytes) -> TelephoneEvent | None:
    if len(payload) < 4:
        return None
    return TelephoneEvent(payload[0], bool(payload[1] & 0x80), int.from_bytes(payload[2:4], "big"))
