"""Structured header values: SIP URIs, name-addr / addr-spec, Via, CSeq (RFC 3261 section 25.1).

Each ``parse_*`` takes one unfolded value and returns a small immutable NamedTuple (the cheapest
object Python builds, and these are built for every message) or raises ``ParseError``. The
parsers scan with ``str`` methods and single-class regular expressions (``[...]+`` matched
whole), so no input can make them backtrack. Also RFC 3581 (``rport`` without a value) and
RFC 5118 (IPv6 references in hosts and ``received``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import NamedTuple, TypeVar

from services.sipgw.sip.errors import ParseError

T = TypeVar("T")

# Parameter name as written -> value (None: the parameter has no value). Parsed values are
# shared through the headers' cache, so they are read-only mappings.
Params = Mapping[str, str | None]
NO_PARAMS: Params = MappingProxyType({})

_TOKEN = re.compile(r"[A-Za-z0-9.!%*_+`'~-]+")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_HOSTNAME = re.compile(r"[A-Za-z0-9_.-]+")
_IPV6 = re.compile(r"[0-9A-Fa-f:.]+")
_USER = re.compile(r"[A-Za-z0-9_.!~*'()&=+$,;?/%-]+")
_PASSWORD = re.compile(r"[A-Za-z0-9_.!~*'()&=+$,%-]*")
_URI_PARAM = re.compile(r"[A-Za-z0-9_.!~*'()\[\]/:&+$%-]+")
_URI_HEADERS = re.compile(r"[A-Za-z0-9_.!~*'()\[\]/?:+$%=&-]*")
_PARAM_VALUE = re.compile(r"[A-Za-z0-9.!%*_+`'~:\[\]-]+")  # token / host (IPv6 references too)
_OPAQUE = re.compile(r"[^\s<>\"]+")
_DATE = re.compile(r"[A-Z][a-z]{2}, [0-9]{2} [A-Z][a-z]{2} [0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2} GMT")
MAGIC_COOKIE = "z9hG4bK"


def is_token(text: str) -> bool:
    """Whether ``text`` is an RFC 3261 token (methods, parameter and header names)."""
    return _TOKEN.fullmatch(text) is not None


def parse_uint(text: str, limit: int, what: str) -> int:
    """A decimal number of ASCII digits (leading zeros allowed) no larger than ``limit``."""
    text = text.strip()
    # isdigit() alone accepts other scripts' digits and superscripts, which int() may refuse.
    if not (text.isascii() and text.isdigit()):
        raise ParseError(f"bad {what}")
    # A bound on the length first, so that int() never converts a huge digit string.
    if len(text.lstrip("0")) > len(str(limit)) or int(text) > limit:
        raise ParseError(f"{what} out of range")
    return int(text)


def _check_host(host: str, what: str) -> None:
    if host.startswith("["):
        if not (host.endswith("]") and _IPV6.fullmatch(host[1:-1])):
            raise ParseError(f"bad IPv6 reference in {what}")
    elif not _HOSTNAME.fullmatch(host):
        raise ParseError(f"bad host in {what}")


def split_hostport(text: str, what: str) -> tuple[str, int | None]:
    """``host[:port]`` with the host as written, IPv6 references kept in brackets (RFC 5118)."""
    if text.startswith("["):
        end = text.find("]")
        host, rest = text[: end + 1], text[end + 1 :]
        if end < 0 or (rest and not rest.startswith(":")):
            raise ParseError(f"bad IPv6 reference in {what}")
        port_text = rest[1:] if rest else None
    else:
        host, colon, port_text_raw = text.partition(":")
        port_text = port_text_raw if colon else None
    _check_host(host, what)
    port = parse_uint(port_text, 65535, f"port in {what}") if port_text is not None else None
    return host, port


class SipURI(NamedTuple):
    """A sip: or sips: URI (RFC 3261 section 19.1); user and password stay %-escaped as written."""

    host: str
    user: str | None = None
    password: str | None = None
    port: int | None = None
    params: Params = NO_PARAMS
    headers: str = ""  # the raw hname=hvalue&... part after "?"
    scheme: str = "sip"

    def param(self, name: str) -> str | None:
        """A URI parameter's value, compared case-insensitively; None if absent or valueless."""
        return lookup(self.params, name)

    def __str__(self) -> str:
        text = self.scheme + ":"
        if self.user is not None:
            text += self.user if self.password is None else f"{self.user}:{self.password}"
            text += "@"
        text += self.host if self.port is None else f"{self.host}:{self.port}"
        text += format_params(self.params)
        return f"{text}?{self.headers}" if self.headers else text


class AbsoluteURI(NamedTuple):
    """Any other URI (tel:, http:, urn:...), kept opaque: RFC 3261 only routes SIP URIs."""

    scheme: str
    opaque: str

    def __str__(self) -> str:
        return f"{self.scheme}:{self.opaque}"


URI = SipURI | AbsoluteURI


