"""Unit tests for the SIP message layer (services.sipgw.sip): fields, headers, parse, framing,
serialization. The RFC 4475 messages are in test_rfc4475.py, property tests in test_fuzz.py."""

from __future__ import annotations

import pytest

from services.sipgw.sip import (
    MAX_HEADER_FIELDS,
    MAX_MESSAGE_BYTES,
    Headers,
    ParseError,
    Request,
    Response,
    SipURI,
    StreamFramer,
    canonical_name,
    parse,
    parse_cseq,
    parse_name_addr,
    parse_uri,
    parse_via,
    split_list,
)

INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@pc33.atlanta.example.com>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 4\r\n"
    b"\r\n"
    b"v=0\n"
)

OK = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds;received=192.0.2.1\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>;tag=a6c85cf\r\n"
    b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)


# --- URIs (RFC 3261 19.1, RFC 5118) ---


def test_sip_uri_with_everything() -> None:
    uri = parse_uri("sips:alice:secret@[2001:db8::10]:5061;transport=tcp;lr?Subject=hi&Priority=urgent")
    assert uri == SipURI(
        "[2001:db8::10]",
        "alice",
        "secret",
        5061,
        {"transport": "tcp", "lr": None},
        "Subject=hi&Priority=urgent",
        "sips",
    )
    assert str(uri) == "sips:alice:secret@[2001:db8::10]:5061;transport=tcp;lr?Subject=hi&Priority=urgent"
    assert uri.param("TRANSPORT") == "tcp"


@pytest.mark.parametrize(
    "text",
    [
        "sip:",
        "sip:@example.com",
        "sip:alice@",
        "sip:alice@exa mple.com",
        "sip:alice@[2001:db8::1",
        "sip:alice@[2001:db8::1]x",
        "sip:alice@example.com:99999",
        "sip:alice@example.com:port",
        "sip:alice@example.com;;lr",
        "<sip:alice@example.com>",
        "1sip:alice@example.com",
        "sip:al<ice@example.com",
    ],
)
def test_bad_uris(text: str) -> None:
    with pytest.raises(ParseError):
        parse_uri(text)


# --- name-addr / addr-spec ---


def test_name_addr_forms() -> None:
    quoted = parse_name_addr('"Alice \\"A\\" Liddell" <sip:alice@example.com>;tag=88sja8x;expires=60')
    assert quoted.display_name == 'Alice "A" Liddell'
    assert quoted.tag == "88sja8x"
    assert quoted.param("Expires") == "60"
    tokens = parse_name_addr("Alice  Liddell <sip:alice@example.com>")
    assert tokens.display_name == "Alice Liddell"
    spec = parse_name_addr("sip:alice@example.com;tag=1;x")
    assert (spec.display_name, spec.params, str(spec.uri)) == (None, {"tag": "1", "x": None}, "sip:alice@example.com")
    assert str(quoted) == '"Alice \\"A\\" Liddell" <sip:alice@example.com>;tag=88sja8x;expires=60'


def test_quoted_parameter_value_may_hold_separators() -> None:
    addr = parse_name_addr('<sip:a@example.com>;+sip.instance="<urn:uuid:1;2,3>";tag=x')
    assert addr.params == {"+sip.instance": '"<urn:uuid:1;2,3>"', "tag": "x"}


@pytest.mark.parametrize(
    "text",
    ['"unterminated <sip:a@example.com>', "<sip:a@example.com", "A, B <sip:a@example.com>", "<sip:a@example.com>;", ""],
)
def test_bad_name_addrs(text: str) -> None:
    with pytest.raises(ParseError):
        parse_name_addr(text)


# --- Via (RFC 3261 20.42, RFC 3581, RFC 5118) ---


def test_via_ipv6_rport_received() -> None:
    via = parse_via("SIP/2.0/UDP [2001:db8::9:1]:5070;branch=z9hG4bKas3-111;rport;received=2001:db8::9:255")
    assert (via.transport, via.host, via.port, via.branch) == ("UDP", "[2001:db8::9:1]", 5070, "z9hG4bKas3-111")
    assert via.has_rport and via.rport is None
    assert via.received == "2001:db8::9:255"
    filled = parse_via("SIP/2.0/TCP client.example.com;rport=5061;received=[2001:db8::9:255]")
    assert filled.rport == 5061
    assert filled.received == "[2001:db8::9:255]"
    assert not parse_via("SIP/2.0/TLS example.com").has_rport
    assert str(via) == "SIP/2.0/UDP [2001:db8::9:1]:5070;branch=z9hG4bKas3-111;rport;received=2001:db8::9:255"


