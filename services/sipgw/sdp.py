"""What the call core reads in SDP and message bodies, and how it rewrites SDP when the call's
media is anchored on the server's media service."""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import ipaddress
import re
from collections.abc import Iterator

from services.sipgw.sip import Request, Response


def copy_body(source: Request | Response, target: Request | Response) -> None:
    """The body and its Content-Type, carried from one leg's message to the other's."""
    content_type = source.headers.get("Content-Type")
    if content_type and source.body:
        target.headers.add("Content-Type", content_type)
        target.body = source.body


def allows_update(message: Request | Response) -> bool:
    """Whether the message's Allow names UPDATE (RFC 3311)."""
    return any(method.strip().upper() == "UPDATE" for method in message.headers.get_all("Allow"))


def holds(sdp: bytes) -> bool:
    """Whether an SDP offer puts the other side on hold: every stream sendonly or inactive (a
    session-level direction counts for streams without their own, RFC 3264 8.4), or RFC 2543's
    c=0.0.0.0."""
    text = sdp.decode("utf-8", "replace")
    if "c=IN IP4 0.0.0.0" in text:
        return True
    session, *streams = re.split(r"\r?\nm=", text)

    def direction(block: str, default: str) -> str:
        for line in block.splitlines():
            if line.strip() in ("a=sendonly", "a=inactive", "a=sendrecv", "a=recvonly"):
                return line.strip()[2:]
        return default

    default = direction(session, "sendrecv")
    return all(direction(block, default) in ("sendonly", "inactive") for block in streams or [session])


def refusal(offer: bytes) -> bytes:
    """An SDP answer that refuses every stream of ``offer`` (port 0, RFC 3264 6): what the first
    party of a placed call is ACKed with when there is no second party to talk to."""
    lines = offer.decode("utf-8", "replace").splitlines()
    if not any(line.startswith("v=") for line in lines):
        return b""
    out = []
    for line in lines:
        if line.startswith("m="):
            media, _port, *rest = line.split(" ")
            out.append(" ".join([media, "0", *rest]))
        else:
            out.append(line)
    return ("\r\n".join(out) + "\r\n").encode()


# -- anchoring: what the media service is told of a party's SDP, and the SDP the other party gets --

STATIC = {0: ("PCMU", 8000), 8: ("PCMA", 8000)}
RELAYED = ("PCMU", "PCMA", "telephone-event")
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
# Attributes that describe the party's own transport: they must not reach the other party when
# the media runs through this server (its candidates, its RTCP port, keys it alone holds).
TRANSPORT_ATTRIBUTES = (
    "a=rtcp:",
    "a=rtcp-mux",
    "a=candidate",
    "a=end-of-candidates",
    "a=ice-",
    "a=crypto",
    "a=fingerprint",
    "a=setup",
    "a=remote-candidates",
)


@dataclasses.dataclass(frozen=True)
class Stream:
    """A party's audio stream as its SDP describes it."""

    address: str
    port: int
    rtcp_port: int
    codecs: tuple[tuple[int, str, int], ...]  # (payload type, encoding, clock rate), relayed ones only
    direction: str
    srtp_key: bytes | None = None  # RTP/SAVP with an AES_CM_128_HMAC_SHA1_80 SDES key (RFC 4568)

    @property
    def speaks_g711(self) -> bool:
        return any(encoding in ("PCMU", "PCMA") for _, encoding, _ in self.codecs)

    @property
    def reachable(self) -> bool:
        """An IPv4 address and a port to send to (a name is never resolved; 0.0.0.0 or port 0:
        the party takes no media now, RFC 3264 8.4)."""
        try:
            address = ipaddress.IPv4Address(self.address)
        except ValueError:
            return False
        return not address.is_unspecified and self.port > 0


def audio_stream(body: bytes) -> Stream | None:
    """The first audio stream of an SDP body; None when there is none (or it is not SDP)."""
    text = body.decode("utf-8", "replace")
    lines = [line.strip() for line in text.splitlines()]
    if not lines or not lines[0].startswith("v="):
        return None
    session_address, direction = "", "sendrecv"
    block: list[str] | None = None
    for line in lines:
        if line.startswith("m="):
            if block is not None:
                break
            if line.startswith("m=audio "):
                block = [line]
            continue
        if block is not None:
            block.append(line)
        elif line.startswith("c="):
            session_address = line.split()[-1]
        elif line[2:] in DIRECTIONS:
            direction = line[2:]
    if block is None:
        return None
    fields = block[0].split()
    try:
        port = int(fields[1].split("/")[0])
        formats = [int(f) for f in fields[3:]]
    except (IndexError, ValueError):
        return None
    address, rtcp_port, maps, srtp_key = session_address, port + 1, dict(STATIC), None
    for line in block[1:]:
        if line.startswith("a=crypto:") and srtp_key is None and fields[2] == "RTP/SAVP":
            srtp_key = _sdes_key(line)
        if line.startswith("c="):
            address = line.split()[-1]
        elif line.startswith("a=rtcp:"):
            with contextlib.suppress(ValueError):
                rtcp_port = int(line[7:].split()[0])
        elif line.startswith("a=rtpmap:"):
            with contextlib.suppress(ValueError, IndexError):
                pt, spec = line[9:].split(None, 1)
                name, rate, *_ = [*spec.split("/"), "8000"]
                maps[int(pt)] = (name, int(rate))
        elif line[2:] in DIRECTIONS:
            direction = line[2:]
    address = address.split("/")[0]
    with contextlib.suppress(ValueError):
        address = str(ipaddress.IPv4Address(address))
    codecs = tuple(
        (pt, _canonical(maps[pt][0]), maps[pt][1])
        for pt in formats
        if pt in maps and _canonical(maps[pt][0]) in RELAYED and maps[pt][1] == 8000
    )
    if not 0 <= port <= 65535 or not 0 < rtcp_port <= 65535:
        return None
    return Stream(address, port, rtcp_port, codecs, direction, srtp_key)


