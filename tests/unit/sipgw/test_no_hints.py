"""What the gateway tells a stranger: the same whatever number is asked for, nothing about itself,
and nothing at all once locked out (and keeps nothing for a request it will never answer)."""

from __future__ import annotations

import re

from services.runtime import Secret
from services.runtime.config_calls import AccountEntry
from services.runtime.config_lockout import LockoutSection
from services.sipgw.auth import Lockout
from services.sipgw.core import SipCore
from services.sipgw.registrar import Registrar
from services.sipgw.sip import Request, Response, parse
from services.sipgw.sip.transport import Address

ACCOUNTS = (AccountEntry("100", Secret("pw-100-secret")), AccountEntry("101", Secret("pw-101-secret"), ("SHA-256",)))
STRANGER: Address = ("192.0.2.7", 5060)


class Wire:
    """A link that keeps what the gateway sends."""

    name = "UDP"
    local: Address = ("127.0.0.1", 5060)

    def __init__(self) -> None:
        self.sent: list[Response] = []

    def send(self, data: bytes, address: Address) -> None:
        message = parse(data)
        assert isinstance(message, Response)
        self.sent.append(message)


def gateway(lockout: Lockout | None = None) -> tuple[SipCore, Wire]:
    registrar = Registrar(ACCOUNTS, "Alpha office", lockout=lockout or Lockout())
    return SipCore(registrar, {"100", "101"}, ring_timeout=10), Wire()


def ask(core: SipCore, wire: Wire, method: str, caller: str, called: str, n: int) -> Response | None:
    uri = "sip:127.0.0.1" if method == "REGISTER" else f"sip:{called}@127.0.0.1"
    request = parse(
        f"{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {STRANGER[0]}:5060;branch=z9hG4bK{method}{n}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:{caller}@127.0.0.1>;tag=f{n}\r\nTo: <sip:{called}@127.0.0.1>\r\n"
        f"Call-ID: {method}-{n}@x\r\nCSeq: 1 {method}\r\nContact: <sip:{caller}@{STRANGER[0]}:5060>\r\n"
        "Content-Length: 0\r\n\r\n".encode()
    )
    assert isinstance(request, Request)
    before = len(wire.sent)
    core.transactions.receive(request, STRANGER, wire)
    return wire.sent[before] if len(wire.sent) > before else None


def shape(response: Response | None) -> tuple[object, ...]:
    """All of an answer a scanner could compare: status, reason, header names in order, and the
    form of each challenge (its parameters, the realm, the nonce's length and alphabet)."""
    assert response is not None
    names = tuple(name.lower() for name, _ in response.headers)
    challenges = []
    for name in ("WWW-Authenticate", "Proxy-Authenticate"):
        for value in response.headers.get_all(name):
            params = dict(re.findall(r'(\w+)="?([^",]*)"?', value))
            nonce = params.pop("nonce")
            params.pop("algorithm")  # an account's own set is drawn for unknown numbers too (test_registrar)
            challenges.append((tuple(sorted(params.items())), len(nonce), bool(re.fullmatch(r"[\w-]+", nonce))))
    return response.status, response.reason, names, tuple(challenges)


def test_options_register_and_invite_answer_the_same_for_numbers_that_exist_and_that_do_not() -> None:
    core, wire = gateway()
    for method, known, unknown in (
        ("OPTIONS", ("555", "100"), ("555", "999")),
        ("REGISTER", ("100", "100"), ("555", "555")),
        ("REGISTER", ("101", "101"), ("556", "556")),
        # An INVITE is challenged before the number called is looked up, whoever the caller says he is.
        ("INVITE", ("100", "101"), ("100", "999")),
        ("INVITE", ("101", "100"), ("555", "100")),
    ):
        first, second = ask(core, wire, method, *known, 1), ask(core, wire, method, *unknown, 2)
        assert shape(first) == shape(second), method
        assert first is not None and first.status in (200, 401, 407)


def test_no_answer_names_the_product_or_a_version() -> None:
    core, wire = gateway()
    for n, method in enumerate(("OPTIONS", "REGISTER", "INVITE", "SUBSCRIBE", "MESSAGE")):
        ask(core, wire, method, "100", "101", n)
    assert len(wire.sent) >= 5
    for response in wire.sent:
        names = {name.lower() for name, _ in response.headers}
        assert not names & {"server", "user-agent", "warning", "organization"}, names
        assert not re.search(rb"pbxmesh|sipgw|python", response.to_bytes(), re.IGNORECASE)
        own = [v for name, v in response.headers if name.lower() not in ("via", "from", "to", "call-id", "cseq")]
        assert not [v for v in own if re.search(r"\d+\.\d+\.\d+|/\d", v)], own  # no version anywhere


def test_a_locked_out_source_gets_no_answer_and_leaves_no_transaction_behind() -> None:
    core, wire = gateway(Lockout(LockoutSection(source_free_failures=0, source_lock_failures=1)))
    core.registrar.lockout.failed("100", STRANGER[0])  # one failure locks this source
    for n in range(50):
        assert ask(core, wire, "REGISTER", "100", "100", n) is None
        assert ask(core, wire, "INVITE", "100", "101", n) is None
    assert not core.transactions.servers  # none waits forever for an answer that never comes
    assert core.registrar.lockout.refused["source"] == 100
