"""The password lockout through the registrar, with a fake clock: the ways around a per-source lock
(a success for another account, guessing slowly, and the real phone behind a guesser's NAT), and
the lockout's own rules (per account over hours, bounded tables, what an operator sees and undoes).
"""

from __future__ import annotations

import itertools

import pytest

from services.runtime import ConfigError
from services.runtime.config_lockout import LockoutSection, validate_lockout
from services.sipgw.auth import Lockout
from services.sipgw.auth import lockout as lockout_module
from services.sipgw.registrar import Decision, Registrar
from tests.unit.sipgw.test_registrar import (
    PASSWORDS,
    Clock,
    answered,
    challenge_params,
    digest,
    make_registrar,
    register,
)

Address = tuple[str, int]
ATTACKER: Address = ("192.0.2.66", 40000)
NAT_PHONE: Address = ("192.0.2.66", 5062)  # a real phone behind the attacker's address
ELSEWHERE: Address = ("198.51.100.7", 5060)
SIP_TIMEOUT = 32.0  # what a guesser waits for an answer that never comes (Timer F)
_call_ids = itertools.count(1)


def guess(registrar: Registrar, source: Address, user: str, password: str) -> Decision | None:
    """Challenge, then one REGISTER with ``password``; None when either went unanswered."""
    call_id = f"guess-{next(_call_ids)}@{source[0]}"
    challenge = registrar.handle(register(to_user=user, call_id=call_id), source)
    if challenge.response is None:
        return None
    nonce = challenge_params(challenge.response.headers.get_all("WWW-Authenticate")[0])["nonce"]
    authorization = digest(nonce, user, password)
    return registrar.handle(register(to_user=user, call_id=call_id, cseq=2, authorization=authorization), source)


def right(registrar: Registrar, source: Address, user: str) -> Decision | None:
    return guess(registrar, source, user, PASSWORDS[user])


def test_a_success_for_the_guessers_own_account_forgives_nothing_on_another() -> None:
    """4 wrong guesses at 100, one good login as 101 (the guesser's own account), ten times over."""
    clock = Clock()
    registrar = make_registrar(clock, Lockout(clock=clock))
    answered_guesses, delays = 0, []
    for round_ in range(10):
        for attempt in range(4):
            decision = guess(registrar, ATTACKER, "100", f"guess-{round_}-{attempt}")
            if decision is not None:
                assert answered(decision).status == 403
                answered_guesses += 1
                delays.append(decision.delay)
            clock.now += 0.0025
        own = right(registrar, ATTACKER, "101")
        assert own is not None and answered(own).status == 200  # the guesser's own account works
    assert answered_guesses <= 10, f"{answered_guesses} of 40 guesses at 100 answered"
    assert delays[:5] == [0.0] * 5 and all(d > 0 for d in delays[5:])  # slowed after 5 failures
    # 100 is locked for everyone now, the right password included, until its lock ends by itself.
    assert right(registrar, ELSEWHERE, "100") is None
    clock.now += LockoutSection().lock_seconds + 1
    back = right(registrar, ELSEWHERE, "100")
    assert back is not None and answered(back).status == 200


def test_a_patient_guesser_under_the_source_rate_is_still_locked_out() -> None:
    """40 guesses at 100, each after the answer to the one before, 5.5 s apart (219 s in all)."""
    clock = Clock()
    registrar = make_registrar(clock, Lockout(clock=clock))
    answered_guesses = 0
    for attempt in range(40):
        decision = guess(registrar, ATTACKER, "100", f"slow-{attempt}")
        if decision is not None:
            answered_guesses += 1
            clock.now += decision.delay
        clock.now += 5.5
    assert answered_guesses <= 10, f"{answered_guesses} of 40 slow guesses answered"


def test_over_a_day_a_patient_guesser_gets_a_few_dozen_answers_per_account() -> None:
    clock = Clock()
    registrar = make_registrar(clock, Lockout(clock=clock))
    start, answered_guesses = clock.now, 0
    while clock.now - start < 86400:
        decision = guess(registrar, ATTACKER, "100", "never-right")
        if decision is None:
            clock.now += SIP_TIMEOUT
        else:
            answered_guesses += 1
            clock.now += decision.delay + 5.5
    # 10 to the first lock, then one each time a lock (15 min, doubling up to a day) ends.
    assert answered_guesses <= 20, answered_guesses


def test_a_phone_behind_a_guessers_nat_still_gets_in() -> None:
    clock = Clock()
    registrar = make_registrar(clock, Lockout(clock=clock))
    first = right(registrar, NAT_PHONE, "101")
    assert first is not None and answered(first).status == 200
    # From the same address, a guesser tries one password on each of 30 numbers (none of 101):
    # the source is locked after 20 failures.
    for number in range(200, 230):
        guess(registrar, ATTACKER, str(number), "1234")
        clock.now += 0.01
    assert guess(registrar, ATTACKER, "100", "1234") is None  # the guesser gets nothing more
    refresh = right(registrar, NAT_PHONE, "101")
    assert refresh is not None and (answered(refresh).status, refresh.delay) == (200, 0.0)


