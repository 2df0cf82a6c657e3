"""The admission in front of the transaction layer: per-source limits dropped silently and counted,
calls in progress let through a phone's own limit, every trunk request counted, scanners dropped,
and datagrams from a source over its limit dropped before they are parsed."""

from __future__ import annotations

import asyncio
import functools
import socket

import pytest

from services.runtime.config_admission import SCANNER_AGENTS
from services.sipgw.admission import Admission
from services.sipgw.auth.rate_limit import Rate
from services.sipgw.sip import Request, Response, parse
from services.sipgw.sip.transport import Address, Link, UdpEndpoint
from tests.unit.sipgw.switch import Gateway, Network, Phone, settle
from tests.unit.sipgw.test_call_core import answered_call

PLENTY = Rate(per_second=1000, burst=1000)


class Frozen:
    """A clock that does not move: no bucket refills unless a test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeLink:
    name = "UDP"
    local: Address = ("127.0.0.1", 5060)

    def send(self, data: bytes, address: Address) -> None:
        raise AssertionError("the admission never answers")


def request(method: str, number: str = "100", extra: str = "", to_tag: str = "", branch: str = "b1") -> Request:
    tag = f";tag={to_tag}" if to_tag else ""
    message = parse(
        f"{method} sip:{number}@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK{branch}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:{number}@127.0.0.1>;tag=f1\r\nTo: <sip:{number}@127.0.0.1>{tag}\r\n"
        f"Call-ID: c-{branch}\r\nCSeq: 1 {method}\r\n{extra}Content-Length: 0\r\n\r\n".encode()
    )
    assert isinstance(message, Request)
    return message


class Passed:
    def __init__(self) -> None:
        self.messages: list[tuple[Request | Response, Address]] = []

    def __call__(self, message: Request | Response, source: Address, link: Link) -> None:
        self.messages.append((message, source))


def in_front_of(gateway: Gateway, phones: Rate, trunk: Rate = PLENTY, clock: Frozen | None = None) -> Admission:
    """The gateway's links deliver to an admission in front of its transaction layer, as app.py does."""
    admission = Admission(
        gateway.core.transactions.receive,
        phones,
        trunk,
        is_trunk=gateway.trunk.carries,
        ongoing=gateway.core.ongoing,
        clock=clock or Frozen(),
    )
    for link in (gateway.link, gateway.trunk_link):
        gateway.network.listeners[link.local] = functools.partial(_arrive, admission, link)
    return admission


def _arrive(admission: Admission, link: Link, message: Request | Response, source: Address) -> None:
    admission.receive(message, source, link)