def _memo(parse: Callable[[str], T]) -> Callable[[str], T]:
    """``parse`` remembering its last few thousand short inputs: the same From, To, Via and URIs
    come back in every message of a transaction and a dialog. Long values are parsed every time
    (a sender must not fill the memory with them); errors are never remembered."""
    remembered = functools.lru_cache(maxsize=4096)(parse)

    @functools.wraps(parse)
    def parse_short(text: str) -> T:
        return remembered(text) if len(text) <= 256 else parse(text)

    return parse_short


@_memo
def parse_uri(text: str) -> URI:
    """A Request-URI or the URI of a name-addr; any whitespace in it is an error (RFC 4475 3.1.2.8, 3.1.2.14).

    Remembered: the same phones' and servers' URIs come back in message after message. A parsed
    URI is shared, so its parameters are read-only (``Params`` is a Mapping; copy to change)."""
    scheme, colon, rest = text.partition(":")
    if not colon or not _SCHEME.fullmatch(scheme):
        raise ParseError("bad URI scheme")
    lower = scheme.lower()
    if lower not in ("sip", "sips"):
        if not _OPAQUE.fullmatch(rest):
            raise ParseError("bad URI")
        return AbsoluteURI(scheme, rest)
    user = password = None
    at = rest.find("@")
    if at >= 0:
        # Neither user nor password may hold "@", so the first one ends the userinfo.
        userinfo, rest = rest[:at], rest[at + 1 :]
        user, colon, password_text = userinfo.partition(":")
        password = password_text if colon else None
        if not _USER.fullmatch(user) or (password is not None and not _PASSWORD.fullmatch(password)):
            raise ParseError("bad user part in URI")
    rest, question, headers = rest.partition("?")
    if question and not _URI_HEADERS.fullmatch(headers):
        raise ParseError("bad headers in URI")
    hostport, *param_texts = rest.split(";")
    host, port = split_hostport(hostport, "URI")
    params: dict[str, str | None] = {}
    for item in param_texts:
        name, equals, value = item.partition("=")
        if not _URI_PARAM.fullmatch(name) or (equals and not _URI_PARAM.fullmatch(value)):
            raise ParseError("bad URI parameter")
        params[name] = value if equals else None
    return SipURI(host, user, password, port, params, headers, lower)


def lookup(params: Params, name: str) -> str | None:
    """A parameter's value by case-insensitive name; None if absent or valueless."""
    if name in params:
        return params[name]
    lower = name.lower()
    for key, value in params.items():
        if key.lower() == lower:
            return value
    return None


def has_param(params: Params, name: str) -> bool:
    """Whether the parameter is present (with or without a value)."""
    lower = name.lower()
    return name in params or any(key.lower() == lower for key in params)


def format_params(params: Params) -> str:
    """``;name=value;flag`` as written on the wire."""
    return "".join(f";{name}" if value is None else f";{name}={value}" for name, value in params.items())


def _end_of_quoted(text: str, start: int) -> int:
    """Index of the quote closing the quoted string that opens at ``start``."""
    # Each search starts where the last one stopped, so a value full of backslashes stays linear.
    pos = start + 1
    quote = text.find('"', pos)
    while quote >= 0:
        backslash = text.find("\\", pos, quote)
        if backslash < 0:
            return quote
        pos = backslash + 2  # a quoted-pair: the next character is literal, even a quote
        if pos > quote:
            quote = text.find('"', pos)
    raise ParseError("unterminated quoted string")


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    items: list[str] = []
    start = pos = 0
    while pos < len(text):
        char = text[pos]
        if char == '"':
            pos = _end_of_quoted(text, pos)
        elif char == separator:
            items.append(text[start:pos])
            start = pos + 1
        pos += 1
    items.append(text[start:])
    return items


def parse_params(text: str) -> Params:
    """``;name[=value]...`` with LWS around ";" and "="; quoted values are kept with their quotes."""
    text = text.strip()
    if not text:
        return NO_PARAMS
    if text[0] != ";":
        raise ParseError("expected ';' before a parameter")
    items = text[1:].split(";") if '"' not in text else _split_outside_quotes(text[1:], ";")
    params: dict[str, str | None] = {}
    for item in items:
        name, equals, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not is_token(name):
            raise ParseError("bad parameter name")
        if equals:
            if value.startswith('"'):
                if _end_of_quoted(value, 0) != len(value) - 1:
                    raise ParseError("bad quoted parameter value")
            elif not _PARAM_VALUE.fullmatch(value):
                raise ParseError("bad parameter value")
        params[name] = value if equals else None
    return params


class NameAddr(NamedTuple):
    """A From/To/Contact/Route value: optional display name, URI, header parameters (tag, q...)."""

    uri: URI
    display_name: str | None = None  # unquoted, quoted-pairs resolved
    params: Params = NO_PARAMS

    @property
    def tag(self) -> str | None:
        """The dialog tag (RFC 3261 section 19.3), if any."""
        return lookup(self.params, "tag")

    def param(self, name: str) -> str | None:
        """A header parameter's value; None if absent or valueless."""
        return lookup(self.params, name)

    def __str__(self) -> str:
        text = f"<{self.uri}>"
        if self.display_name:
            escaped = self.display_name.replace("\\", "\\\\").replace('"', '\\"')
            text = f'"{escaped}" {text}'
        return text + format_params(self.params)