@pytest.mark.parametrize("text", ["SIP/2.0 host", "SIP/2.0/UDP", "SIP/2.0/UDP host;;", "SIP/2.0/UDP host:70000"])
def test_bad_vias(text: str) -> None:
    with pytest.raises(ParseError):
        parse_via(text)


def test_cseq() -> None:
    assert parse_cseq(" 0042   REGISTER ").number == 42
    for bad in ("1", "x INVITE", "4294967296 INVITE", "1 INVITE extra", "\u0661 INVITE"):
        with pytest.raises(ParseError):
            parse_cseq(bad)


# --- headers ---


def test_compact_forms_map_to_full_names() -> None:
    expected = {"i": "Call-ID", "m": "Contact", "e": "Content-Encoding", "l": "Content-Length", "c": "Content-Type"}
    expected |= {"f": "From", "s": "Subject", "k": "Supported", "t": "To", "v": "Via", "o": "Event"}
    expected |= {"u": "Allow-Events", "r": "Refer-To", "b": "Referred-By", "a": "Accept-Contact"}
    expected |= {"x": "Session-Expires", "y": "Identity"}
    for compact, full in expected.items():
        assert canonical_name(compact) == full
        assert canonical_name(compact.upper()) == full
    assert canonical_name("call-id") == "Call-ID"
    assert canonical_name("X-Custom") == "X-Custom"


def test_list_splitting_respects_quotes_and_angles() -> None:
    assert split_list('"Doe, John" <sip:j@example.com;a=1,2>, <sip:k@example.com>') == [
        '"Doe, John" <sip:j@example.com;a=1,2>',
        "<sip:k@example.com>",
    ]
    assert split_list('"a \\", b" <sip:x@y>,c') == ['"a \\", b" <sip:x@y>', "c"]
    headers = Headers(
        [
            ("WWW-Authenticate", 'Digest realm="atlanta.com", nonce="84a4cc6f", qop="auth,auth-int"'),
            ("Date", "Sat, 13 Nov 2010 23:29:00 GMT"),
            ("Contact", "<sip:a@b>, <sip:c@d>"),
            ("m", "<sip:e@f>"),
        ]
    )
    assert len(headers.get_all("www-authenticate")) == 1
    assert headers.get_all("Date") == ["Sat, 13 Nov 2010 23:29:00 GMT"]
    assert headers.get_all("CONTACT") == ["<sip:a@b>", "<sip:c@d>", "<sip:e@f>"]
    assert headers.get_lines("Contact") == ["<sip:a@b>, <sip:c@d>", "<sip:e@f>"]


def test_headers_editing_keeps_order_and_drops_the_cache() -> None:
    headers = Headers([("Via", "SIP/2.0/UDP a"), ("To", "sip:x@y"), ("v", "SIP/2.0/UDP b")])
    request = Request("OPTIONS", parse_uri("sip:x@y"), headers)
    assert [v.host for v in request.vias] == ["a", "b"]
    headers.set("Via", "SIP/2.0/TCP c")
    assert [v.host for v in request.vias] == ["c"]
    assert list(headers) == [("Via", "SIP/2.0/TCP c"), ("To", "sip:x@y")]
    headers.remove("t")
    assert "To" not in headers
    with pytest.raises(ValueError, match="CR or LF"):
        headers.add("Subject", "a\r\nInjected: yes")


# --- parse ---


def test_parse_request_and_lazy_fields() -> None:
    request = parse(INVITE)
    assert isinstance(request, Request)
    assert (request.method, str(request.uri), request.version) == ("INVITE", "sip:bob@biloxi.example.com", "SIP/2.0")
    assert request.top_via.branch == "z9hG4bK776asdhds"
    assert request.top_via is request.top_via  # parsed once
    assert request.from_addr.tag == "1928301774"
    assert request.to_addr.tag is None
    assert (request.cseq.number, request.cseq.method, request.max_forwards) == (314159, "INVITE", 70)
    assert request.body == b"v=0\n"
    request.check()