def test_behind_a_locked_nat_a_phone_gets_in_unless_its_own_account_is_under_attack() -> None:
    clock = Clock()
    registrar = make_registrar(clock, Lockout(clock=clock))
    assert answered(right(registrar, NAT_PHONE, "101") or Decision(None)).status == 200
    for number in range(200, 225):
        guess(registrar, ATTACKER, str(number), "1234")
    # A phone that never got in from this address waits for the source's lock to end.
    assert right(registrar, NAT_PHONE, "100") is None
    # The guesser turns to 101 from behind the same address: a few answers, then 101 is under attack.
    answers = [guess(registrar, ATTACKER, "101", f"guess-{n}") for n in range(10)]
    assert sum(a is not None for a in answers) == LockoutSection().free_failures
    assert right(registrar, NAT_PHONE, "101") is None
    clock.now += LockoutSection().source_lock_seconds + 1
    later = right(registrar, NAT_PHONE, "100")
    assert later is not None and answered(later).status == 200


def test_an_unknown_number_is_slowed_and_locked_exactly_like_a_known_one() -> None:
    def run(user: str) -> list[tuple[int | None, float]]:
        clock = Clock()
        registrar = make_registrar(clock, Lockout(clock=clock))
        seen: list[tuple[int | None, float]] = []
        for attempt in range(14):
            decision = guess(registrar, ATTACKER, user, f"guess-{attempt}")
            seen.append((None, 0.0) if decision is None else (answered(decision).status, decision.delay))
            clock.now += 1
        return seen

    assert run("100") == run("555")


def test_account_locks_grow_while_failures_stay_in_the_window_then_age_out() -> None:
    now = [0.0]
    settings = LockoutSection(free_failures=1, lock_failures=3, window=3600, lock_seconds=60, max_lock_seconds=200)
    lockout = Lockout(settings, clock=lambda: now[0])
    for _ in range(3):
        lockout.failed("100", "a")
    assert lockout.check("100", "b") == lockout_module.Verdict("locked", 0.0, "account")
    locks = []
    for _ in range(3):
        until = now[0]
        while lockout.check("100", "b").action == "locked":
            now[0] += 1
        locks.append(now[0] - until)
        lockout.failed("100", "b")  # one more guess once the lock ends: locked again, longer
    assert locks == [60, 120, 200]  # doubling up to the 200 s ceiling
    now[0] += 3601
    assert lockout.check("100", "b").action == "allow"  # every failure aged out: a clean slate
    assert lockout.entries(include_failing=True) == []


def test_operators_list_and_unlock_accounts_and_sources() -> None:
    now = [0.0]
    lockout = Lockout(LockoutSection(lock_failures=6, source_lock_failures=8), clock=lambda: now[0])
    for n in range(8):
        lockout.failed("100" if n < 6 else "555", "192.0.2.66")
    entries = {(e.kind, e.key): e for e in lockout.entries()}
    assert set(entries) == {("account", "100"), ("source", "192.0.2.66")}
    assert entries["account", "100"].locked_for == 900 and entries["account", "100"].failures == 6
    assert [e.key for e in lockout.entries(include_failing=True) if e.locked_for == 0] == ["555"]
    assert (lockout.locked("account"), lockout.locked("source")) == (1, 1)
    lockout.check("100", "198.51.100.7")
    lockout.check("101", "192.0.2.66")
    assert lockout.refused == {"account": 1, "source": 1}
    assert lockout.unlock("100") == ["account"] and lockout.unlock("192.0.2.66") == ["source"]
    assert lockout.unlock("100") == [] and lockout.check("100", "192.0.2.66").action == "allow"


def test_every_table_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MAX_ACCOUNTS", "MAX_SOURCES", "MAX_TRUSTED"):
        monkeypatch.setattr(lockout_module, name, 50)
    lockout = Lockout(clock=lambda: 0.0)
    for n in range(500):
        lockout.failed(f"{n}" * 40, f"10.0.{n // 250}.{n % 250}")  # long user names are cut too
        lockout.succeeded(str(n), f"10.1.0.{n % 250}")
    assert len(lockout._accounts.records) == len(lockout._sources.records) == len(lockout._trusted) == 50
    assert max(len(key) for key in lockout._accounts.records) == lockout_module.MAX_KEY


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"window": 0}, "sip.lockout.window: 0 is not between"),
        ({"lock_failures": 5}, "sip.lockout.lock_failures: 5 must be above free_failures (5)"),
        ({"source_free_failures": -1}, "sip.lockout.source_free_failures: -1 is not between"),
        ({"lock_seconds": 600, "max_lock_seconds": 300}, "sip.lockout.max_lock_seconds: 300 is below"),
    ],
)
def test_lockout_settings_are_checked_with_the_key_named(fields: dict[str, int], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate_lockout(LockoutSection(**fields))