def options_from(phone: Phone, n: int) -> bytes:
    return (
        f"OPTIONS sip:{phone.gateway.numbers[0]}@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {phone.address[0]}:{phone.address[1]};branch=z9hG4bKping{n};rport\r\nMax-Forwards: 70\r\n"
        f"From: <sip:{phone.number}@127.0.0.1>;tag=p{n}\r\nTo: <sip:{phone.number}@127.0.0.1>\r\n"
        f"Call-ID: ping-{n}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ).encode()


async def test_a_phone_over_its_limit_gets_no_answer_but_its_call_in_progress_goes_on() -> None:
    net = Network()
    alpha = Gateway(net, "alpha", ["100", "101"])
    admission = in_front_of(alpha, Rate(per_second=1, burst=5))
    alice, bob = Phone(net, alpha, "100"), Phone(net, alpha, "101")  # both at 127.0.0.1: one bucket
    await answered_call(alice, bob, alpha)  # the INVITE took one token; the ACK carries on the call
    for n in range(10):
        net.deliver(options_from(alice, n), alice.address, alpha.link.local)
    await settle(lambda: sum(admission.rate_limited.values()) == 6, "the OPTIONS over the limit dropped")
    assert len([r for r in alice.responses if r.cseq.method == "OPTIONS"]) == 4
    assert admission.rate_limited == {("phones", "options"): 6}

    alice.call("101")  # a new call: over the limit, dropped without an answer
    refresh = alice.in_dialog("UPDATE")  # but her call in progress is refreshed...
    await settle(lambda: any(r.cseq.method == "UPDATE" and r.status == 200 for r in alice.responses), "UPDATE")
    assert admission.rate_limited[("phones", "invite")] == 1
    assert not [r for r in alice.responses if r.cseq.method == "INVITE" and r.call_id == alice._outgoing.call_id]
    # ...only from where the call's party is: the same dialog from another address is new there.
    assert alpha.core.ongoing(refresh, alice.address)
    assert not alpha.core.ongoing(refresh, ("192.0.2.9", alice.address[1]))
    bob.hang_up()
    await settle(lambda: bool(alice.got("BYE")), "the hang-up carried across")
    assert not alpha.calls.active()


async def test_on_the_trunk_every_request_counts_and_answers_always_pass() -> None:
    passed = Passed()
    admission = Admission(
        passed, PLENTY, Rate(per_second=1, burst=2), is_trunk=lambda link: True, ongoing=lambda r, s: True
    )
    link = FakeLink()
    for n in range(5):
        admission.receive(request("BYE", to_tag="t1", branch=f"x{n}"), ("192.0.2.1", 5070), link)
    answer = parse(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKa\r\nFrom: <sip:a@b>;tag=1\r\n"
                   b"To: <sip:a@b>\r\nCall-ID: a\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n")  # fmt: skip
    for _ in range(5):
        admission.receive(answer, ("192.0.2.1", 5070), link)
    assert [m.method if isinstance(m, Request) else m.status for m, _ in passed.messages] == ["BYE"] * 2 + [200] * 5
    assert admission.rate_limited == {("trunk", "other"): 3}
    # Another peer has its own bucket.
    admission.receive(request("INVITE", branch="y"), ("192.0.2.2", 5070), link)
    assert len(passed.messages) == 8


def test_a_source_over_its_limit_is_dropped_before_parsing_unless_it_may_carry_on_a_call() -> None:
    passed = Passed()
    admission = Admission(passed, Rate(per_second=1, burst=1), Rate(per_second=1, burst=1), clock=Frozen())
    link, source = FakeLink(), ("192.0.2.1", 5060)
    register = request("REGISTER").to_bytes()
    assert admission.before_parse(register, source, link)
    admission.receive(parse(register), source, link)  # the one token
    for data in (register, request("OPTIONS").to_bytes(), b"\x00\xffjunk", b"MESSAGE"):
        assert not admission.before_parse(data, source, link)
    for method in ("INVITE", "BYE", "ACK", "UPDATE"):  # inside a dialog: parsed, then checked
        assert admission.before_parse(request(method, to_tag="t1").to_bytes(), source, link)
    folded = request("BYE", to_tag="t1").to_bytes().replace(b";tag=t1", b"\r\n ;tag=t1")
    assert admission.before_parse(folded.replace(b"\r\nTo:", b"\r\nt :"), source, link)
    assert admission.before_parse(request("CANCEL").to_bytes(), source, link)  # it names its INVITE by branch
    for method in ("INVITE", "BYE", "ACK"):  # no To tag: a new call, or nothing of ours
        assert not admission.before_parse(request(method).to_bytes(), source, link)
    assert admission.before_parse(b"SIP/2.0 200 OK\r\n\r\n", source, link)
    assert admission.before_parse(register, ("192.0.2.2", 5060), link)
    assert admission.rate_limited == {
        ("phones", "register"): 1,
        ("phones", "options"): 1,
        ("phones", "invite"): 1,
        ("phones", "other"): 4,
    }
    assert admission.sources("phones") == 1  # the peeks made no entry


@pytest.mark.parametrize(
    ("agent", "dropped"),
    [
        ("friendly-scanner", True),
        ("sipcli/v1.8", True),
        ("VaxSIPUserAgent/3.1", True),
        ("SIPVicious 0.3.3", True),
        ("Yealink SIP-T46S 66.86.0.15", False),
        ("MySipClient/1.0", False),  # a name that only starts like one
        ("", False),
    ],
)
def test_scanners_are_dropped_by_the_product_name_of_their_user_agent(agent: str, dropped: bool) -> None:
    passed = Passed()
    admission = Admission(passed, PLENTY, PLENTY, SCANNER_AGENTS)
    extra = f"User-Agent: {agent}\r\n" if agent else ""
    admission.receive(request("REGISTER", extra=extra), ("192.0.2.1", 5060), FakeLink())
    assert bool(passed.messages) is not dropped
    assert admission.scanners == ({("phones", "register"): 1} if dropped else {})


async def test_malformed_requests_count_against_their_source_and_get_a_400_only_within_it() -> None:
    passed = Passed()
    admission = Admission(passed, Rate(per_second=1, burst=3), PLENTY, clock=Frozen())
    endpoint = await UdpEndpoint.open("127.0.0.1", 0, admission.receive, admission)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    client.settimeout(0.5)
    broken = request("OPTIONS").to_bytes().replace(b"Max-Forwards: 70", b"Max-Forwards: x")
    try:
        for _ in range(10):
            client.sendto(broken, endpoint.local)
        answers = []
        while True:
            try:
                answers.append(await asyncio.to_thread(client.recv, 65536))
            except TimeoutError:
                break
    finally:
        client.close()
        endpoint.close()
    assert len(answers) == 3 and all(a.startswith(b"SIP/2.0 400") for a in answers)
    # Once the bucket is empty, the rest never reach the parser (counted by their first word).
    assert admission.rate_limited == {("phones", "options"): 7} and not passed.messages