def test_parse_response() -> None:
    response = parse(OK)
    assert isinstance(response, Response)
    assert (response.status, response.reason) == (200, "OK")
    assert response.top_via.received == "192.0.2.1"
    response.check()


def test_keepalive_crlfs_before_the_start_line_are_ignored() -> None:
    assert isinstance(parse(b"\r\n\r\n" + INVITE), Request)
    with pytest.raises(ParseError, match="empty"):
        parse(b"\r\n\r\n")


def test_udp_body_longer_than_declared_is_truncated_shorter_is_an_error() -> None:
    assert parse(INVITE + b"garbage").body == b"v=0\n"
    with pytest.raises(ParseError) as caught:
        parse(INVITE[:-2])
    assert caught.value.can_reply


def test_missing_content_length_over_udp_means_the_rest_of_the_datagram() -> None:
    data = INVITE.replace(b"Content-Length: 4\r\n", b"")
    assert parse(data + b"more").body == b"v=0\nmore"


def test_folded_header_lines_are_unfolded() -> None:
    data = INVITE.replace(b"Subject", b"").replace(b"Max-Forwards: 70\r\n", b"Subject: one\r\n  two\r\n\tthree\r\n")
    assert parse(data).headers.get("Subject") == "one two three"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"INVITE sip:bob@example.com SIP/2.0\r\n",
        INVITE.replace(b"\r\n", b"\n"),
        INVITE.replace(b"Max-Forwards: 70\r\n", b"Max-Forwards 70\r\n"),
        INVITE.replace(b"Max-Forwards: 70\r\n", b"Max Forwards: 70\r\n"),
        INVITE.replace(b"Max-Forwards: 70\r\n", b"Bare: a\rb\r\n"),
        INVITE.replace(b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n", b"INVITE sip:bob@biloxi.example.com\r\n"),
        INVITE.replace(b"Content-Length: 4", b"Content-Length: 99999999999999999999"),
        b" INVITE sip:a@b SIP/2.0\r\n\r\n",
        OK.replace(b"200 OK", b"99 Low"),
        OK.replace(b"200 OK", b"2x0 OK"),
        OK.replace(b"Call-ID", b"X-Call-ID"),
    ],
)
def test_malformed_messages(data: bytes) -> None:
    with pytest.raises(ParseError):
        parse(data)


def test_size_limits() -> None:
    many = INVITE.replace(b"Max-Forwards: 70\r\n", b"X-A: 1\r\n" * MAX_HEADER_FIELDS)
    with pytest.raises(ParseError, match="too many"):
        parse(many)
    big = INVITE.replace(b"Content-Length: 4", b"Content-Length: %d" % MAX_MESSAGE_BYTES) + b"x" * MAX_MESSAGE_BYTES
    with pytest.raises(ParseError, match="too large"):
        parse(big)