def _unquote(text: str) -> str:
    if "\\" not in text:
        return text
    out: list[str] = []
    pos = 0
    while pos < len(text):
        if text[pos] == "\\" and pos + 1 < len(text):
            pos += 1
        out.append(text[pos])
        pos += 1
    return "".join(out)


@_memo
def parse_name_addr(text: str) -> NameAddr:
    """``"Display" <uri>;params``, ``token words <uri>;params`` or ``uri;params`` (addr-spec)."""
    text = text.strip()
    display: str | None = None
    if text.startswith('"'):
        end = _end_of_quoted(text, 0)
        display = _unquote(text[1:end])
        rest = text[end + 1 :].lstrip()
        if not rest.startswith("<"):
            raise ParseError("expected <URI> after a display name")
    else:
        angle = text.find("<")
        semicolon = text.find(";")
        if angle >= 0 and (semicolon < 0 or angle < semicolon):
            words = text[:angle].split()
            # An unquoted display name is tokens only (RFC 4475 3.1.2.15 "baddn").
            if not all(is_token(word) for word in words):
                raise ParseError("unquoted display name with non-token characters")
            display = " ".join(words) or None
            rest = text[angle:]
        else:
            # addr-spec: the URI ends at the first ";" and may not hold "?" or "," (RFC 3261 20).
            uri_text, separator, param_text = text.partition(";")
            uri_text = uri_text.rstrip()
            if "?" in uri_text or "," in uri_text:
                raise ParseError("a URI with headers must be enclosed in <>")
            return NameAddr(parse_uri(uri_text), None, parse_params(separator + param_text))
    close = rest.find(">")
    if close < 0:
        raise ParseError("unterminated <URI>")
    uri_text = rest[1:close]
    if " " in uri_text or "\t" in uri_text:
        raise ParseError("whitespace inside <URI>")
    return NameAddr(parse_uri(uri_text), display, parse_params(rest[close + 1 :]))


class Via(NamedTuple):
    """One Via value (RFC 3261 section 20.42, RFC 3581 rport, RFC 5118 IPv6)."""

    transport: str
    host: str
    port: int | None = None
    params: Params = NO_PARAMS
    protocol: str = "SIP/2.0"

    @property
    def branch(self) -> str | None:
        """The transaction id; RFC 3261 ids start with ``MAGIC_COOKIE``."""
        return lookup(self.params, "branch")

    @property
    def received(self) -> str | None:
        """The source address a server saw the request come from."""
        return lookup(self.params, "received")

    @property
    def has_rport(self) -> bool:
        """Whether rport is present, with or without a value (RFC 3581)."""
        return has_param(self.params, "rport")

    @property
    def rport(self) -> int | None:
        """The rport a server filled in; None if absent or still empty."""
        value = lookup(self.params, "rport")
        return parse_uint(value, 65535, "rport") if value else None

    def __str__(self) -> str:
        hostport = self.host if self.port is None else f"{self.host}:{self.port}"
        return f"{self.protocol}/{self.transport} {hostport}{format_params(self.params)}"


@_memo
def parse_via(text: str) -> Via:
    """``SIP / 2.0 / UDP host[:port];params`` with LWS allowed around the slashes."""
    sent, semicolon, param_text = text.partition(";")
    parts = sent.split("/", 2)
    if len(parts) != 3:
        raise ParseError("bad Via sent-protocol")
    name, version = parts[0].strip(), parts[1].strip()
    transport_and_host = parts[2].split(None, 1)
    if len(transport_and_host) != 2 or not all(is_token(t) for t in (name, version, transport_and_host[0])):
        raise ParseError("bad Via sent-protocol")
    transport, sent_by = transport_and_host
    host, port = split_hostport("".join(sent_by.split()), "Via")
    params = parse_params(semicolon + param_text) if semicolon else NO_PARAMS
    return Via(transport.upper(), host, port, params, f"{name}/{version}")


class CSeq(NamedTuple):
    """The CSeq value: sequence number and method (RFC 3261 section 20.16)."""

    number: int
    method: str

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


def parse_cseq(text: str) -> CSeq:
    """``number method``; the number is a 32-bit unsigned integer."""
    parts = text.split()
    if len(parts) != 2 or not is_token(parts[1]):
        raise ParseError("bad CSeq")
    return CSeq(parse_uint(parts[0], 2**32 - 1, "CSeq number"), parts[1])


def is_rfc1123_gmt(text: str) -> bool:
    """Whether a Date value is ``Sat, 13 Nov 2010 23:29:00 GMT``: the only zone allowed is GMT."""
    return _DATE.fullmatch(text.strip()) is not None
