"""The gateway's end of the inter-server trunk: one endpoint, one secret, one pool of lines.

Every request sent on the trunk is signed (``TrunkProof``); every request received on it must
carry a valid proof, used once, else it gets 403 and nothing else: a log line with its source
(then one line a minute per source with the count) and a count in the metrics. Only
there are the identity headers believed: P-Asserted-Identity (who calls), the origin server and
the call's correlation id. Whatever a phone puts in those headers is never copied.
"""

from __future__ import annotations

import logging
import secrets
from typing import Protocol

from services.runtime.logs import Throttled
from services.runtime.text import printable
from services.sipgw.auth.trunk_proof import HEADER, TrunkProof, TrunkProofError
from services.sipgw.sip import Request, SipURI, parse_name_addr
from services.sipgw.sip.headers import Headers
from services.sipgw.sip.transport import Address, Link
from services.sipgw.trunk_lines import TrunkLines

_log = logging.getLogger(__name__)

ORIGIN = "X-Pbxmesh-Origin"
CORRELATION = "X-Pbxmesh-Call"
PATH = "X-Pbxmesh-Path"  # the servers the call has passed, comma-separated, oldest first
TRACEPARENT = "traceparent"  # W3C trace context (services/sipgw/tracing.py)
IDENTITY = "P-Asserted-Identity"
# This gateway process's instance: a restarted gateway has another, and has forgotten the calls of
# the one before (its peers end them). On trunk INVITEs, their 2xx and OPTIONS answers.
INSTANCE = "X-Pbxmesh-Instance"
REPLACES = "Replaces"  # RFC 3891, in a hand-over's INVITE
# On a trunk INVITE for a call that came in from a provider: the server it reaches treats it as
# from the outside (the toll fraud guard: no way back out unless a rule allows it).
FROM_PROVIDER = "X-Pbxmesh-From-Provider"


class TrunkLink(Link, Protocol):
    """The trunk's link: UDP (services/sipgw/sip/transport.py) or TLS (sip/tls_trunk.py)."""

    def close(self) -> None: ...


class Trunk:
    def __init__(self, server_id: str, proof: TrunkProof, lines: TrunkLines):
        self.server_id = server_id
        self.proof = proof
        self.lines = lines
        self.endpoint: TrunkLink | None = None
        self.refused = 0  # requests refused for their proof (a metric)
        self.instance = secrets.token_hex(6)
        self._refusals = Throttled(_log)  # anyone can send junk to the trunk: its lines are counted

    def carries(self, link: Link) -> bool:
        """Whether ``link`` is the trunk, or one of its TLS connections."""
        return self.endpoint is not None and (link is self.endpoint or getattr(link, "owner", None) is self.endpoint)

    def sign(self, request: Request, link: Link) -> None:
        """The transaction layer's hook: requests leaving on the trunk get their proof."""
        if not self.carries(link):
            return
        request.headers.set(HEADER, self.proof.sign(*_signed_fields(request)))

    def verify(self, request: Request, source: Address, link: Link | None = None) -> bool:
        """The request's proof, and over TLS the server its connection proved: a request that
        claims another origin (or a new call that claims none) is refused."""
        try:
            self.proof.verify(request.headers.get(HEADER), *_signed_fields(request), once=request.method != "ACK")
            proved = getattr(link, "peer_id", None)
            origin = request.headers.get(ORIGIN)
            claims = bool(origin) or not request.to_addr.tag  # a new dialog always says where it comes from
            if proved is not None and claims and origin != proved:
                raise TrunkProofError(f"its origin {origin or 'none'} is not the server of its TLS connection")
        except TrunkProofError as error:
            self.refused += 1
            why = f"trunk requests from {source[0]}: {error}"  # one count per source and reason
            self._refusals.warning(why, "trunk %s from %s:%s refused: %s", request.method, *source, error)
            return False
        return True

    def identity(
        self, headers: Headers, caller: str, display: str | None, correlation: str, path: tuple[str, ...] = ()
    ) -> None:
        """Who is calling, for the server at the other end, and the servers the call has passed."""
        # Plan display names are checked where they enter; this keeps CR, LF and " out of the
        # header even if one came through (an older server's record, say).
        name = printable(display).replace('"', "").strip() if display else ""
        shown = f'"{name}" ' if name else ""
        headers.set(IDENTITY, f"{shown}<sip:{caller}@{self.server_id}.pbxmesh.invalid>")
        headers.set(ORIGIN, self.server_id)
        headers.set(CORRELATION, correlation)
        headers.set(PATH, ",".join([*(p for p in path if p != self.server_id), self.server_id]))
        headers.set(INSTANCE, self.instance)

    @staticmethod
    def caller_of(request: Request) -> tuple[str, str | None]:
        """The calling number and name a trunk request asserts (its proof was checked already)."""
        value = request.headers.get(IDENTITY)
        addr = parse_name_addr(value) if value else request.from_addr
        user = addr.uri.user if isinstance(addr.uri, SipURI) and addr.uri.user else "anonymous"
        return user, addr.display_name


def _signed_fields(request: Request) -> tuple[str, str, str, str, str, str, bytes, str]:
    cseq = request.cseq
    names = (IDENTITY, ORIGIN, CORRELATION, PATH, TRACEPARENT, INSTANCE)
    asserted = "\n".join(request.headers.get(name) or "" for name in names)
    replaces = request.headers.get(REPLACES)
    if replaces is not None:  # a hand-over names the dialog it takes: covered too
        asserted += f"\n{REPLACES}: {replaces}"
    return (request.method, str(request.uri), request.call_id, f"{cseq.number} {cseq.method}",
            request.from_addr.tag or "", request.top_via.branch or "", request.body, asserted)  # fmt: skip