def test_can_reply_needs_a_request_with_readable_core_fields() -> None:
    broken_uri = INVITE.replace(b"sip:bob@biloxi.example.com SIP", b"<bad> SIP", 1)
    with pytest.raises(ParseError) as caught:
        parse(broken_uri)
    assert caught.value.can_reply
    without_via = broken_uri.replace(b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n", b"")
    with pytest.raises(ParseError) as caught:
        parse(without_via)
    assert not caught.value.can_reply
    with pytest.raises(ParseError) as caught:
        parse(OK.replace(b"Content-Length: 0", b"Content-Length: 5"))
    assert not caught.value.can_reply  # responses are never answered


# --- serializer ---


def test_to_bytes_is_canonical() -> None:
    data = (
        b"OPTIONS sip:a@example.com SIP/2.0\r\n"
        b"v: SIP/2.0/UDP h;branch=z9hG4bK1\r\nf: <sip:b@example.com>;tag=1\r\nt: sip:a@example.com\r\n"
        b"i: id\r\nCSeq: 1 OPTIONS\r\nl: 2\r\nX-Tail: t\r\n\r\nhi"
    )
    assert parse(data).to_bytes() == (
        b"OPTIONS sip:a@example.com SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:b@example.com>;tag=1\r\nTo: sip:a@example.com\r\n"
        b"Call-ID: id\r\nCSeq: 1 OPTIONS\r\nContent-Length: 2\r\nX-Tail: t\r\n\r\nhi"
    )


def test_to_bytes_sets_content_length_from_the_body() -> None:
    headers = Headers([("Via", "SIP/2.0/UDP h;branch=z9hG4bK1"), ("Content-Length", "999")])
    response = Response(486, "Busy Here", headers, b"body")
    assert (
        response.to_bytes()
        == b"SIP/2.0 486 Busy Here\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nContent-Length: 4\r\n\r\nbody"
    )
    request = Request("BYE", parse_uri("sip:a@b"))
    assert request.to_bytes() == b"BYE sip:a@b SIP/2.0\r\nContent-Length: 0\r\n\r\n"


# --- stream framing (RFC 3261 18.3) ---


def test_framer_splits_concatenated_messages_and_skips_keepalives() -> None:
    framer = StreamFramer()
    stream = b"\r\n\r\n" + INVITE + OK + b"\r\n" + INVITE
    messages = framer.feed(stream[:10]) + framer.feed(stream[10:200]) + framer.feed(stream[200:])
    assert [type(m) for m in messages] == [Request, Response, Request]
    assert [m.to_bytes() for m in messages] == [
        parse(INVITE).to_bytes(),
        parse(OK).to_bytes(),
        parse(INVITE).to_bytes(),
    ]
    assert framer.feed(b"") == []


def test_framer_waits_for_the_body() -> None:
    framer = StreamFramer()
    assert framer.feed(INVITE[:-1]) == []
    [message] = framer.feed(INVITE[-1:])
    assert message.body == b"v=0\n"


@pytest.mark.parametrize(
    "stream",
    [
        INVITE.replace(b"Content-Length: 4\r\n", b""),
        b"X" * (MAX_MESSAGE_BYTES + 10),
        INVITE.replace(b"Content-Length: 4", b"Content-Length: %d" % MAX_MESSAGE_BYTES),
        b"NOT SIP AT ALL\r\n\r\n",
    ],
)
def test_framer_errors_lose_the_stream(stream: bytes) -> None:
    framer = StreamFramer()
    with pytest.raises(ParseError):
        framer.feed(stream)
    with pytest.raises(ParseError):
        framer.feed(OK)


def test_pathological_values_parse_in_linear_time() -> None:
    # Inputs that a quadratic scan would take minutes on; the per-test timeout guards the rest.
    head = OK.split(b"Content-Length")[0]
    folded = head + b"X-Folded: a" + b"\r\n x" * 15000 + b"\r\nContent-Length: 0\r\n\r\n"
    assert len(parse(folded).headers.get("X-Folded") or "") == 30001
    escapes = head + b'Contact: "' + b"\\a" * 25000 + b'" <sip:a@example.com>\r\nContent-Length: 0\r\n\r\n'
    assert parse(escapes).contacts[0].display_name == "a" * 25000
    unterminated = head + b'Contact: "' + b"\\a" * 25000 + b"\r\nContent-Length: 0\r\n\r\n"
    with pytest.raises(ParseError):
        parse(unterminated).check()
    many = head + b"Contact: " + b"<sip:a@example.com>," * 3000 + b"\r\nContent-Length: 0\r\n\r\n"
    assert len(parse(many).contacts) == 3000


def test_field_values_are_remembered_when_short_and_errors_never() -> None:
    from services.sipgw.sip.fields import parse_name_addr, parse_via

    short = '"Alice" <sip:100@127.0.0.1:5060>;tag=a1'
    assert parse_name_addr(short) is parse_name_addr(short)  # the same immutable value again
    assert parse_via("SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1") == parse_via(
        "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1"
    )
    long = '"' + "a" * 300 + '" <sip:100@127.0.0.1>'
    assert parse_name_addr(long) is not parse_name_addr(long) and parse_name_addr(long).display_name == "a" * 300
    for _ in range(2):  # a bad value fails every time, not only the first
        with pytest.raises(ParseError):
            parse_name_addr("<sip:100@127.0.0.1")
