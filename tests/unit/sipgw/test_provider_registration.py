"""Registering with a provider over real UDP sockets on loopback.

The gateway's side is the product's UdpEndpoint and TransactionLayer; the provider's side is
either the product's own Registrar (digest, 423, bindings) or a scripted registrar built from the
product's server-side digest code, whose grant, refusal and failures each test chooses.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import NamedTuple

import pytest

from services.runtime import Secret
from services.runtime.backoff import Backoff
from services.runtime.config_calls import AccountEntry
from services.runtime.embedded_etcd import free_port
from services.sipgw.auth import Challenge, NonceFactory, parse_credentials, verify_response
from services.sipgw.provider_registration import Registration, RegistrationStatus
from services.sipgw.registrar import Registrar
from services.sipgw.sip import Request, Response
from services.sipgw.sip.transaction import ServerTransaction, Timers, TransactionLayer
from services.sipgw.sip.transport import Address, UdpEndpoint, response_to

FAST = Timers(t1=0.01, t2=0.04, t4=0.05)  # Timer F: 0.64 s
PASSWORD = "provider-pass-7f3a"
USER = "4420000001"
DOMAIN = "itsp.test"


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    """Waits for ``check()`` to hold; fails the test if it does not within ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


class Side(NamedTuple):
    """One end: a transaction layer over a UDP socket on loopback."""

    layer: TransactionLayer
    endpoint: UdpEndpoint

    @property
    def local(self) -> Address:
        return self.endpoint.local

    def close(self) -> None:
        self.endpoint.close()


async def open_side(on_request: Callable[[ServerTransaction, Request], None]) -> Side:
    layer = TransactionLayer(on_request, timers=FAST)
    return Side(layer, await UdpEndpoint.open("127.0.0.1", free_port(), layer.receive))


class Registrar2:
    """A scripted registrar: challenges with the product's digest code, then grants or refuses."""

    def __init__(
        self,
        password: str = PASSWORD,
        algorithms: tuple[str, ...] = ("MD5",),
        grant: int | None = None,
        refuse_with: int = 403,
        answer_status: int | None = None,
        nonce_lifetime: float = 60.0,
    ) -> None:
        self.password, self.algorithms, self.grant = password, algorithms, grant
        self.refuse_with, self.answer_status = refuse_with, answer_status
        self.nonces = NonceFactory(key=b"t" * 32, lifetime=nonce_lifetime)
        self.seen: list[tuple[float, Request]] = []
        self.side: Side | None = None
        self.silent = False  # answers nothing (the provider went away)

    @property
    def address(self) -> Address:
        assert self.side is not None
        return self.side.local

    def on_request(self, transaction: ServerTransaction, request: Request) -> None:
        self.seen.append((asyncio.get_running_loop().time(), request))
        if self.silent:
            return
        if self.answer_status is not None:
            transaction.respond(response_to(request.headers, self.answer_status, "Scripted"))
            return
        credentials = request.headers.get("Authorization")
        if credentials is None:
            transaction.respond(self.challenge(request, stale=False))
            return
        params = parse_credentials(credentials)
        state = self.nonces.check(params["nonce"])
        if state != "ok":
            transaction.respond(self.challenge(request, stale=state == "stale"))
            return
        right = verify_response(params, "REGISTER", self.password)
        if not (right and self.nonces.fresh_count(params["nonce"], int(params["nc"], 16))):
            if self.refuse_with == 401:
                transaction.respond(self.challenge(request, stale=False))
            else:
                transaction.respond(response_to(request.headers, self.refuse_with, "Forbidden"))
            return
        response = response_to(request.headers, 200, "OK")
        granted = self.grant if self.grant is not None else int(request.headers.get("Expires") or "3600")
        response.headers.add("Contact", f"{request.contacts[0]};expires={granted}")
        transaction.respond(response)

    def challenge(self, request: Request, stale: bool) -> Response:
        response = response_to(request.headers, 401, "Unauthorized")
        nonce = self.nonces.issue()
        for algorithm in self.algorithms:
            response.headers.add("WWW-Authenticate", Challenge("itsp", nonce, algorithm, stale).header_value())
        return response

    def registers(self) -> list[Request]:
        return [request for _, request in self.seen]


