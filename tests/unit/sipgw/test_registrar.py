"""The registrar: digest challenge and answers (RFC 7616, RFC 8760), binding rules (RFC 3261 10.3), lockout.

The tests act as the phone: they write REGISTER requests as bytes, parse them, and compute the
digest response with hashlib, independently of the code under test.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import time
from typing import Any

import pytest

from services.runtime import Secret
from services.runtime.config_calls import AccountEntry
from services.runtime.config_lockout import LockoutSection
from services.sipgw.auth import Lockout, NonceFactory
from services.sipgw.registrar import Bindings, Decision, Registrar
from services.sipgw.sip import Request, Response, parse

REALM = "pbx.test"
PASSWORDS = {"100": "correct-horse-100", "101": "battery-staple-101"}
PHONE = ("127.0.0.1", 5061)
DIGEST_URI = "sip:127.0.0.1:5060"  # what SIPp puts in uri=, not the Request-URI
HASHES = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}
_branches = itertools.count(1)


class Clock:
    """One settable clock shared by the nonces and the bindings."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_registrar(
    clock: Clock | None = None,
    lockout: Lockout | None = None,
    algorithms: tuple[str, ...] | None = None,
    account_algorithms: dict[str, tuple[str, ...]] | None = None,
) -> Registrar:
    clock = clock or Clock()
    own = account_algorithms or {}
    accounts = [AccountEntry(number, Secret(password), own.get(number, ())) for number, password in PASSWORDS.items()]
    return Registrar(
        accounts,
        REALM,
        bindings=Bindings(clock=clock),
        nonces=NonceFactory(key=b"n" * 32, lifetime=60, clock=clock),
        lockout=lockout or Lockout(clock=clock),
        **({"algorithms": algorithms} if algorithms is not None else {}),
    )


