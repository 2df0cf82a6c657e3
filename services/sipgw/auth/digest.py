"""HTTP digest authentication as SIP uses it (RFC 3261 section 22, RFC 7616, SHA-256 per RFC 8760).

Nonces are stateless: a timestamp and an HMAC over it with a per-process key, so that any nonce
this process issued can be checked without a table, and an old one is refused as ``stale``
(the phone then retries with the fresh nonce and no user prompt). Replays inside a nonce's life
are refused by remembering the highest nonce count seen per nonce, in a bounded table.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import os
import struct
import time
from collections import OrderedDict
from collections.abc import Callable

ALGORITHMS: dict[str, Callable[[bytes], hashlib._Hash]] = {
    "MD5": hashlib.md5,
    "SHA-256": hashlib.sha256,
}
NONCE_LIFETIME = 60.0
MAX_TRACKED_NONCES = 50_000
MAX_HEADER = 4096


class DigestError(ValueError):
    """Credentials that cannot be checked (malformed, unknown algorithm); the message is safe to log."""


@dataclasses.dataclass(frozen=True)
class Challenge:
    """One ``WWW-Authenticate`` value."""

    realm: str
    nonce: str
    algorithm: str = "MD5"
    stale: bool = False

    def header_value(self) -> str:
        stale = ", stale=true" if self.stale else ""
        realm = self.realm.replace("\\", "\\\\").replace('"', '\\"')
        return f'Digest realm="{realm}", nonce="{self.nonce}", algorithm={self.algorithm}, qop="auth"{stale}'


class NonceFactory:
    """Issues and checks nonces; ``clock`` is injectable for tests."""

    def __init__(
        self, key: bytes | None = None, lifetime: float = NONCE_LIFETIME, clock: Callable[[], float] = time.time
    ):
        self._key = key or os.urandom(32)
        self._lifetime = lifetime
        self._clock = clock
        self._counts: OrderedDict[str, int] = OrderedDict()

    def issue(self) -> str:
        stamp = struct.pack(">d", self._clock()) + os.urandom(8)
        mac = hmac.new(self._key, stamp, hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(stamp + mac).decode().rstrip("=")

    def check(self, nonce: str) -> str:
        """Returns "ok", "stale" (ours but too old) or "bad" (not ours)."""
        try:
            raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
        except (ValueError, TypeError):
            return "bad"
        if len(raw) != 32:
            return "bad"
        stamp, mac = raw[:16], raw[16:]
        if not hmac.compare_digest(mac, hmac.new(self._key, stamp, hashlib.sha256).digest()[:16]):
            return "bad"
        age = self._clock() - struct.unpack(">d", stamp[:8])[0]
        return "ok" if -1.0 <= age <= self._lifetime else "stale"

    def fresh_count(self, nonce: str, count: int) -> bool:
        """True if ``count`` (the nc parameter) is higher than any seen with this nonce: no replay."""
        # Other nonces past their lifetime are refused as stale anyway: their counts need not be
        # kept (the table stays near rate x lifetime under steady load, not at its cap).
        now = self._clock()
        while self._counts and (oldest := next(iter(self._counts))) != nonce:
            if now - self._issued_at(oldest) <= self._lifetime:
                break
            del self._counts[oldest]
        last = self._counts.get(nonce, 0)
        if count <= last:
            return False
        self._counts[nonce] = count
        self._counts.move_to_end(nonce)
        while len(self._counts) > MAX_TRACKED_NONCES:
            self._counts.popitem(last=False)
        return True

    @staticmethod
    def _issued_at(nonce: str) -> float:
        """When one of our nonces was issued (it carries its time); 0 for anything else."""
        try:
            raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
            return float(struct.unpack(">d", raw[:8])[0]) if len(raw) == 32 else 0.0
        except (ValueError, TypeError, struct.error):
            return 0.0


def parse_credentials(value: str) -> dict[str, str]:
    """Splits ``Digest k=v, k="v"`` into a dict with lower-case keys; raises DigestError."""
    if len(value) > MAX_HEADER:
        raise DigestError("credentials too long")
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        raise DigestError("not a digest scheme")
    params: dict[str, str] = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " \t,":
            i += 1
        if i >= n:
            break
        eq = rest.find("=", i)
        if eq < 0:
            raise DigestError("parameter without a value")
        name = rest[i:eq].strip().lower()
        i = eq + 1
        while i < n and rest[i] in " \t":
            i += 1
        if i < n and rest[i] == '"':
            i += 1
            chars: list[str] = []
            while i < n and rest[i] != '"':
                if rest[i] == "\\" and i + 1 < n:
                    i += 1
                chars.append(rest[i])
                i += 1
            if i >= n:
                raise DigestError("unterminated quoted value")
            i += 1
            text = "".join(chars)
        else:
            end = rest.find(",", i)
            end = n if end < 0 else end
            text = rest[i:end].strip()
            i = end
        if not name or name in params:
            raise DigestError("empty or repeated parameter")
        params[name] = text
    return params


def verify_response(params: dict[str, str], method: str, password: str) -> bool:
    """Checks the ``response`` parameter against the password (constant-time compare).

    The digest is computed over the ``uri`` parameter the client sent, which is what it hashed
    (some clients put ``sip:host:port`` there instead of the Request-URI).
    """
    algorithm = params.get("algorithm", "MD5").upper()
    hasher = ALGORITHMS.get(algorithm)
    if hasher is None:
        raise DigestError(f"unsupported algorithm {algorithm[:20]!r}")
    for required in ("username", "realm", "nonce", "uri", "response"):
        if required not in params:
            raise DigestError(f"missing {required}")

    response = params["response"].lower()
    if not (response.isascii() and all(c in "0123456789abcdef" for c in response)):
        raise DigestError("response is not hexadecimal")

    def h(text: str) -> str:
        try:
            return hasher(text.encode()).hexdigest()
        except UnicodeEncodeError:  # bytes that were not UTF-8 on the wire
            raise DigestError("credentials are not text") from None

    ha1 = h(f"{params['username']}:{params['realm']}:{password}")
    ha2 = h(f"{method}:{params['uri']}")
    qop = params.get("qop", "")
    if qop:
        if qop != "auth" or "nc" not in params or "cnonce" not in params:
            raise DigestError("qop needs auth, nc and cnonce")
        expected = h(f"{ha1}:{params['nonce']}:{params['nc']}:{params['cnonce']}:{qop}:{ha2}")
    else:
        expected = h(f"{ha1}:{params['nonce']}:{ha2}")
    return hmac.compare_digest(expected, response)