Provider = Callable[..., Awaitable[Registrar2]]


@pytest.fixture
async def gateway() -> AsyncIterator[Side]:
    side = await open_side(lambda transaction, request: None)
    yield side
    side.close()


@pytest.fixture
async def provider() -> AsyncIterator[Callable[..., Awaitable[Registrar2]]]:
    opened: list[Side] = []

    async def make(**options: object) -> Registrar2:
        registrar = Registrar2(**options)  # type: ignore[arg-type]
        registrar.side = await open_side(registrar.on_request)
        opened.append(registrar.side)
        return registrar

    yield make
    for side in opened:
        side.close()


def states(seen: list[RegistrationStatus]) -> list[str]:
    """The states a listener saw, each once per stretch (other fields change in between)."""
    return [s.state for i, s in enumerate(seen) if i == 0 or seen[i - 1].state != s.state]


def registration(
    gateway: Side,
    targets: list[Address],
    *,
    password: str = PASSWORD,
    expires: int = 300,
    backoff: Backoff | None = None,
    seen: list[RegistrationStatus] | None = None,
) -> Registration:
    async def locate() -> list[Address]:
        return list(targets)

    return Registration(
        "itsp",
        locate,
        DOMAIN,
        USER,
        password,
        gateway.layer,
        gateway.endpoint,
        expires=expires,
        backoff=backoff or Backoff(0.1, 0.4),
        on_change=seen.append if seen is not None else None,
        stop_wait=1.0,
    )


async def test_registers_with_the_products_registrar_through_challenge_and_423(gateway: Side) -> None:
    registrar = Registrar([AccountEntry(USER, Secret(PASSWORD))], "itsp.test")

    def on_request(transaction: ServerTransaction, request: Request) -> None:
        decision = registrar.handle(request, transaction.address)
        if decision.response is not None:
            transaction.respond(decision.response)

    server = await open_side(on_request)
    seen: list[RegistrationStatus] = []
    reg = registration(gateway, [server.local], expires=30, seen=seen)
    try:
        reg.start()
        await until(lambda: reg.status.state == "registered")
        # 30 s is below the registrar's minimum: its 423 names 60, which was asked for next.
        (binding,) = registrar.bindings.lookup(USER)
        assert binding.contact == f"sip:{USER}@127.0.0.1:{gateway.local[1]}"
        assert 59 <= binding.remaining(registrar.bindings.now()) <= 60
        status = reg.status
        assert (status.last_status, status.target, status.attempts) == (200, server.local, 0)
        assert status.expires_at is not None
        assert states(seen) == ["registering", "registered"]

        await reg.stop()
        assert registrar.bindings.lookup(USER) == []  # Expires: 0, authenticated, removed it
        assert reg.status.state == "unregistered"
        assert states(seen) == ["registering", "registered", "unregistered"]
    finally:
        server.close()


