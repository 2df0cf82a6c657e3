"""Proof that a trunk request comes from a server that knows the group's trunk secret.

Every request on the inter-server trunk carries one header value

    v1;ts=<unix seconds>;sig=<base64url HMAC-SHA256>

where the HMAC covers the version, the timestamp and the request's key fields (method,
Request-URI, Call-ID, CSeq, From tag, the body's SHA-256, and the headers the receiver trusts
because of it: the asserted identity, origin server, correlation id and path), so a proof cannot
be moved to another request nor its assertions changed. A proof older or newer than ``window``
seconds is refused, which bounds replays; a replay within the window is a retransmission of the
same request, which the transaction layer absorbs anyway.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable

HEADER = "X-Pbxmesh-Trunk"
VERSION = "v1"
WINDOW = 30.0


class TrunkProofError(ValueError):
    """A missing, malformed, expired or wrong proof; the message is for the log, never the peer."""


class TrunkProof:
    def __init__(self, secret: str, window: float = WINDOW, clock: Callable[[], float] = time.time):
        if not secret:
            raise ValueError("the trunk secret is empty")
        self._key = hashlib.sha256(b"pbxmesh trunk v1\x00" + secret.encode()).digest()
        self._window = window
        self._clock = clock

    def sign(
        self, method: str, uri: str, call_id: str, cseq: str, from_tag: str, body: bytes = b"", asserted: str = ""
    ) -> str:
        stamp = str(int(self._clock()))
        mac = self._mac(stamp, method, uri, call_id, cseq, from_tag, body, asserted)
        return f"{VERSION};ts={stamp};sig={mac}"

    def verify(
        self,
        value: str | None,
        method: str,
        uri: str,
        call_id: str,
        cseq: str,
        from_tag: str,
        body: bytes = b"",
        asserted: str = "",
    ) -> None:
        """Raises TrunkProofError unless ``value`` proves this very request."""
        if not value:
            raise TrunkProofError("no trunk proof")
        parts = value.strip().split(";")
        fields = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
        if parts[0] != VERSION or set(fields) != {"ts", "sig"} or not fields["ts"].isdigit() or len(parts) != 3:
            raise TrunkProofError("malformed trunk proof")
        if abs(self._clock() - int(fields["ts"])) > self._window:
            raise TrunkProofError("trunk proof outside the time window")
        expected = self._mac(fields["ts"], method, uri, call_id, cseq, from_tag, body, asserted)
        if not hmac.compare_digest(expected, fields["sig"]):
            raise TrunkProofError("wrong trunk proof")

    def _mac(
        self, stamp: str, method: str, uri: str, call_id: str, cseq: str, from_tag: str, body: bytes, asserted: str
    ) -> str:
        # ``asserted``: the headers the receiving server trusts because the proof covers them.
        fields = [VERSION, stamp, method, uri, call_id, " ".join(cseq.split()), from_tag]
        message = "\n".join([*fields, hashlib.sha256(body).hexdigest(), asserted])
        digest = hmac.new(self._key, message.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")
