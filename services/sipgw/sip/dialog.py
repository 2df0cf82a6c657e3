"""Dialogs (RFC 3261 section 12): the state two user agents share for the length of a call.

A dialog is created by a 2xx (or a 1xx with a To tag) to an INVITE. It remembers the route set,
the peer's target, the tags and both CSeq counters; it builds requests inside the dialog (BYE,
re-INVITE, UPDATE, the ACK for a 2xx) and checks the ones that arrive: a request with a lower
CSeq than the last one is out of order (500), and INVITE or UPDATE with a Contact refreshes the
peer's target (RFC 3311 for UPDATE).
"""

from __future__ import annotations

import dataclasses
import secrets

from services.sipgw.sip.fields import URI, NameAddr, SipURI, parse_uri
from services.sipgw.sip.headers import Headers, split_list
from services.sipgw.sip.message import Request, Response
from services.sipgw.sip.transaction import new_branch

TARGET_REFRESH = ("INVITE", "UPDATE")


def new_tag() -> str:
    return secrets.token_hex(8)


def _with_tag(addr: NameAddr, tag: str) -> str:
    params = dict(addr.params)
    params["tag"] = tag
    return str(addr._replace(params=params))


def _route_values(headers: Headers) -> list[str]:
    values: list[str] = []
    for line in headers.get_lines("Record-Route"):
        values.extend(split_list(line))
    return values


@dataclasses.dataclass
class Dialog:
    call_id: str
    local_tag: str
    remote_tag: str
    local: str  # our From (or To) value with our tag
    remote: str  # the peer's, with its tag
    remote_target: URI
    route_set: list[str]
    local_cseq: int
    remote_cseq: int | None
    contact: str  # our Contact, sent in target-refresh requests

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.call_id, self.local_tag, self.remote_tag)

    @classmethod
    def as_uas(cls, invite: Request, local_tag: str, contact: str) -> Dialog:
        """RFC 3261 12.1.1: the dialog the answer to ``invite`` creates (we sent ``local_tag``)."""
        return cls(
            call_id=invite.call_id,
            local_tag=local_tag,
            remote_tag=invite.from_addr.tag or "",
            local=_with_tag(invite.to_addr, local_tag),
            remote=str(invite.from_addr),
            remote_target=invite.contacts[0].uri,
            route_set=_route_values(invite.headers),
            local_cseq=secrets.randbelow(2**31 - 1) + 1,
            remote_cseq=invite.cseq.number,
            contact=contact,
        )

    @classmethod
    def as_uac(cls, invite: Request, response: Response) -> Dialog:
        """RFC 3261 12.1.2: the dialog ``response`` (2xx, or 1xx with a To tag) creates."""
        return cls(
            call_id=invite.call_id,
            local_tag=invite.from_addr.tag or "",
            remote_tag=response.to_addr.tag or "",
            local=str(invite.from_addr),
            remote=str(response.to_addr),
            remote_target=response.contacts[0].uri,
            route_set=list(reversed(_route_values(response.headers))),
            local_cseq=invite.cseq.number,
            remote_cseq=None,
            contact=invite.headers.get("Contact") or "",
        )

    def request(self, method: str, via: str, body: bytes = b"", content_type: str = "") -> Request:
        """RFC 3261 12.2.1.1: a new request inside the dialog. ``via`` is our sent-by
        ("SIP/2.0/UDP host:port"); a branch is added. ACK reuses the INVITE's CSeq (``ack``)."""
        if method in ("ACK", "CANCEL"):
            raise ValueError("use ack() for ACK; CANCEL belongs to the INVITE's transaction")
        self.local_cseq += 1
        return self._build(method, via, self.local_cseq, body, content_type)

    def ack(self, via: str, invite_cseq: int, body: bytes = b"", content_type: str = "") -> Request:
        """The ACK for a 2xx to INVITE: built by the dialog, end to end (RFC 3261 13.2.2.4)."""
        return self._build("ACK", via, invite_cseq, body, content_type)

    def _build(self, method: str, via: str, cseq: int, body: bytes, content_type: str) -> Request:
        uri, routes = self._target_and_routes()
        headers = Headers()
        headers.add("Via", f"{via};branch={new_branch()};rport")
        headers.add("Max-Forwards", "70")
        for route in routes:
            headers.add("Route", route)
        headers.add("From", self.local)
        headers.add("To", self.remote)
        headers.add("Call-ID", self.call_id)
        headers.add("CSeq", f"{cseq} {method}")
        if method in TARGET_REFRESH and self.contact:
            headers.add("Contact", self.contact)
        if content_type and body:
            headers.add("Content-Type", content_type)
        return Request(method, uri, headers, body)

    def _target_and_routes(self) -> tuple[URI, list[str]]:
        """RFC 3261 12.2.1.1: loose routing sends to the target through the route set; a strict
        router first in the set becomes the Request-URI and the target goes last."""
        if not self.route_set:
            return self.remote_target, []
        first = _route_uri(self.route_set[0])
        if isinstance(first, SipURI) and not _has_lr(first):
            return first, [*self.route_set[1:], f"<{self.remote_target}>"]
        return self.remote_target, list(self.route_set)

    def receive(self, request: Request) -> bool:
        """RFC 3261 12.2.2: False if ``request`` is out of order (answer 500); else updates state."""
        number = request.cseq.number
        if request.method not in ("ACK", "CANCEL"):
            if self.remote_cseq is not None and number <= self.remote_cseq:
                return False
            self.remote_cseq = number
        if request.method in TARGET_REFRESH and request.contacts:
            self.remote_target = request.contacts[0].uri
        return True

    def refresh_target(self, response: Response) -> None:
        """A 2xx to our re-INVITE or UPDATE may carry a new Contact for the peer."""
        if response.contacts:
            self.remote_target = response.contacts[0].uri


def _route_uri(value: str) -> URI:
    inner = value.strip()
    if "<" in inner and ">" in inner:
        inner = inner[inner.index("<") + 1 : inner.index(">")]
    return parse_uri(inner)


def _has_lr(uri: SipURI) -> bool:
    return "lr" in uri.params