async def test_refreshes_before_the_granted_time_runs_out(gateway: Side, provider: Provider) -> None:
    itsp = await provider(algorithms=("MD5", "SHA-256"), grant=2)
    seen: list[RegistrationStatus] = []
    reg = registration(gateway, [itsp.address], seen=seen)
    reg.start()
    try:
        await until(lambda: reg.status.state == "registered")
        first_ok = asyncio.get_running_loop().time()
        assert reg.status.expires_at is not None and abs(reg.status.expires_at - (time.time() + 2)) < 0.5
        await until(lambda: len(itsp.seen) >= 4, timeout=3)  # challenge, answer, two refreshes
        times = [when for when, _ in itsp.seen]
        # Granted 2 s (in the Contact, not the 300 asked for): refreshed at about half of it,
        # well before it runs out.
        assert 0.8 < times[2] - first_ok < 1.9
        assert 0.8 < times[3] - times[2] < 1.9
        requests = itsp.registers()
        assert len({r.call_id for r in requests}) == 1
        assert [r.cseq.number for r in requests] == sorted({r.cseq.number for r in requests})
        assert "Authorization" not in requests[0].headers
        assert requests[0].headers.get("Expires") == "300"
        assert requests[0].contacts[0].uri.port == gateway.local[1]  # type: ignore[union-attr]
        assert requests[0].top_via.has_rport
        # Refreshes carry the last credentials with the next nonce count: no new challenge.
        answers = [parse_credentials(r.headers.get("Authorization") or "") for r in requests[1:4]]
        assert [a["nc"] for a in answers] == ["00000001", "00000002", "00000003"]
        assert {a["algorithm"] for a in answers} == {"SHA-256"}  # preferred to MD5
        assert len({a["nonce"] for a in answers}) == 1
        assert states(seen) == ["registering", "registered"]  # never lapsed
    finally:
        await reg.stop()
    last = itsp.registers()[-1]
    assert last.headers.get("Expires") == "0" and "Authorization" in last.headers


async def test_a_new_challenge_to_a_refresh_is_answered(gateway: Side, provider: Provider) -> None:
    itsp = await provider(grant=1, nonce_lifetime=0.3)  # every refresh finds its nonce stale
    seen: list[RegistrationStatus] = []
    reg = registration(gateway, [itsp.address], seen=seen)
    reg.start()
    try:
        await until(lambda: len(itsp.seen) >= 6, timeout=4)
        requests = itsp.registers()
        nonces = [parse_credentials(r.headers.get("Authorization") or "")["nonce"] for r in requests[1:6]]
        # A refresh with the old nonce, challenged (stale), answered with the new one, granted.
        assert nonces[1] == nonces[0] and nonces[2] != nonces[1] and nonces[3] == nonces[2]
        assert states(seen) == ["registering", "registered"]
    finally:
        await reg.stop()


async def test_a_binding_stays_registered_while_refreshes_fail_until_it_runs_out(
    gateway: Side, provider: Provider
) -> None:
    itsp = await provider(grant=2)
    seen: list[RegistrationStatus] = []
    reg = registration(gateway, [itsp.address], backoff=Backoff(0.5, 1.0), seen=seen)
    reg.start()
    try:
        await until(lambda: reg.status.state == "registered")
        itsp.silent = True
        bound_at = asyncio.get_running_loop().time()
        await until(lambda: reg.status.state == "failed", timeout=4)
        lapsed_at = asyncio.get_running_loop().time()
    finally:
        await reg.stop()
    # The refresh at 1 s went unanswered (Timer F, 0.64 s) while the 2 s granted still ran.
    unanswered = [s for s in seen if s.last_status == 408]
    assert unanswered[0].state == "registered"
    assert 1.5 < lapsed_at - bound_at < 2.5
    assert states(seen) == ["registering", "registered", "failed", "unregistered"]


