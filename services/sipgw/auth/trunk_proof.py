"""Proof that a trunk request comes from a server that knows the group's trunk secret.

Every request on the inter-server trunk carries one header value

    v2;ts=<unix seconds>;sig=<base64url HMAC-SHA256>

where the HMAC covers the version, the timestamp and the request's key fields (method,
Request-URI, Call-ID, CSeq, From tag, the top Via's branch, the body's SHA-256, and the headers
the receiver trusts because of it: the asserted identity, origin server, correlation id and path),
so a proof cannot be moved to another request nor its assertions changed. A proof is good once:
one older or newer than ``window`` seconds is refused, and within the window each proof seen is
remembered and a second sighting refused. A retransmission (same branch, same proof) never gets
here: the transaction layer absorbs it. The ACK for a 2xx is exempt (it is resent as it was when
the peer resends its 2xx, and an ACK starts nothing).

v1 proofs (no branch, replayable within the window) are refused: every server of a group moves to
v2 together.

Changing the secret: a server signs with ``secret`` and accepts it and the ``accepted`` ones
(``trunk.accept_secrets``). The group first adds the new secret to every server's accepted ones,
then makes it every server's ``secret`` (the old one accepted meanwhile), then drops the old one:
at no moment does a server sign with a secret another does not accept. ``set_secrets`` takes a
change while the gateway runs (its config file is watched).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections import OrderedDict
from collections.abc import Callable

HEADER = "X-Pbxmesh-Trunk"
VERSION = "v2"
WINDOW = 30.0
MAX_REMEMBERED = 200_000  # proofs kept for replay checks: a window's worth at thousands of requests a second


class TrunkProofError(ValueError):
    """A missing, malformed, expired or wrong proof; the message is for the log, never the peer."""


class TrunkProof:
    def __init__(
        self,
        secret: str,
        window: float = WINDOW,
        clock: Callable[[], float] = time.time,
        accepted: tuple[str, ...] = (),
    ):
        self._keys: tuple[bytes, ...] = ()
        self.set_secrets(secret, accepted)
        self._window = window
        self._clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()  # proof -> when it was seen

    def set_secrets(self, secret: str, accepted: tuple[str, ...] = ()) -> None:
        """Signs with ``secret`` from now on; accepts it and ``accepted``."""
        if not secret or not all(accepted):
            raise ValueError("a trunk secret is empty")
        keys = [_key(secret)]
        keys += [key for key in map(_key, accepted) if key not in keys]
        self._keys = tuple(keys)

    def fingerprint(self) -> bytes:
        """Changes when the secrets do (for a log line; tells nothing of them)."""
        return hashlib.sha256(b"".join(self._keys)).digest()

    @property
    def accepted(self) -> int:
        """How many secrets are accepted (the signing one included)."""
        return len(self._keys)

    def sign(
        self,
        method: str,
        uri: str,
        call_id: str,
        cseq: str,
        from_tag: str,
        branch: str,
        body: bytes = b"",
        asserted: str = "",
    ) -> str:
        stamp = str(int(self._clock()))
        mac = _mac(self._keys[0], self._message(stamp, method, uri, call_id, cseq, from_tag, branch, body, asserted))
        return f"{VERSION};ts={stamp};sig={mac}"

    def verify(
        self,
        value: str | None,
        method: str,
        uri: str,
        call_id: str,
        cseq: str,
        from_tag: str,
        branch: str,
        body: bytes = b"",
        asserted: str = "",
        once: bool = True,
    ) -> None:
        """Raises TrunkProofError unless ``value`` proves this very request, for the first time
        (``once``: an ACK may come again)."""
        if not value:
            raise TrunkProofError("no trunk proof")
        parts = value.strip().split(";")
        fields = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
        if parts[0] != VERSION or set(fields) != {"ts", "sig"} or not fields["ts"].isdigit() or len(parts) != 3:
            raise TrunkProofError("malformed trunk proof")
        now = self._clock()
        if abs(now - int(fields["ts"])) > self._window:
            raise TrunkProofError("trunk proof outside the time window")
        message = self._message(fields["ts"], method, uri, call_id, cseq, from_tag, branch, body, asserted)
        # Every accepted key is tried, so that which one matched takes no time of its own to tell.
        matches = [hmac.compare_digest(_mac(key, message), fields["sig"]) for key in self._keys]
        if not any(matches):
            raise TrunkProofError("wrong trunk proof")
        if once:
            self._remember(fields["sig"], now)

    def _remember(self, sig: str, now: float) -> None:
        """Checked after the HMAC, so that only a signed request can take a place in the table."""
        while self._seen and (now - next(iter(self._seen.values())) > 2 * self._window):
            self._seen.popitem(last=False)  # its timestamp is outside the window by now
        if sig in self._seen:
            raise TrunkProofError("replayed trunk proof")
        self._seen[sig] = now
        if len(self._seen) > MAX_REMEMBERED:
            self._seen.popitem(last=False)

    @staticmethod
    def _message(
        stamp: str,
        method: str,
        uri: str,
        call_id: str,
        cseq: str,
        from_tag: str,
        branch: str,
        body: bytes,
        asserted: str,
    ) -> bytes:
        # ``asserted``: the headers the receiving server trusts because the proof covers them.
        fields = [VERSION, stamp, method, uri, call_id, " ".join(cseq.split()), from_tag, branch]
        return "\n".join([*fields, hashlib.sha256(body).hexdigest(), asserted]).encode()


def _key(secret: str) -> bytes:
    return hashlib.sha256(b"pbxmesh trunk v1\x00" + secret.encode()).digest()


def _mac(key: bytes, message: bytes) -> str:
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")
