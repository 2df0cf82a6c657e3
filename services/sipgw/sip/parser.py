"""Bytes to SIP messages: one datagram (``parse``) or a byte stream (``StreamFramer``).

RFC 3261 section 7 (message format, folding), 7.5 (CRLFs before the start line are ignored),
18.3 (framing: Content-Length is mandatory on streams; over UDP a body longer than declared is
truncated, a shorter one is an error, and a missing one means "to the end of the datagram").
Only the start line, the field names and Content-Length are parsed here; field values are parsed
when first read. Whatever the input, the only exception that leaves is ``ParseError``.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.sipgw.sip.errors import ParseError
from services.sipgw.sip.fields import is_token, parse_uint, parse_uri
from services.sipgw.sip.headers import FIELD_NAMES, Headers
from services.sipgw.sip.message import CORE_FIELDS, Request, Response, can_reply_to

MAX_MESSAGE_BYTES = 65536
MAX_HEADER_FIELDS = 256
_MAX_BODY = MAX_MESSAGE_BYTES
_CRLF = b"\r\n"
_HEADER_END = b"\r\n\r\n"
_WSP = " \t"
_CORE = tuple((name.lower(), name) for name in CORE_FIELDS)


@dataclass(slots=True)
class _Head:
    start_line: str
    headers: Headers
    length_values: list[str]  # every Content-Length value, checked by content_length()

    def content_length(self) -> int | None:
        """The declared body length; None without the field."""
        return _content_length(self.length_values)


def _parse_head(raw: bytes) -> _Head:
    """The start line and fields of a header block (without its final CRLF CRLF)."""
    # surrogateescape keeps any byte: a message is UTF-8 by RFC, but bytes must round-trip anyway.
    text = raw.decode("utf-8", "surrogateescape")
    crlfs = text.count("\r\n")
    if text.count("\r") != crlfs or text.count("\n") != crlfs:
        raise ParseError("bare CR or LF in the header block")
    lines = text.split("\r\n")
    start_line = lines[0]
    field_lines = lines[1:]
    if "\r\n " in text or "\r\n\t" in text:
        field_lines = _unfold(field_lines)
    if len(field_lines) > MAX_HEADER_FIELDS:
        raise ParseError("too many header fields")
    fields: list[tuple[str, str, str]] = []
    lengths: list[str] = []
    for line in field_lines:
        name, colon, value = line.partition(":")
        if not colon:
            raise ParseError("bad header field line")
        name = name.rstrip(" \t")
        known = FIELD_NAMES.get(name.lower())
        if known is not None:
            canonical, key = known
        elif is_token(name):
            canonical, key = name, name.lower()
        else:
            raise ParseError("bad header field name")
        value = value.strip(" \t")
        if key == "content-length":
            lengths.append(value)
        fields.append((key, canonical, value))
    return _Head(start_line, Headers.adopt(fields), lengths)


def _unfold(lines: list[str]) -> list[str]:
    """Joins continuation lines (starting with SP or HTAB) to the line before, as one SP."""
    fields: list[list[str]] = []
    for line in lines:
        if line[:1] in (" ", "\t"):
            if not fields:
                raise ParseError("continuation line before the first header field")
            fields[-1].append(line.strip(_WSP))
        else:
            fields.append([line.rstrip(_WSP)])
    # Joined once per field: appending to a string line by line would be quadratic.
    return [" ".join(parts) for parts in fields]


def _content_length(values: list[str]) -> int | None:
    if not values:
        return None
    if any(value != values[0] for value in values[1:]):  # RFC 4475 3.3.9 "mcl01"
        raise ParseError("conflicting Content-Length values")
    return parse_uint(values[0], _MAX_BODY, "Content-Length")


def _build(head: _Head, body: bytes) -> Request | Response:
    line = head.start_line
    headers = head.headers
    if line.startswith("SIP/"):
        version, _, rest = line.partition(" ")
        code, _, reason = rest.partition(" ")
        # Exactly three digits: a status like 4294967301 must not wrap (RFC 4475 3.1.2.19).
        if not _is_version(version) or len(code) != 3 or not code.isdigit() or not "100" <= code <= "699":
            raise ParseError("bad status line")
        message: Request | Response = Response(int(code), reason, headers, body, version)
    else:
        parts = line.split(" ")
        if len(parts) != 3 or not is_token(parts[0]) or not _is_version(parts[2]):
            raise ParseError("bad request line")
        message = Request(parts[0], parse_uri(parts[1]), headers, body, parts[2])
    present = headers.keys()
    for key, name in _CORE:
        if key not in present:
            raise ParseError(f"missing {name}")
    return message


def _is_version(text: str) -> bool:
    major, dot, minor = text[4:].partition(".")
    return text[:4].upper() == "SIP/" and bool(dot) and major.isascii() and major.isdigit() and minor.isdigit()


def _fail(error: ParseError, head: _Head | None) -> ParseError:
    """The error, with can_reply decided: only a request-like message with readable core fields
    can be answered (a 400 copies Via, From, To, Call-ID and CSeq)."""
    if head is None or head.start_line.startswith("SIP/"):
        return error.replyable(False)
    method = head.start_line.split(" ", 1)[0]
    return error.replyable(is_token(method) and can_reply_to(head.headers), head.headers)


def parse(data: bytes) -> Request | Response:
    """One message from one datagram (UDP): extra bytes after the declared body are dropped."""
    head: _Head | None = None
    try:
        if len(data) > MAX_MESSAGE_BYTES:
            raise ParseError("message too large")
        start = 0
        while data.startswith(_CRLF, start):
            start += 2
        end = data.find(_HEADER_END, start)
        if end < 0:
            raise ParseError("no end of header block" if start < len(data) else "empty message")
        head = _parse_head(data[start:end])
        body = data[end + 4 :]
        length = head.content_length()
        if length is not None:
            if len(body) < length:
                raise ParseError("body shorter than Content-Length")
            body = body[:length]
        return _build(head, body)
    except ParseError as error:
        raise _fail(error, head) from None
    except (ValueError, IndexError, KeyError, UnicodeError) as error:
        # A bug must cost one dropped datagram, never the transport's receive loop.
        raise _fail(ParseError(f"malformed message ({type(error).__name__})"), head) from None


class StreamFramer:
    """Cuts a TCP/TLS byte stream into messages; after a ParseError the stream is lost.

    RFC 3261 18.3: on a stream, Content-Length is mandatory and is the only way to find where a
    body ends, so a framing error cannot be recovered from: the caller closes the connection.
    """

    def __init__(self, max_message_bytes: int = MAX_MESSAGE_BYTES):
        self.max_message_bytes = max_message_bytes
        self._buffer = bytearray()
        self._scanned = 0  # the header end is not before this offset
        self._pending: tuple[_Head, int, int] | None = None  # head waiting for its body, body start, end
        self._failed: ParseError | None = None

    def feed(self, data: bytes) -> list[Request | Response]:
        """Every message completed by ``data``, in order."""
        if self._failed is not None:
            raise self._failed
        self._buffer += data
        messages: list[Request | Response] = []
        try:
            while (message := self._next()) is not None:
                messages.append(message)
        except ParseError as error:
            self._failed = error.replyable(False)
            raise self._failed from None
        except (ValueError, IndexError, KeyError, UnicodeError) as error:
            self._failed = ParseError(f"malformed message ({type(error).__name__})")
            raise self._failed from None
        return messages

    def _next(self) -> Request | Response | None:
        buffer = self._buffer
        if self._pending is None:
            # CRLFs between messages are keepalives (RFC 5626 section 3.5.1) or padding.
            skip = 0
            while skip < len(buffer) and buffer[skip] in _CRLF:
                skip += 1
            if skip:
                del buffer[:skip]
                self._scanned = 0
            end = buffer.find(_HEADER_END, self._scanned)
            if end < 0:
                if len(buffer) > self.max_message_bytes:
                    raise ParseError("header block too large")
                self._scanned = max(0, len(buffer) - 3)
                return None
            if end > self.max_message_bytes:
                raise ParseError("header block too large")
            head = _parse_head(bytes(buffer[:end]))
            length = head.content_length()
            if length is None:
                raise ParseError("missing Content-Length on a stream")
            total = end + 4 + length
            if total > self.max_message_bytes:
                raise ParseError("message too large")
            self._pending = (head, end + 4, total)
        head, body_start, total = self._pending
        if len(buffer) < total:
            return None
        body = bytes(buffer[body_start:total])
        del buffer[:total]
        self._pending = None
        self._scanned = 0
        return _build(head, body)
