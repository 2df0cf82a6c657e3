"""A leg on a worker: its two sockets, where its party is, what it is connected to, its counters.

RTP is accepted only from the address and port the party's SDP named (symmetric RTP, RFC 4961):
anything else is dropped and counted, never relayed or recorded, so a stranger who guesses a port
cannot inject audio into a call. The leg always sends from its own sockets, to that same address.

The packets themselves go through ``_relay`` (C): this class keeps what is not per packet (ids,
owner, the party's codecs by name, the player) and tells the C leg what it needs.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from typing import Any

from services.media import _relay, g711
from services.media.player import Playback
from services.media.recorder import HOME_CHANNEL, OTHER_CHANNEL

Address = tuple[str, int]
# Directions (the party's SDP, RFC 3264) in which the party sends, and in which it receives.
PARTY_SENDS = {"sendrecv", "sendonly"}
PARTY_RECEIVES = {"sendrecv", "recvonly"}

# Encodings by id, as the C relay knows them: the laws and telephone-event fixed, others (relayed
# by name between parties that both offered them) numbered as they come.
_ENCODING_IDS: dict[str, int] = {
    g711.PCMU: _relay.PCMU,
    g711.PCMA: _relay.PCMA,
    g711.TELEPHONE_EVENT: _relay.TELEPHONE_EVENT,
}
ENCODING_NAMES: dict[int, str] = {number: name for name, number in _ENCODING_IDS.items()}
_relay.set_transcoding(g711.TRANSCODE[(g711.PCMU, g711.PCMA)], g711.TRANSCODE[(g711.PCMA, g711.PCMU)])


def encoding_id(name: str) -> int | None:
    """The relay's id for an encoding name (None once the relay's table is full)."""
    number = _ENCODING_IDS.get(name)
    if number is None and len(_ENCODING_IDS) < _relay.ENCODINGS:
        number = _ENCODING_IDS[name] = len(_ENCODING_IDS)
        ENCODING_NAMES[number] = name
    return number


def canonical(address: str) -> str:
    """An IP address as the socket layer reports a datagram's source."""
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return address


class Leg:
    """One party's side of a call on this worker."""

    def __init__(self, leg_id: str, address: str, port: int, owner: str, rtp: socket.socket, rtcp: socket.socket):
        self.leg_id = leg_id
        self.address = address
        self.port = port
        self.owner = owner
        self.rtp: socket.socket | None = rtp
        self.rtcp: socket.socket | None = rtcp
        self.fast = _relay.Leg(leg_id, rtp.fileno(), rtcp.fileno(), int(rtp.family))
        self.disowned_at: float | None = None
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
        self._playback: Playback | None = None
        self.srtp_keys: tuple[bytes, bytes] | None = None  # kept for a move to another worker

    @property
    def playback(self) -> Playback | None:
        return self._playback

    @playback.setter
    def playback(self, playback: Playback | None) -> None:
        self._playback = playback
        self.fast.playing = playback is not None

    def set_remote(
        self, address: str, rtp_port: int, rtcp_port: int, codecs: Sequence[Sequence[Any]], direction: str
    ) -> None:
        host = canonical(address)
        self.codec_names = {}
        self.payload_types = {}
        self.clock_rates = {}
        encodings: dict[int, int] = {}
        for payload_type, name, clock_rate in codecs:
            encoding = str(name).upper() if str(name).upper() in g711.LAWS else str(name).lower()
            number = encoding_id(encoding)
            if number is None or not 0 <= int(payload_type) < 128:
                continue
            self.codec_names[int(payload_type)] = encoding
            self.clock_rates[int(payload_type)] = int(clock_rate)
            self.payload_types.setdefault(encoding, int(payload_type))
            encodings[int(payload_type)] = number
        laws = [law for law in g711.LAWS if law in self.payload_types]
        self.law = laws[0] if laws else None
        self.party_sends = direction in PARTY_SENDS
        self.party_receives = direction in PARTY_RECEIVES
        self.fast.set_remote(
            host, rtp_port, rtcp_port, encodings, self.clock_rates, self.party_sends, self.party_receives
        )  # ValueError: not an address of this leg's family
        self.remote_rtp = (host, rtp_port)
        self.remote_rtcp = (host, rtcp_port)

    def set_srtp(self, send_key: bytes, recv_key: bytes) -> None:
        """SRTP with these keys toward the party (both empty: plain RTP). The same keys again (a
        re-INVITE: hold, resume) keep the sessions, with their replay windows and counters."""
        if (send_key, recv_key) == (self.srtp_keys or (b"", b"")):
            return
        self.fast.set_srtp(send_key, recv_key)
        self.srtp_keys = (send_key, recv_key) if send_key else None

    def send(
        self,
        source: object,
        source_ssrc: int,
        encoding: str,
        marker: int,
        sequence: int,
        timestamp: int,
        payload: bytes,
    ) -> str | None:
        """Sends one packet of ``source`` (the player) to the party, in its codec; returns the
        encoding sent (None if nothing was: no remote yet, the party does not receive, or takes no
        such codec)."""
        number = _ENCODING_IDS.get(encoding)
        if number is None:
            return None
        sent = self.fast.send(source, source_ssrc, number, marker, sequence, timestamp, payload)
        return None if sent is None else ENCODING_NAMES[sent]

    def connect(self, partner: Leg, call_id: str, home: bool) -> None:
        if self.partner is not None and self.partner is not partner:
            self.partner.disconnect()
        self.partner = partner
        self.call_id = call_id
        self.channel = HOME_CHANNEL if home else OTHER_CHANNEL
        self.fast.connect(partner.fast)
        self.fast.tapping = True

    def disconnect(self) -> None:
        """Unlinks the leg from its partner (both ways); it leaves its call too."""
        partner, self.partner = self.partner, None
        self._leave()
        if partner is not None and partner.partner is self:
            partner.partner = None
            partner._leave()

    def _leave(self) -> None:
        self.call_id = ""
        self.fast.connect(None)
        self.fast.tapping = False
        self.fast.take_taps()

    def close(self) -> None:
        """Unlinks it and closes its sockets (the worker stopped watching them first)."""
        self.disconnect()
        self.playback = None
        self.fast.close()
        for sock in (self.rtp, self.rtcp):
            if sock is not None:
                sock.close()
        self.rtp = self.rtcp = None

    @property
    def last_rtp(self) -> float:
        return self.fast.last_rtp

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
            "packets_in": self.fast.packets_in,
            "packets_out": self.fast.packets_out,
            "packets_dropped": self.fast.packets_dropped,
            "playing": self.playback is not None,
            "srtp": self.fast.srtp,
        }


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
