"""Property tests for the SIP message layer (services.sipgw.sip), with Hypothesis.

- any bytes: parse, check and every parsed field raise nothing but ParseError;
- generated well-formed requests and responses survive serialize -> parse -> serialize;
- the stream framer gives the same messages however a stream is cut into chunks.
"""

from __future__ import annotations

import contextlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.sipgw.sip import Message, ParseError, Request, Response, StreamFramer, parse

TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
tokens = st.text(TOKEN_CHARS, min_size=1, max_size=12)
hosts = st.one_of(
    st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z][a-z0-9-]{0,10}){0,3}", fullmatch=True),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda ip: f"[{ip}]"),
)
ports = st.one_of(st.just(""), st.integers(1, 65535).map(lambda port: f":{port}"))
uri_params = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_.!~*'", min_size=1, max_size=10)
users = st.from_regex(r"[a-zA-Z0-9_.!~*'()&=+$,;?/-]{1,12}", fullmatch=True)
safe_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters='"\\'), max_size=20)
display_names = st.one_of(st.just(""), safe_text.map(lambda name: f'"{name}" '))


@st.composite
def uris(draw: st.DrawFn) -> str:
    user = draw(st.one_of(st.just(""), users.map(lambda user: user + "@")))
    params = draw(st.lists(uri_params, max_size=3))
    return f"sip:{user}{draw(hosts)}{draw(ports)}" + "".join(f";{p}" for p in params)


@st.composite
def addresses(draw: st.DrawFn) -> str:
    tag = draw(st.one_of(st.just(""), tokens.map(lambda tag: f";tag={tag}")))
    return f"{draw(display_names)}<{draw(uris())}>{tag}"


@st.composite
def vias(draw: st.DrawFn) -> str:
    transport = draw(st.sampled_from(["UDP", "TCP", "TLS", "SCTP", "WS"]))
    rport = draw(st.sampled_from(["", ";rport", ";rport=5060"]))
    return f"SIP/2.0/{transport} {draw(hosts)}{draw(ports)};branch=z9hG4bK{draw(tokens)}{rport}"


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from(["INVITE", "ACK", "BYE", "OPTIONS", "REGISTER", "X-CUSTOM"]))
    if draw(st.booleans()):
        start = f"{method} {draw(uris())} SIP/2.0"
    else:
        start = f"SIP/2.0 {draw(st.integers(100, 699))} {draw(safe_text).strip()}"
    fields = [("Via", draw(vias())) for _ in range(draw(st.integers(1, 3)))]
    fields += [("From", draw(addresses())), ("To", draw(addresses())), ("Call-ID", draw(tokens))]
    fields += [("CSeq", f"{draw(st.integers(0, 2**31 - 1))} {method}"), ("Max-Forwards", "70")]
    fields += [("X-" + draw(tokens), draw(safe_text).strip()) for _ in range(draw(st.integers(0, 3)))]
    fields = draw(st.permutations(fields))
    body = draw(st.binary(max_size=200))
    head = "".join(f"{name}: {value}\r\n" for name, value in fields)
    return f"{start}\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


def _touch_everything(message: Message) -> None:
    for read in (
        lambda: message.vias,
        lambda: message.top_via,
        lambda: message.from_addr,
        lambda: message.to_addr,
        lambda: message.call_id,
        lambda: message.cseq,
        lambda: message.max_forwards,
        lambda: message.contacts,
        message.check,
    ):
        with contextlib.suppress(ParseError):
            read()
    message.to_bytes()


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_random_bytes_raise_only_parse_errors(data: bytes) -> None:
    try:
        message = parse(data)
    except ParseError:
        return
    _touch_everything(message)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(messages(), st.data())
def test_mutated_messages_raise_only_parse_errors(data: bytes, draw: st.DataObject) -> None:
    # Near-valid input reaches deeper than random bytes: flip, drop or insert a few octets.
    mutated = bytearray(data)
    for _ in range(draw.draw(st.integers(1, 4))):
        position = draw.draw(st.integers(0, len(mutated)))
        octet = draw.draw(st.sampled_from(b' \t\r\n:;,<>"\\@[]=/%\x00\xff'))
        if draw.draw(st.booleans()) and position < len(mutated):
            mutated[position] = octet
        else:
            mutated.insert(position, octet)
    try:
        message = parse(bytes(mutated))
    except ParseError:
        return
    _touch_everything(message)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
def test_well_formed_messages_round_trip(data: bytes) -> None:
    message = parse(data)
    message.check()
    wire = message.to_bytes()
    again = parse(wire)
    again.check()
    assert again.to_bytes() == wire
    assert type(again) is type(message)
    assert list(again.headers) == list(message.headers)
    assert again.body == message.body
    assert again.vias == message.vias
    assert (again.from_addr, again.to_addr, again.cseq) == (message.from_addr, message.to_addr, message.cseq)
    if isinstance(message, Request):
        assert isinstance(again, Request) and (again.method, again.uri) == (message.method, message.uri)
    else:
        assert isinstance(message, Response) and isinstance(again, Response)
        assert (again.status, again.reason) == (message.status, message.reason)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(messages(), min_size=1, max_size=4), st.data())
def test_framer_is_independent_of_chunking(batch: list[bytes], draw: st.DataObject) -> None:
    stream = b"".join(draw.draw(st.sampled_from([b"", b"\r\n", b"\r\n\r\n"])) + message for message in batch)
    cuts = sorted(draw.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    framer = StreamFramer()
    received: list[bytes] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        received += [message.to_bytes() for message in framer.feed(stream[start:end])]
    assert received == [parse(message).to_bytes() for message in batch]
