"""What the call core reads in SDP and message bodies (media itself flows between the phones)."""

from __future__ import annotations

import re

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