SRTP_SUITE = "AES_CM_128_HMAC_SHA1_80"


def _sdes_key(line: str) -> bytes | None:
    """The master key and salt of an ``a=crypto`` line of the one suite used here (30 bytes)."""
    parts = line.split()
    if len(parts) < 3 or parts[1] != SRTP_SUITE or not parts[2].startswith("inline:"):
        return None
    try:
        key = base64.b64decode(parts[2][7:].split("|")[0], validate=True)
    except (ValueError, binascii.Error):
        return None
    return key if len(key) == 30 else None


def _canonical(name: str) -> str:
    upper = name.upper()
    return "telephone-event" if upper == "TELEPHONE-EVENT" else upper


def anchored(
    body: bytes,
    address: str,
    port: int,
    origin: tuple[int, int],
    direction: str | None = None,
    srtp_key: bytes | None = None,
) -> bytes:
    """``body`` as the other party gets it when media runs through this server: its audio stream
    at ``address``:``port`` with only the codecs relayed, other streams refused (port 0), the
    party's transport attributes left out, and the gateway's own origin line (session id,
    version) so that the other party sees one session whoever is behind it. ``direction`` replaces
    the stream's own (session-level directions move into the stream). With ``srtp_key`` the
    stream is RTP/SAVP with that key (another server's media service, inside the TLS trunk);
    without, plain RTP/AVP (the party's own keys never pass on)."""
    stream = audio_stream(body)
    kept = {pt for pt, _, _ in stream.codecs} if stream is not None else set()
    out: list[str] = []
    for line, in_audio in _lines(body):
        if line.startswith("o="):
            out.append(f"o=- {origin[0]} {origin[1]} IN IP4 {address}")  # no product name: no hint
            continue
        if direction is not None and line[2:] in DIRECTIONS:
            continue  # said once, in the audio stream
        if line.startswith("m="):
            fields = line.split()
            if in_audio:
                formats = [f for f in fields[3:] if f.isdigit() and int(f) in kept]
                transport = fields[2] if len(fields) > 2 else "RTP/AVP"
                if srtp_key is not None:
                    transport = "RTP/SAVP"
                elif transport in ("RTP/SAVP", "RTP/SAVPF"):
                    transport = transport.replace("SAVP", "AVP")
                out.append(" ".join([fields[0], str(port), transport, *formats]))
                if direction is not None:
                    out.append(f"a={direction}")
                if srtp_key is not None:
                    out.append(f"a=crypto:1 {SRTP_SUITE} inline:{base64.b64encode(srtp_key).decode()}")
            else:
                out.append(" ".join([fields[0], "0", *fields[2:]]))
            continue
        if line.startswith("c="):
            out.append(f"c=IN IP4 {address}")
            continue
        if in_audio and (line.startswith(TRANSPORT_ATTRIBUTES) or _dropped_format(line, kept)):
            continue
        out.append(line)
    return ("\r\n".join(out) + "\r\n").encode()


def _lines(body: bytes) -> Iterator[tuple[str, bool]]:
    """The non-empty lines of an SDP body, each with whether it is of its first audio stream."""
    in_audio = seen_audio = False
    for raw in body.decode("utf-8", "replace").splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("m="):
            in_audio = line.split()[0] == "m=audio" and not seen_audio
            seen_audio = seen_audio or in_audio
        yield line, in_audio


def _dropped_format(line: str, kept: set[int]) -> bool:
    """Whether ``line`` describes a payload type (rtpmap, fmtp) that is not ``kept``."""
    if not line.startswith(("a=rtpmap:", "a=fmtp:")):
        return False
    fields = line.split(":", 1)[1].split()
    return not fields or not fields[0].isdigit() or int(fields[0]) not in kept


def only_codecs(body: bytes, allowed: tuple[str, ...]) -> bytes | None:
    """``body`` with its audio stream limited to the ``allowed`` encodings (and telephone-event):
    what a provider that takes only those is offered, or takes from its own offers. None when
    none of them is left; the body as it is when it has no audio stream."""
    stream = audio_stream(body)
    if stream is None:
        return body
    if not any(name in allowed for _, name, _ in stream.codecs):
        return None
    kept = {pt for pt, name, _ in stream.codecs if name in allowed or name == "telephone-event"}
    out: list[str] = []
    for line, in_audio in _lines(body):
        if in_audio and line.startswith("m="):
            fields = line.split()
            out.append(" ".join([*fields[:3], *(f for f in fields[3:] if f.isdigit() and int(f) in kept)]))
        elif not (in_audio and _dropped_format(line, kept)):
            out.append(line)
    return ("\r\n".join(out) + "\r\n").encode()


def limit_offer(body: bytes, content_type: str | None, codecs: tuple[str, ...]) -> bytes | None:
    """The SDP offer as a route with these ``codecs`` gets it, or as a provider with them is taken
    to have made it (all of it when there are none: a router server over the trunk limits it to
    its own provider's; the body as it is when it is no SDP); None when nothing of it is left."""
    if not codecs or not body or content_type != "application/sdp":
        return body
    return only_codecs(body, codecs)
