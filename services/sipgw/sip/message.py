"""SIP requests and responses (RFC 3261 section 7) and their canonical serialization.

A message holds its start line, ``Headers`` with raw values, and the body as bytes. The fields
every layer above reads (Via, From, To, Call-ID, CSeq...) are parsed on first use and cached in
the headers; ``check()`` parses all of them and applies the rules by which RFC 3261 and RFC 4475
say a receiver rejects a syntactically readable message.
"""

from __future__ import annotations

from services.sipgw.sip.errors import ParseError
from services.sipgw.sip.fields import (
    URI,
    CSeq,
    NameAddr,
    SipURI,
    Via,
    is_rfc1123_gmt,
    parse_cseq,
    parse_name_addr,
    parse_uint,
    parse_via,
)
from services.sipgw.sip.headers import Headers, split_list

SIP_VERSION = "SIP/2.0"
# Fields RFC 3261 section 8.1.1 makes mandatory, and that a 400 must copy (section 8.2.6.2).
CORE_FIELDS = ("Via", "From", "To", "Call-ID", "CSeq")
_SINGLE_FIELDS = ("From", "To", "Call-ID", "CSeq", "Max-Forwards", "Content-Type")


def _one(headers: Headers, name: str) -> str:
    value = headers.get(name)
    if value is None:
        raise ParseError(f"missing {name}")
    return value


def _vias(headers: Headers) -> list[Via]:
    vias = [parse_via(value) for value in headers.get_all("Via")]
    if not vias:
        raise ParseError("missing Via")
    return vias


def _top_via(headers: Headers) -> Via:
    # The top Via alone is what transactions match on: parse only the first element if possible.
    first = headers.get("Via")
    if first is None:
        raise ParseError("missing Via")
    if "," not in first:
        return parse_via(first)
    return headers.cached("via", "vias", _vias)[0]


def _contacts(headers: Headers) -> list[NameAddr]:
    return [parse_name_addr(value) for value in headers.get_all("Contact") if value != "*"]


class Message:
    """What requests and responses share: version, headers, body and the parsed core fields."""

    __slots__ = ("body", "headers", "version")

    def __init__(self, headers: Headers | None, body: bytes, version: str):
        self.headers = headers if headers is not None else Headers()
        self.body = body
        self.version = version

    # Parsed fields, computed on first use. Each raises ParseError if the field is missing or bad.

    @property
    def vias(self) -> list[Via]:
        """Every Via value, top first."""
        return self.headers.cached("via", "vias", _vias)

    @property
    def top_via(self) -> Via:
        """The first Via value."""
        return self.headers.cached("via", "top_via", _top_via)

    @property
    def from_addr(self) -> NameAddr:
        """The From value."""
        return self.headers.cached("from", "from", lambda h: parse_name_addr(_one(h, "From")))

    @property
    def to_addr(self) -> NameAddr:
        """The To value."""
        return self.headers.cached("to", "to", lambda h: parse_name_addr(_one(h, "To")))

    @property
    def call_id(self) -> str:
        """The Call-ID value."""
        return _one(self.headers, "Call-ID")

    @property
    def cseq(self) -> CSeq:
        """The CSeq value."""
        return self.headers.cached("cseq", "cseq", lambda h: parse_cseq(_one(h, "CSeq")))

    @property
    def max_forwards(self) -> int | None:
        """The Max-Forwards value (0-255), or None without the field."""
        value = self.headers.get("Max-Forwards")
        return None if value is None else parse_uint(value, 255, "Max-Forwards")

    @property
    def contacts(self) -> list[NameAddr]:
        """Every Contact value; a REGISTER's ``*`` is left out (see ``contact_is_wildcard``)."""
        return self.headers.cached("contact", "contacts", _contacts)

    @property
    def contact_is_wildcard(self) -> bool:
        """Whether Contact is ``*`` (remove all bindings, RFC 3261 section 10.2.2)."""
        return self.headers.get_all("Contact") == ["*"]

    @property
    def content_length(self) -> int:
        """The length of the body (what ``to_bytes`` writes in Content-Length)."""
        return len(self.body)

    def _start_line(self) -> str:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """The message on the wire: CRLF line ends, full field names, Content-Length from the body.

        Content-Length keeps its place among the fields if it had one, else it comes last.
        """
        lines = [self._start_line()]
        length_line = f"Content-Length: {len(self.body)}"
        for name, value in self.headers:
            if name == "Content-Length":
                if length_line:
                    lines.append(length_line)
                    length_line = ""
            else:
                lines.append(f"{name}: {value}")
        if length_line:
            lines.append(length_line)
        lines.append("\r\n")
        return "\r\n".join(lines).encode("utf-8", "surrogateescape") + self.body

    def check(self) -> None:
        """Raises ParseError if the message breaks a rule a receiver must enforce."""
        try:
            self._check()
        except ParseError as error:
            raise error.replyable(self._can_reply(), self.headers) from None
        except (ValueError, IndexError) as error:  # a bug in a field parser must not become a crash
            raise ParseError(
                f"malformed message ({type(error).__name__})", self._can_reply(), headers=self.headers
            ) from None

    def _check(self) -> None:
        if self.version.upper() != SIP_VERSION:
            raise ParseError("SIP version not supported", status=505)
        headers = self.headers
        for name in _SINGLE_FIELDS:
            if headers.count(name) > 1:
                raise ParseError(f"more than one {name}")
        _ = self.vias, self.from_addr, self.to_addr, self.cseq, self.max_forwards, self.contacts
        if not self.call_id:
            raise ParseError("empty Call-ID")
        for name in ("Route", "Record-Route"):
            for value in headers.get_all(name):
                parse_name_addr(value)
        date = headers.get("Date")
        if date is not None and not is_rfc1123_gmt(date):
            raise ParseError("bad Date (the only time zone allowed is GMT)")

    def _can_reply(self) -> bool:
        return False


