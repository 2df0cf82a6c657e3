"""Password lockout figures: how many guesses at one account get any answer in a day.

A simulated day on a fake clock through the registrar itself (real REGISTER requests, real digest
checks, the default ``sip.lockout``): each guess is a challenge and an answer with a wrong password.

1. Slow raw guesser: one address, waits for each answer (the delay the lockout adds included),
   then 5.5 s more; an unanswered request costs it the 32 s a SIP client waits (Timer F).
2. Fast guesser: one address, 50 guesses a second, never waiting for answers.
3. Spread guesser: the fast one from 1,000 addresses in turn (a botnet, or a NAT pool).
4. Across accounts: one password tried on each of 1,000 numbers from one address, as fast as it
   goes: how many numbers got an answer.

    .venv/bin/python bench/lockout_bench.py [--days 1]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "gen"))
sys.path.insert(0, str(ROOT))

from services.runtime import Secret  # noqa: E402
from services.runtime.config_calls import AccountEntry  # noqa: E402
from services.sipgw.auth import Lockout, NonceFactory, Verdict  # noqa: E402
from services.sipgw.registrar import Bindings, Registrar  # noqa: E402
from services.sipgw.sip import Request, parse  # noqa: E402

REALM = "bench.test"
SIP_TIMEOUT = 32.0
DAY = 86400.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Target:
    """A registrar with accounts 100-199, on a fake clock; ``guess`` tries one password."""

    def __init__(self) -> None:
        self.clock = Clock()
        accounts = [AccountEntry(str(n), Secret(f"right-{n}")) for n in range(100, 200)]
        self.lockout = Lockout(clock=self.clock)
        self.registrar = Registrar(
            accounts,
            REALM,
            bindings=Bindings(clock=self.clock),
            nonces=NonceFactory(key=b"b" * 32, clock=self.clock),
            lockout=self.lockout,
        )
        self.sequence = 0

    def guess(self, user: str, password: str, ip: str) -> float | None:
        """The delay of the answer to one guess; None when it got no answer."""
        self.sequence += 1
        source = (ip, 40000)
        challenge = self.registrar.handle(self._register(user, None), source)
        if challenge.response is None:
            return None
        value = challenge.response.headers.get_all("WWW-Authenticate")[0]
        nonce = value.split('nonce="', 1)[1].split('"', 1)[0]
        decision = self.registrar.handle(self._register(user, _digest(user, password, nonce)), source)
        return None if decision.response is None else decision.delay

    def _register(self, user: str, authorization: str | None) -> Request:
        lines = [
            "REGISTER sip:127.0.0.1:5060 SIP/2.0",
            f"Via: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bK-{self.sequence}-{authorization is None}",
            f"From: <sip:{user}@{REALM}>;tag=b{self.sequence}",
            f"To: <sip:{user}@{REALM}>",
            f"Call-ID: bench-{self.sequence}",
            f"CSeq: {1 if authorization is None else 2} REGISTER",
            f"Contact: <sip:{user}@127.0.0.1:40000>",
        ]
        if authorization:
            lines.append(f"Authorization: {authorization}")
        message = parse(("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode())
        assert isinstance(message, Request)
        return message


def _digest(user: str, password: str, nonce: str) -> str:
    def h(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()

    uri = "sip:127.0.0.1:5060"
    response = h(f"{h(f'{user}:{REALM}:{password}')}:{nonce}:00000001:c0ffee:auth:{h(f'REGISTER:{uri}')}")
    return (
        f'Digest username="{user}", realm="{REALM}", nonce="{nonce}", uri="{uri}", response="{response}", '
        'algorithm=MD5, qop=auth, nc=00000001, cnonce="c0ffee"'
    )


def slow_guesser(days: float) -> tuple[int, int]:
    target, sent, answered = Target(), 0, 0
    end = target.clock.now + days * DAY
    while target.clock.now < end:
        delay = target.guess("100", f"slow-{sent}", "192.0.2.66")
        sent += 1
        if delay is None:
            target.clock.now += SIP_TIMEOUT
        else:
            answered += 1
            target.clock.now += delay + 5.5
    return sent, answered


def fast_guesser(days: float, rate: float, addresses: int) -> tuple[int, int]:
    """Never waits for answers; while the account is locked, the guesses it sends are counted, not
    simulated one by one."""
    target, sent, answered = Target(), 0, 0
    end = target.clock.now + days * DAY
    while target.clock.now < end:
        if target.lockout.check("100", "192.0.2.1") == Verdict("locked", 0.0, "account"):
            # Sent into a lock: dropped unseen until it ends by itself.
            locked_for = next(e.locked_for for e in target.lockout.entries() if e.key == "100")
            skipped = max(1, int(min(locked_for, end - target.clock.now) * rate))
            sent += skipped
            target.clock.now += skipped / rate
            continue
        ip = f"10.{sent % addresses // 250}.{sent % 250}.1"
        if target.guess("100", f"fast-{sent}", ip) is not None:
            answered += 1
        sent += 1
        target.clock.now += 1 / rate
    return sent, answered


def across_accounts() -> int:
    target = Target()
    numbers = [str(n) for n in range(100, 1100)]  # 100-199 exist, the rest do not: all alike
    got = 0
    for number in numbers:
        if target.guess(number, "123456", "192.0.2.66") is not None:
            got += 1
        target.clock.now += 0.001
    return got


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=float, default=1.0)
    args = parser.parse_args()
    started = time.perf_counter()
    days = args.days
    print(f"password lockout, defaults of sip.lockout, {days:g} simulated day(s) on a fake clock")
    print(f"{'guesser':<44} {'guesses sent':>12} {'answered':>9} {'answered/day':>13}")
    rows = [
        ("slow raw guesser, waits for answers", *slow_guesser(days)),
        ("fast guesser, 50/s, one address", *fast_guesser(days, 50.0, 1)),
        ("fast guesser, 50/s, 1,000 addresses", *fast_guesser(days, 50.0, 1000)),
    ]
    for name, sent, answered in rows:
        print(f"{name:<44} {sent:>12,} {answered:>9,} {answered / days:>13,.1f}")
    print(f"one password across 1,000 numbers from one address: {across_accounts()} numbers answered")
    print(f"(simulated in {time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
