"""A leg on a worker: its two sockets, where its party is, what it is connected to, its counters.

RTP is accepted only from the address and port the party's SDP named (symmetric RTP, RFC 4961):
anything else is dropped and counted, never relayed or recorded, so a stranger who guesses a port
cannot inject audio into a call. The leg always sends from its own sockets, to that same address.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

from services.media import g711
from services.media.player import Playback
from services.media.recorder import HOME_CHANNEL, OTHER_CHANNEL
from services.media.rtp import OutboundStream

Address = tuple[str, int]
# Directions (the party's SDP, RFC 3264) in which the party sends, and in which it receives.
PARTY_SENDS = {"sendrecv", "sendonly"}
PARTY_RECEIVES = {"sendrecv", "recvonly"}


def canonical(address: str) -> str:
    """An IP address as the socket layer reports a datagram's source."""
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return address


class Leg:
    """One party's side of a call on this worker."""

    def __init__(self, leg_id: str, address: str, port: int, owner: str):
        self.leg_id = leg_id
        self.address = address
        self.port = port
        self.owner = owner
        self.disowned_at: float | None = None
        self.rtp: asyncio.DatagramTransport | None = None
        self.rtcp: asyncio.DatagramTransport | None = None
        self.remote_rtp: Address | None = None
        self.remote_rtcp: Address | None = None
        self.codec_names: dict[int, str] = {}
        self.payload_types: dict[str, int] = {}
        self.clock_rates: dict[int, int] = {}
        self.law: str | None = None  # what the player encodes in: the first G.711 codec, PCMU if offered
        self.party_sends = True
        self.party_receives = True
        self.partner: Leg | None = None
        self.call_id = ""
        self.channel = HOME_CHANNEL
        self.stream = OutboundStream()
        self.playback: Playback | None = None
        self.last_rtp = time.monotonic()
        self.last_digit: tuple[int, int] | None = None  # (ssrc, timestamp) of the last event reported
        self.packets_in = 0
        self.packets_out = 0
        self.packets_dropped = 0

    def set_remote(
        self, address: str, rtp_port: int, rtcp_port: int, codecs: Sequence[Sequence[Any]], direction: str
    ) -> None:
        host = canonical(address)
        self.remote_rtp = (host, rtp_port)
        self.remote_rtcp = (host, rtcp_port)
        self.codec_names = {}
        self.payload_types = {}
        self.clock_rates = {}
        for payload_type, name, clock_rate in codecs:
            encoding = str(name).upper() if str(name).upper() in g711.LAWS else str(name).lower()
            self.codec_names[int(payload_type)] = encoding
            self.clock_rates[int(payload_type)] = int(clock_rate)
            self.payload_types.setdefault(encoding, int(payload_type))
        laws = [law for law in g711.LAWS if law in self.payload_types]
        self.law = laws[0] if laws else None
        self.party_sends = direction in PARTY_SENDS
        self.party_receives = direction in PARTY_RECEIVES

    def send(
        self,
        source: object,
        source_ssrc: int,
        encoding: str,
        marker: int,
        sequence: int,
        timestamp: int,
        payload: bytes,
    ) -> tuple[str, bytes] | None:
        """Sends one packet of ``source`` to the party, in its codec; returns the encoding and payload
        sent (None if nothing was: no remote yet, the party does not receive, or takes no such codec)."""
        if self.rtp is None or self.remote_rtp is None or not self.party_receives:
            return None
        payload_type = self.payload_types.get(encoding)
        if payload_type is None:
            if encoding not in g711.LAWS:
                return None  # a telephone-event the party did not offer
            other = g711.PCMA if encoding == g711.PCMU else g711.PCMU
            payload_type = self.payload_types.get(other)
            if payload_type is None:
                return None
            payload = payload.translate(g711.TRANSCODE[(encoding, other)])
            encoding = other
        header = self.stream.header(source, source_ssrc, payload_type, marker, sequence, timestamp)
        self.rtp.sendto(header + payload, self.remote_rtp)
        self.packets_out += 1
        return encoding, payload

    def connect(self, partner: Leg, call_id: str, home: bool) -> None:
        if self.partner is not None and self.partner is not partner:
            self.partner.disconnect()
        self.partner = partner
        self.call_id = call_id
        self.channel = HOME_CHANNEL if home else OTHER_CHANNEL

    def disconnect(self) -> None:
        """Unlinks the leg from its partner (both ways); it leaves its call too."""
        partner, self.partner = self.partner, None
        self.call_id = ""
        if partner is not None and partner.partner is self:
            partner.partner = None
            partner.call_id = ""

    def close(self) -> None:
        self.disconnect()
        self.playback = None
        for transport in (self.rtp, self.rtcp):
            if transport is not None:
                transport.close()
        self.rtp = self.rtcp = None

    def stats(self) -> dict[str, Any]:
        return {
            "leg_id": self.leg_id,
            "address": self.address,
            "rtp_port": self.port,
            "rtcp_port": self.port + 1,
            "owner": self.owner,
            "call_id": self.call_id,
            "connected_to": self.partner.leg_id if self.partner is not None else "",
            "remote": f"{self.remote_rtp[0]}:{self.remote_rtp[1]}" if self.remote_rtp else "",
            "packets_in": self.packets_in,
            "packets_out": self.packets_out,
            "packets_dropped": self.packets_dropped,
            "playing": self.playback is not None,
        }


class RtpProtocol(asyncio.DatagramProtocol):
    """Hands each datagram of a leg's RTP socket to the worker."""

    def __init__(self, leg: Leg, receive: Callable[[Leg, bytes, Address], None]):
        self.leg = leg
        # The worker's handler with the leg bound (a C-level partial: one Python frame less for
        # every packet), standing in for the method below.
        self.datagram_received = functools.partial(receive, leg)  # type: ignore[method-assign]

    def datagram_received(self, data: bytes, addr: Address) -> None:
        raise NotImplementedError  # replaced per instance in __init__

    def error_received(self, exc: Exception) -> None:
        pass  # an ICMP port unreachable from a party that went away: its next packets tell


def bind_pair(address: str, port: int) -> tuple[socket.socket, socket.socket]:
    """The RTP and RTCP sockets of a leg (``port`` and ``port + 1``); OSError if either is taken."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    bound: list[socket.socket] = []
    try:
        for each in (port, port + 1):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            bound.append(sock)
            sock.bind((address, each))
            sock.setblocking(False)
    except OSError:
        for sock in bound:
            sock.close()
        raise
    return bound[0], bound[1]