@pytest.mark.parametrize("refusal", [403, 401])
async def test_wrong_password_fails_and_retries_with_backoff(
    gateway: Side, provider: Provider, refusal: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    itsp = await provider(refuse_with=refusal)
    wrong = "wrong-secret-91c2"
    seen: list[RegistrationStatus] = []
    reg = registration(gateway, [itsp.address], password=wrong, seen=seen)
    rounds: list[float] = []
    reg.add_listener(lambda s: rounds.append(asyncio.get_running_loop().time()) if s.attempts > len(rounds) else None)
    reg.start()
    try:
        await until(lambda: reg.status.attempts >= 4)
        assert (reg.status.state, reg.status.last_status) == ("failed", refusal)
    finally:
        await reg.stop()
    assert states(seen) == ["registering", "failed", "unregistered"]
    gaps = [b - a for a, b in itertools.pairwise(rounds)]
    # Backoff(0.1, 0.4): at least 0.1, 0.2, 0.4 s between rounds (a loop can only be late).
    assert len(gaps) >= 3
    assert gaps[0] >= 0.09 and gaps[1] >= 0.19 and gaps[2] >= 0.39
    # One fresh challenge is answered per round, no more: no loop of answers.
    assert len(itsp.seen) <= 2 * len(rounds) + 1
    assert wrong not in caplog.text and wrong not in repr(reg) and wrong not in repr(reg.status)


async def test_failed_state_names_the_refusal(gateway: Side, provider: Provider) -> None:
    itsp = await provider()
    seen: list[RegistrationStatus] = []
    reg = registration(gateway, [itsp.address], password="nope", seen=seen)
    reg.start()
    try:
        await until(lambda: reg.status.state == "failed")
        status = reg.status
        assert (status.last_status, status.target, status.expires_at) == (403, itsp.address, None)
        assert "Forbidden" in status.last_reason
        assert seen[0].state == "registering"
    finally:
        await reg.stop()

    itsp = await provider(refuse_with=401)
    reg = registration(gateway, [itsp.address], password="nope")
    reg.start()
    try:
        await until(lambda: reg.status.state == "failed")
        assert reg.status.last_status == 401 and "credentials refused" in reg.status.last_reason
    finally:
        await reg.stop()


async def test_unreachable_target_fails_over_to_the_next(gateway: Side, provider: Provider) -> None:
    itsp = await provider()
    nobody = ("127.0.0.1", free_port())  # nothing listens there
    reg = registration(gateway, [nobody, itsp.address])
    reg.start()
    try:
        await until(lambda: reg.status.state == "registered")
        assert reg.status.target == itsp.address
    finally:
        await reg.stop()


async def test_server_error_fails_over_and_the_working_address_comes_first(gateway: Side, provider: Provider) -> None:
    broken = await provider(answer_status=503)
    itsp = await provider(grant=1)
    reg = registration(gateway, [broken.address, itsp.address])
    reg.start()
    try:
        await until(lambda: reg.status.state == "registered")
        await until(lambda: len(itsp.seen) >= 4)  # a refresh or two
        assert len(broken.seen) == 1  # refreshes go where the binding is
    finally:
        await reg.stop()


async def test_no_answer_anywhere_backs_off(gateway: Side) -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", free_port()))
    silent.setblocking(False)
    reg = registration(gateway, [silent.getsockname()], backoff=Backoff(0.2, 1.0))
    reg.start()
    try:
        await until(lambda: reg.status.attempts >= 3, timeout=6)
        status = reg.status
        assert (status.state, status.last_status, status.last_reason) == ("failed", 408, "no answer")
        datagrams = []
        while True:
            try:
                datagrams.append(silent.recv(65536))
            except BlockingIOError:
                break
        cseqs = {line for data in datagrams for line in data.split(b"\r\n") if line.startswith(b"CSeq:")}
        assert len(cseqs) >= 2  # one REGISTER per round, retransmitted within it
        assert len(datagrams) > len(cseqs)
    finally:
        await reg.stop()
        silent.close()
    assert reg.status.state == "unregistered"


async def test_the_locator_failing_is_a_failed_round(gateway: Side) -> None:
    async def no_dns() -> list[Address]:
        raise OSError("NXDOMAIN")

    reg = Registration(
        "itsp",
        no_dns,
        DOMAIN,
        USER,
        PASSWORD,
        gateway.layer,
        gateway.endpoint,
        backoff=Backoff(0.05, 0.1),
    )
    reg.start()
    try:
        await until(lambda: reg.status.attempts >= 2)
        assert reg.status.state == "failed" and "no registrar address" in reg.status.last_reason
    finally:
        await reg.stop()


async def test_bad_settings_are_refused(gateway: Side) -> None:
    async def locate() -> list[Address]:
        return []

    layer = gateway.layer
    with pytest.raises(ValueError, match="expires"):
        Registration("itsp", locate, DOMAIN, USER, PASSWORD, layer, gateway.endpoint, expires=0)
    with pytest.raises(ValueError, match="bad registrar address") as raised:
        Registration("itsp", locate, "bad host", USER, PASSWORD, layer, gateway.endpoint)
    assert PASSWORD not in str(raised.value)