class Request(Message):
    """A SIP request: method, Request-URI, headers, body."""

    __slots__ = ("method", "uri")

    def __init__(
        self,
        method: str,
        uri: URI,
        headers: Headers | None = None,
        body: bytes = b"",
        version: str = SIP_VERSION,
    ):
        super().__init__(headers, body, version)
        self.method = method
        self.uri = uri

    def _start_line(self) -> str:
        return f"{self.method} {self.uri} {self.version}"

    def _check(self) -> None:
        super()._check()
        if self.cseq.method != self.method:
            raise ParseError("CSeq method does not match the request method")
        if self.cseq.number >= 2**31:  # RFC 3261 section 8.1.1.5
            raise ParseError("CSeq number out of range")
        if isinstance(self.uri, SipURI) and self.uri.headers:
            raise ParseError("Request-URI with headers")

    def _can_reply(self) -> bool:
        return can_reply_to(self.headers)

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri}>"


class Response(Message):
    """A SIP response: status code, reason phrase, headers, body."""

    __slots__ = ("reason", "status")

    def __init__(
        self,
        status: int,
        reason: str = "",
        headers: Headers | None = None,
        body: bytes = b"",
        version: str = SIP_VERSION,
    ):
        super().__init__(headers, body, version)
        self.status = status
        self.reason = reason

    def _start_line(self) -> str:
        return f"{self.version} {self.status} {self.reason}"

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


def can_reply_to(headers: Headers) -> bool:
    """Whether a request with these fields can be answered: a usable top Via, and From, To,
    Call-ID and a CSeq of the form ``digits method`` to copy into the response."""
    if any(not headers.get(name) for name in CORE_FIELDS):
        return False
    cseq = (headers.get("CSeq") or "").split()
    if len(cseq) != 2 or not (cseq[0].isascii() and cseq[0].isdigit()):
        return False
    # Only the sent-by matters for sending the answer: bad Via parameters (RFC 4475 3.1.2.1)
    # must not stop the 400 that reports them.
    first = split_list(headers.get("Via") or "")[:1]
    try:
        return bool(first) and bool(parse_via(first[0].partition(";")[0]))
    except (ParseError, ValueError, IndexError):
        return False
