"""Answering digest challenges as a SIP client (RFC 3261 section 22.2, RFC 7616, RFC 8760).

The gateway is the client toward a provider's trunk: its INVITEs and REGISTERs draw 401
(``WWW-Authenticate``, answered in ``Authorization``) or 407 (``Proxy-Authenticate``, answered in
``Proxy-Authorization``).

    choose_challenge(response) -> ServerChallenge    the best usable challenge of a 401/407
    answer_challenge(value, method, uri, ...) -> str  the credentials that answer one challenge

Algorithms: MD5, SHA-256 and their ``-sess`` variants. Quality of protection: ``auth`` when
offered, ``auth-int`` (the body hashed in) when offered alone, and no qop at all for RFC 2069
servers. Several challenges in one response are ranked by algorithm, SHA-256 before MD5 and the
plain variant before ``-sess``; RFC 8760 section 2.4 lets local policy override the server's order.

A challenge that cannot be answered raises ``DigestError`` (the server side's error) with a
message safe to log: it never holds the password, nor the parts of the challenge hashed with it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
from collections.abc import Callable

from services.sipgw.auth.digest import DigestError, parse_credentials
from services.sipgw.sip.message import Response

_HASHES: dict[str, Callable[[bytes], hashlib._Hash]] = {
    "MD5": hashlib.md5,
    "MD5-SESS": hashlib.md5,
    "SHA-256": hashlib.sha256,
    "SHA-256-SESS": hashlib.sha256,
}
# Preference among the challenges of one response, best first.
_RANK = ("SHA-256", "SHA-256-SESS", "MD5", "MD5-SESS")
_QOPS = ("auth", "auth-int")
MAX_NONCE_COUNT = 0xFFFFFFFF  # nc is 8 hex digits (RFC 7616 section 3.4)


@dataclasses.dataclass(frozen=True)
class ServerChallenge:
    """One challenge picked from a 401 or 407, and the header field its answer goes in."""

    answer_header: str  # "Authorization" (401) or "Proxy-Authorization" (407)
    value: str  # the WWW-Authenticate / Proxy-Authenticate value, as received
    realm: str
    nonce: str
    algorithm: str  # upper case; "MD5" when the challenge named none
    stale: bool


def answer_challenge(
    challenge_header_value: str,
    method: str,
    uri: str,
    username: str,
    password: str,
    body: bytes = b"",
    nc: int = 1,
    cnonce: str | None = None,
) -> str:
    """The ``Authorization`` / ``Proxy-Authorization`` value answering one challenge.

    ``uri`` is the Request-URI as sent; ``body`` is hashed in only for qop auth-int; ``nc`` counts
    the requests made with this nonce (1 for the first); ``cnonce`` is drawn at random if not given.
    Raises DigestError if the challenge cannot be answered.
    """
    params = _parse_challenge(challenge_header_value)
    algorithm = params.get("algorithm", "MD5").upper()
    hasher = _HASHES[algorithm]  # _parse_challenge refused the others
    realm, nonce = params["realm"], params["nonce"]
    qop = _choose_qop(params.get("qop"))
    for what, text in (("username", username), ("uri", uri), ("method", method)):
        if any(c in text for c in "\r\n\x00"):
            raise DigestError(f"the {what} holds a line break or NUL")
    if not 1 <= nc <= MAX_NONCE_COUNT:
        raise DigestError("nonce count out of range")
    if algorithm.endswith("-SESS") and not qop:
        # The session key hashes the cnonce in, and without qop there is no cnonce to send.
        raise DigestError(f"algorithm {algorithm} without qop cannot be answered")
    if qop and cnonce is None:
        cnonce = secrets.token_hex(16)

    def h(data: str | bytes) -> str:
        return hasher(data.encode() if isinstance(data, str) else data).hexdigest()

    ha1 = h(f"{username}:{realm}:{password}")
    if algorithm.endswith("-SESS"):
        ha1 = h(f"{ha1}:{nonce}:{cnonce}")
    ha2 = h(f"{method}:{uri}:{h(body)}") if qop == "auth-int" else h(f"{method}:{uri}")
    nc_text = f"{nc:08x}"
    response = h(f"{ha1}:{nonce}:{nc_text}:{cnonce}:{qop}:{ha2}") if qop else h(f"{ha1}:{nonce}:{ha2}")

    userhash = params.get("userhash", "").lower() == "true"
    name = h(f"{username}:{realm}") if userhash else username
    fields = [
        f"username={_quote(name)}",
        f"realm={_quote(realm)}",
        f"nonce={_quote(nonce)}",
        f"uri={_quote(uri)}",
        f"response={_quote(response)}",
    ]
    if "algorithm" in params:
        fields.append(f"algorithm={params['algorithm']}")
    if qop:
        assert cnonce is not None  # drawn above
        fields += [f"cnonce={_quote(cnonce)}", f"qop={qop}", f"nc={nc_text}"]
    if "opaque" in params:
        fields.append(f"opaque={_quote(params['opaque'])}")
    if userhash:
        fields.append("userhash=true")
    return "Digest " + ", ".join(fields)


def choose_challenge(response: Response) -> ServerChallenge:
    """The challenge of a 401 or 407 to answer: the best-ranked algorithm, the first of a rank.

    Challenges this client cannot answer (another scheme, an unknown algorithm, no nonce) are
    passed over; raises DigestError if none is left, or if the response is not a 401/407.
    """
    if response.status == 401:
        challenge_header, answer_header = "WWW-Authenticate", "Authorization"
    elif response.status == 407:
        challenge_header, answer_header = "Proxy-Authenticate", "Proxy-Authorization"
    else:
        raise DigestError(f"a {response.status} response is not a challenge")
    best: ServerChallenge | None = None
    why = f"no {challenge_header} field"
    for value in response.headers.get_lines(challenge_header):
        try:
            params = _parse_challenge(value)
            _choose_qop(params.get("qop"))
        except DigestError as error:
            why = str(error)
            continue
        algorithm = params.get("algorithm", "MD5").upper()
        if algorithm.endswith("-SESS") and "qop" not in params:
            why = f"algorithm {algorithm} without qop"
            continue
        candidate = ServerChallenge(
            answer_header,
            value,
            params["realm"],
            params["nonce"],
            algorithm,
            params.get("stale", "").lower() == "true",
        )
        if best is None or _RANK.index(candidate.algorithm) < _RANK.index(best.algorithm):
            best = candidate
    if best is None:
        raise DigestError(f"no usable challenge in the {response.status} ({why})")
    return best


def _parse_challenge(value: str) -> dict[str, str]:
    """A challenge's parameters (lower-case names); raises DigestError if it cannot be answered."""
    params = parse_credentials(value)  # the same auth-param grammar as credentials
    algorithm = params.get("algorithm", "MD5").upper()
    if algorithm not in _HASHES:
        raise DigestError(f"unsupported algorithm {algorithm[:20]!r}")
    for required in ("realm", "nonce"):
        if not params.get(required):
            raise DigestError(f"challenge without a {required}")
    return params


def _choose_qop(offered: str | None) -> str:
    """``auth`` if offered, else ``auth-int`` if offered, "" for no qop (RFC 2069)."""
    if offered is None:
        return ""
    options = [option.strip().lower() for option in offered.split(",")]
    for qop in _QOPS:
        if qop in options:
            return qop
    raise DigestError(f"unsupported qop {offered[:30]!r}")


def _quote(text: str) -> str:
    """An RFC 7230 quoted-string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