def register(
    to_user: str = "100",
    contacts: tuple[str, ...] = ("<sip:100@127.0.0.1:5061>",),
    call_id: str = "reg-1@127.0.0.1",
    cseq: int = 1,
    expires: int | None = None,
    authorization: str | None = None,
    to_tag: str = "",
) -> Request:
    lines = [
        "REGISTER sip:127.0.0.1:5060 SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-{next(_branches)};rport",
        "Max-Forwards: 70",
        f"From: <sip:{to_user}@pbx.test>;tag=from-1",
        f"To: <sip:{to_user}@pbx.test>{to_tag}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
        *(f"Contact: {contact}" for contact in contacts),
    ]
    if expires is not None:
        lines.append(f"Expires: {expires}")
    if authorization is not None:
        lines.append(f"Authorization: {authorization}")
    message = parse(("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode())
    assert isinstance(message, Request)
    message.check()
    return message


def challenge_params(value: str) -> dict[str, str]:
    """The phone's own reading of a WWW-Authenticate value (no quoted commas in ours)."""
    scheme, _, rest = value.partition(" ")
    assert scheme == "Digest"
    params = {}
    for item in rest.split(","):
        name, _, raw = item.strip().partition("=")
        params[name] = raw.strip('"')
    return params


def digest(
    nonce: str,
    username: str = "100",
    password: str = PASSWORDS["100"],
    algorithm: str = "MD5",
    nc: int = 1,
    realm: str = REALM,
) -> str:
    """An Authorization value as a phone computes it (RFC 7616 section 3.4.1, qop=auth)."""

    def h(text: str) -> str:
        return HASHES[algorithm](text.encode()).hexdigest()

    cnonce, count = "0a4f113b", f"{nc:08x}"
    ha1 = h(f"{username}:{realm}:{password}")
    ha2 = h(f"REGISTER:{DIGEST_URI}")
    response = h(f"{ha1}:{nonce}:{count}:{cnonce}:auth:{ha2}")
    return (
        f'Digest username="{username}", realm="{realm}", nonce="{nonce}", uri="{DIGEST_URI}", '
        f'response="{response}", algorithm={algorithm}, qop=auth, nc={count}, cnonce="{cnonce}"'
    )


def answered(decision: Decision) -> Response:
    assert decision.response is not None
    return decision.response


def fresh_nonce(registrar: Registrar, source: tuple[str, int] = PHONE, user: str = "100") -> str:
    response = answered(registrar.handle(register(to_user=user), source))
    assert response.status == 401
    return challenge_params(response.headers.get_all("WWW-Authenticate")[0])["nonce"]


def login(
    registrar: Registrar,
    user: str = "100",
    algorithm: str = "MD5",
    source: tuple[str, int] = PHONE,
    **fields: Any,
) -> Decision:
    """Challenge, then the authenticated REGISTER built from ``fields``."""
    nonce = fresh_nonce(registrar, source, user)
    auth = digest(nonce, user, PASSWORDS[user], algorithm)
    return registrar.handle(register(to_user=user, authorization=auth, **fields), source)


def contacts_of(response: Response) -> dict[str, int]:
    """Contact URI -> expires, as listed in a 200."""
    listed = {}
    for value in response.headers.get_all("Contact"):
        uri, _, expires = value.partition(";expires=")
        listed[uri.strip("<>")] = int(expires)
    return listed


def algorithms_offered(registrar: Registrar, user: str) -> list[str]:
    response = answered(registrar.handle(register(to_user=user), PHONE))
    return [challenge_params(v)["algorithm"] for v in response.headers.get_all("WWW-Authenticate")]


def test_the_default_challenge_is_md5_alone_which_every_common_phone_answers() -> None:
    # Phones like baresip (libre) refuse a challenge set that offers any algorithm besides MD5.
    assert algorithms_offered(make_registrar(), "100") == ["MD5"]
    assert algorithms_offered(make_registrar(), "555") == ["MD5"]  # unknown numbers alike


def test_an_account_can_be_held_to_sha256_and_then_md5_fails_for_it_only() -> None:
    registrar = make_registrar(account_algorithms={"101": ("SHA-256",)})
    assert algorithms_offered(registrar, "101") == ["SHA-256"]
    assert algorithms_offered(registrar, "100") == ["MD5"]
    assert answered(login(registrar, user="101", algorithm="MD5")).status == 403
    assert answered(login(registrar, user="101", algorithm="SHA-256")).status == 200
    assert answered(login(registrar, user="100", algorithm="MD5")).status == 200
    # A server that asks for SHA-256 only holds every account without its own list to it.
    strict = make_registrar(algorithms=("SHA-256",), account_algorithms={"101": ("MD5",)})
    assert answered(login(strict, user="100", algorithm="MD5")).status == 403
    assert answered(login(strict, user="101", algorithm="MD5")).status == 200


def test_challenge_offers_sha256_then_md5_with_one_fresh_nonce_and_a_to_tag() -> None:
    registrar = make_registrar(algorithms=("SHA-256", "MD5"))
    request = register()
    decision = registrar.handle(request, PHONE)
    response = answered(decision)
    assert (response.status, decision.number, decision.delay) == (401, None, 0.0)
    challenges = [challenge_params(v) for v in response.headers.get_all("WWW-Authenticate")]
    assert [c["algorithm"] for c in challenges] == ["SHA-256", "MD5"]
    assert all(c["realm"] == REALM and c["qop"] == "auth" and "stale" not in c for c in challenges)
    assert challenges[0]["nonce"] == challenges[1]["nonce"]
    assert fresh_nonce(registrar) != challenges[0]["nonce"]
    for name in ("Via", "From", "Call-ID", "CSeq"):
        assert response.headers.get_lines(name) == request.headers.get_lines(name)
    assert response.to_addr.uri == request.to_addr.uri and response.to_addr.tag
    assert response.from_addr.tag == "from-1"
    assert parse(response.to_bytes()).headers.get_all("WWW-Authenticate") == response.headers.get_all(
        "WWW-Authenticate"
    )


def test_a_to_tag_already_present_is_kept() -> None:
    response = answered(make_registrar().handle(register(to_tag=";tag=mine"), PHONE))
    assert response.headers.get("To") == "<sip:100@pbx.test>;tag=mine"


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_success_binds_the_contact_with_the_packet_source(algorithm: str) -> None:
    registrar = make_registrar(algorithms=("SHA-256", "MD5"))
    decision = login(registrar, algorithm=algorithm, expires=600)
    response = answered(decision)
    assert (response.status, decision.number) == (200, "100")
    assert contacts_of(response) == {"sip:100@127.0.0.1:5061": 600}
    assert response.to_addr.tag and (response.headers.get("Date") or "").endswith("GMT")
    (binding,) = registrar.bindings.lookup("100")
    assert binding.source == "127.0.0.1:5061" and binding.call_id == "reg-1@127.0.0.1"


def test_two_contacts_for_one_number_and_per_contact_expires() -> None:
    clock = Clock()
    registrar = make_registrar(clock)
    login(registrar, contacts=("<sip:100@127.0.0.1:5061>;expires=120",), call_id="desk")
    clock.now += 20
    response = answered(login(registrar, contacts=("<sip:100@10.0.0.7:5070>",), call_id="soft"))
    assert contacts_of(response) == {"sip:100@10.0.0.7:5070": 3600, "sip:100@127.0.0.1:5061": 100}
    clock.now += 101
    assert [b.contact for b in registrar.bindings.lookup("100")] == ["sip:100@10.0.0.7:5070"]


def test_refresh_extends_the_binding() -> None:
    clock = Clock()
    registrar = make_registrar(clock)
    login(registrar, cseq=1, expires=300)
    clock.now += 200
    nonce = fresh_nonce(registrar)
    response = answered(registrar.handle(register(cseq=3, expires=300, authorization=digest(nonce)), PHONE))
    assert contacts_of(response) == {"sip:100@127.0.0.1:5061": 300}
    # The same nonce again with the next nonce count is how phones refresh without a new challenge.
    clock.now += 10
    again = register(cseq=4, expires=300, authorization=digest(nonce, nc=2))
    assert answered(registrar.handle(again, PHONE)).status == 200


def test_unregister_one_contact_then_all_with_the_wildcard() -> None:
    registrar = make_registrar()
    login(registrar, contacts=("<sip:100@127.0.0.1:5061>", "<sip:100@127.0.0.1:5062>"), cseq=1)
    response = answered(login(registrar, contacts=("<sip:100@127.0.0.1:5061>;expires=0",), cseq=2))
    assert (response.status, contacts_of(response)) == (200, {"sip:100@127.0.0.1:5062": 3600})
    response = answered(login(registrar, contacts=("*",), expires=0, cseq=3))
    assert response.status == 200 and response.headers.get_all("Contact") == []
    assert registrar.bindings.lookup("100") == []


@pytest.mark.parametrize(
    ("contacts", "expires"),
    [(("*",), None), (("*",), 3600), (("*", "<sip:100@127.0.0.1:5061>"), 0)],
)
def test_wildcard_needs_expires_zero_and_to_stand_alone(contacts: tuple[str, ...], expires: int | None) -> None:
    registrar = make_registrar()
    login(registrar, cseq=1)
    response = answered(login(registrar, contacts=contacts, expires=expires, cseq=2))
    assert response.status == 400
    assert len(registrar.bindings.lookup("100")) == 1


def test_a_register_without_contact_is_a_query() -> None:
    registrar = make_registrar()
    assert contacts_of(answered(login(registrar, contacts=()))) == {}
    login(registrar, expires=900, cseq=2)
    response = answered(login(registrar, contacts=(), cseq=3))
    assert (response.status, contacts_of(response)) == (200, {"sip:100@127.0.0.1:5061": 900})
    assert contacts_of(answered(login(registrar, user="101", contacts=()))) == {}  # another number's own list


def test_too_brief_gets_423_with_min_expires_and_binds_nothing() -> None:
    registrar = make_registrar()
    response = answered(login(registrar, expires=30))
    assert (response.status, response.headers.get("Min-Expires")) == (423, "60")
    response = answered(login(registrar, contacts=("<sip:100@127.0.0.1:5061>;expires=59",)))
    assert response.status == 423
    assert registrar.bindings.lookup("100") == []
    assert answered(login(registrar, expires=60)).status == 200


def test_out_of_order_cseq_for_the_same_call_id_is_500() -> None:
    registrar = make_registrar()
    login(registrar, cseq=5, expires=600)
    for cseq in (5, 4):
        response = answered(login(registrar, cseq=cseq, expires=1200))
        assert (response.status, response.reason) == (500, "Server Internal Error")
    assert contacts_of(answered(login(registrar, contacts=(), cseq=6))) == {"sip:100@127.0.0.1:5061": 600}
    assert answered(login(registrar, cseq=1, call_id="other-call", expires=1200)).status == 200


def forbidden_shape(response: Response) -> tuple[int, str, frozenset[str]]:
    return response.status, response.reason, response.headers.keys()


def test_wrong_password_unknown_user_and_other_number_all_get_the_same_bare_403() -> None:
    registrar = make_registrar()
    wrong_password = register(authorization=digest(fresh_nonce(registrar), password="guess"))
    unknown_user = register(to_user="555", authorization=digest(fresh_nonce(registrar), username="555"))
    # 101's correct password, used to register 100: a phone may only register its own number.
    other_number = register(
        to_user="100", authorization=digest(fresh_nonce(registrar), username="101", password=PASSWORDS["101"])
    )
    wrong_realm = register(authorization=digest(fresh_nonce(registrar), realm="elsewhere"))
    forged_nonce = register(authorization=digest("AAAA" + fresh_nonce(registrar)[4:]))
    unsupported = register(authorization=digest(fresh_nonce(registrar)).replace("algorithm=MD5", "algorithm=MD5-sess"))
    answers = [
        answered(registrar.handle(r, PHONE))
        for r in (wrong_password, unknown_user, other_number, wrong_realm, forged_nonce, unsupported)
    ]
    shapes = {forbidden_shape(a) for a in answers}
    assert shapes == {(403, "Forbidden", frozenset({"via", "from", "to", "call-id", "cseq"}))}
    assert all(a.body == b"" and a.to_addr.tag for a in answers)
    assert registrar.bindings.lookup("100") == []


@pytest.mark.parametrize(
    ("field", "garbage"), [(b'username="100"', b'username="1\xff0"'), (b'response="', b'response="\xc3\xa9')]
)
def test_credentials_that_are_not_text_are_refused_not_a_crash(field: bytes, garbage: bytes) -> None:
    registrar = make_registrar()
    wire = register(authorization=digest(fresh_nonce(registrar))).to_bytes()
    assert field in wire
    request = parse(wire.replace(field, garbage))
    assert isinstance(request, Request)
    assert answered(registrar.handle(request, PHONE)).status == 403


def test_stale_nonce_gets_a_new_challenge_not_a_failure() -> None:
    clock = Clock()
    lockout = Lockout(LockoutSection(free_failures=0), clock=clock)  # any failure would show as a delay
    registrar = make_registrar(clock, lockout)
    nonce = fresh_nonce(registrar)
    clock.now += 61
    decision = registrar.handle(register(authorization=digest(nonce, algorithm="MD5")), PHONE)
    response = answered(decision)
    assert (response.status, decision.delay) == (401, 0.0)
    challenges = [challenge_params(v) for v in response.headers.get_all("WWW-Authenticate")]
    assert all(c["stale"] == "true" and c["nonce"] != nonce for c in challenges)
    # Stale only vouches for a right digest: a stale nonce with a wrong password is a plain failure.
    stale_and_wrong = register(authorization=digest(nonce, password="guess"))
    assert answered(registrar.handle(stale_and_wrong, PHONE)).status == 403
    retry = register(authorization=digest(challenges[0]["nonce"], algorithm="MD5"))
    assert answered(registrar.handle(retry, PHONE)).status == 200


def test_a_replayed_nonce_count_is_refused() -> None:
    registrar = make_registrar()
    nonce = fresh_nonce(registrar)
    request_bytes = register(cseq=1, authorization=digest(nonce, nc=1)).to_bytes()
    first = parse(request_bytes)
    assert isinstance(first, Request)
    assert answered(registrar.handle(first, PHONE)).status == 200
    replay = parse(request_bytes)
    assert isinstance(replay, Request)
    assert answered(registrar.handle(replay, PHONE)).status == 403
    lower = register(cseq=2, authorization=digest(nonce, nc=1))
    assert answered(registrar.handle(lower, PHONE)).status == 403


def test_lockout_delays_then_drops_the_failing_account_only() -> None:
    clock = Clock()
    settings = LockoutSection(free_failures=2, lock_failures=5, window=3600, lock_seconds=300)
    registrar = make_registrar(clock, Lockout(settings, clock=clock))
    attacker = ("192.0.2.66", 40000)
    delays = []
    for attempt in range(5):
        nonce = fresh_nonce(registrar, attacker)
        decision = registrar.handle(register(authorization=digest(nonce, password=f"guess-{attempt}")), attacker)
        assert answered(decision).status == 403
        delays.append(decision.delay)
    # Two failures are free; each one after that doubles the wait; the fifth locks the account.
    assert delays[:2] == [0.0, 0.0] and 0 < delays[2] < delays[3] < delays[4]
    # Locked: dropped, even with the right password, from anywhere.
    assert registrar.handle(register(), attacker) == Decision(None, 0.0, None)
    assert registrar.handle(register(), PHONE).response is None
    decision = login(registrar, "101", source=attacker)  # another account, even from the guesser
    assert (answered(decision).status, decision.number) == (200, "101")
    clock.now += 301
    assert answered(login(registrar, source=PHONE, cseq=2)).status == 200


def test_success_forgives_the_source_its_typos_for_that_account_only() -> None:
    clock = Clock()
    settings = LockoutSection(free_failures=8, lock_failures=9, source_free_failures=2)
    registrar = make_registrar(clock, Lockout(settings, clock=clock))
    for user in ("100", "100", "101"):
        nonce = fresh_nonce(registrar, user=user)
        registrar.handle(register(to_user=user, authorization=digest(nonce, user, password="typo")), PHONE)
    assert registrar.handle(register(), PHONE).delay > 0
    assert answered(login(registrar)).status == 200
    # The source still has its failure on 101 (2 are free), no longer those on 100.
    assert registrar.handle(register(to_user="102"), PHONE).delay == 0.0
    nonce = fresh_nonce(registrar, user="101")
    registrar.handle(register(to_user="101", authorization=digest(nonce, "101", password="typo")), PHONE)
    assert registrar.handle(register(to_user="102"), PHONE).delay > 0


def test_passwords_and_digests_never_reach_the_logs_or_answers(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    registrar = make_registrar()
    wrong = digest(fresh_nonce(registrar), password="guess-secret")
    outputs = [answered(registrar.handle(register(authorization=wrong), PHONE)).to_bytes()]
    right = digest(fresh_nonce(registrar))
    outputs.append(answered(registrar.handle(register(authorization=right), PHONE)).to_bytes())
    leaked = [*PASSWORDS.values(), "guess-secret", *(auth.split('response="')[1][:32] for auth in (wrong, right))]
    text = caplog.text + b"".join(outputs).decode()
    assert caplog.records  # the refusal is logged...
    assert not [secret for secret in leaked if secret in text]  # ...without any secret
    assert "Secret(***)" in repr(AccountEntry("100", Secret(PASSWORDS["100"])))


def test_a_locked_out_flood_writes_a_line_a_minute_not_a_line_a_packet(caplog: pytest.LogCaptureFixture) -> None:
    registrar = make_registrar()
    for _ in range(40):  # wrong passwords from one source until it is locked out
        challenge = registrar.handle(register(), PHONE).response
        if challenge is None:
            break
        nonce = challenge_params(challenge.headers.get_all("WWW-Authenticate")[0])["nonce"]
        registrar.handle(register(authorization=digest(nonce, password="guess")), PHONE)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="services.sipgw.registrar.registrar"):
        for _ in range(2000):
            assert registrar.handle(register(), PHONE).response is None  # dropped unanswered
    dropped = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert len(dropped) <= 1, len(dropped)


def test_a_number_without_an_account_is_offered_what_the_accounts_are_always_the_same() -> None:
    # 100 keeps the server's MD5, 101 is held to SHA-256: an unknown number must not stand out by
    # getting MD5 alone, nor by its set changing from one request to the next.
    registrar = make_registrar(account_algorithms={"101": ("SHA-256",)})
    offered = {str(n): tuple(algorithms_offered(registrar, str(n))) for n in range(200, 400)}
    assert set(offered.values()) == {("MD5",), ("SHA-256",)}
    share = sum(1 for s in offered.values() if s == ("SHA-256",)) / len(offered)
    assert 0.35 < share < 0.65  # one account in two has SHA-256: about one number in two
    assert all(tuple(algorithms_offered(registrar, n)) == s for n, s in list(offered.items())[:20])
    # A restart (the same accounts) offers each number the same again.
    again = make_registrar(account_algorithms={"101": ("SHA-256",)})
    assert all(tuple(algorithms_offered(again, n)) == s for n, s in list(offered.items())[:20])
    # Known numbers are unchanged, and so is a server whose accounts all keep its list.
    assert algorithms_offered(registrar, "100") == ["MD5"] and algorithms_offered(registrar, "101") == ["SHA-256"]
    assert {tuple(algorithms_offered(make_registrar(), str(n))) for n in range(200, 240)} == {("MD5",)}


def test_an_unknown_user_costs_the_same_hashing_and_time_as_a_wrong_password(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.sipgw.auth import verify_response as verify

    hashed: list[tuple[str, str]] = []

    def counted(params: dict[str, str], method: str, password: str) -> bool:
        hashed.append((params["username"], params.get("algorithm", "MD5")))
        return verify(params, method, password)

    monkeypatch.setattr("services.sipgw.registrar.registrar.verify_response", counted)
    patient = LockoutSection(free_failures=999, lock_failures=1000, source_free_failures=999, source_lock_failures=1000)
    registrar = make_registrar(lockout=Lockout(patient))  # never slowed: the timing is the check's own
    nonce = fresh_nonce(registrar)
    wrong = register(authorization=digest(nonce, password="guess"))
    unknown = register(to_user="555", authorization=digest(nonce, username="555", password="guess"))
    for request in (wrong, unknown):
        assert answered(registrar.handle(request, PHONE)).status == 403
    assert hashed == [("100", "MD5"), ("555", "MD5")]  # one digest each, the same algorithm

    timings: dict[str, list[float]] = {"wrong": [], "unknown": []}
    for _ in range(3000):  # interleaved, so that the machine's load weighs on both alike
        for name, request in (("wrong", wrong), ("unknown", unknown)):
            start = time.perf_counter()
            registrar.handle(request, PHONE)
            timings[name].append(time.perf_counter() - start)
    wrong_median, unknown_median = (sorted(t)[len(t) // 2] for t in timings.values())
    assert 0.8 < unknown_median / wrong_median < 1.25, (wrong_median, unknown_median)
