"""Slows down, then locks out, password guessing: per account over hours, per source over minutes.

A dictionary attack against a registrar without this finds a weak password in under a second. Two
tables count failed authentications (thresholds: ``sip.lockout``, see ``LockoutSection``):

    account  the number whose password was tried, known or not (an unknown number is counted and
             locked exactly like a known one, so the lockout never tells which numbers exist).
             After ``free_failures`` failures within ``window`` (a day by default) every answer
             for it is delayed, the delay doubling with each failure up to ``max_delay``; at
             ``lock_failures`` it is locked for ``lock_seconds``, and while those failures stay in
             the window each further failure locks it again for twice as long (up to
             ``max_lock_seconds``). However slowly a guesser goes, an account gets about
             ``lock_failures`` plus a few guesses answered per window.
    source   the address requests come from: the same over ``source_window`` (minutes), against
             floods and guessing across many accounts.

A locked account or source gets no answer at all: nothing is checked, nothing is counted.

The rules that keep the lockout from being walked around or turned against real phones:

- A success forgives nothing on the account (its failures age out of the window, or an operator
  unlocks it), and on the source only the failures for the account that just got in (a phone's
  own typos): a success for one account never forgives failures on another.
- A locked source does not lock out a phone behind the same address (NAT) with the right password:
  an account that authenticated from that address within ``TRUST_SECONDS`` and is not itself
  under attack (no delay, no lock) is let through a locked or slowed source. A guesser sharing the
  address gains nothing by it: each failure still counts on the account, whose own delay and lock
  then shut it out too.
- Every table is bounded (``MAX_ACCOUNTS``, ``MAX_SOURCES``, ``MAX_TRUSTED``): the records least
  recently failed (or trusted) go first.
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Literal

from services.runtime.config_lockout import LockoutSection

MAX_ACCOUNTS = 100_000
MAX_SOURCES = 100_000
MAX_TRUSTED = 100_000
TRUST_SECONDS = 86400.0
MAX_KEY = 64  # a claimed user name longer than this is counted under its first 64 characters
BASE_DELAY = 0.25
MAX_DELAY = 4.0

Kind = Literal["account", "source"]


@dataclasses.dataclass(frozen=True)
class Verdict:
    """What to do with a request before its credentials are looked at; ``by`` names the table
    that slowed or locked it."""

    action: Literal["allow", "delay", "locked"]
    delay: float = 0.0
    by: Kind | None = None


@dataclasses.dataclass(frozen=True)
class LockoutEntry:
    """One account or source with failures on record, as an operator sees it."""

    kind: Kind
    key: str
    failures: int  # within the window
    locked_for: float  # seconds until the lock ends; 0 when not locked
    delay: float  # what its next answer waits, when not locked


@dataclasses.dataclass
class _Record:
    # (time, the other key: the source of an account's failure, the account of a source's).
    failures: deque[tuple[float, str]]
    locked_until: float = 0.0
    locks: int = 0  # locks since its failures last all aged out: each lasts twice the one before


class _Table:
    """Failures of one kind within a window, with their delay and lock."""

    def __init__(self, free: int, lock: int, window: float, lock_seconds: float, max_lock: float, limit: int):
        self.free, self.lock, self.window = free, lock, window
        self.lock_seconds, self.max_lock, self.limit = lock_seconds, max_lock, limit
        self.records: OrderedDict[str, _Record] = OrderedDict()

    def current(self, key: str, now: float) -> _Record | None:
        """The record of ``key`` with aged-out failures dropped; None (and forgotten) when empty."""
        record = self.records.get(key)
        if record is None:
            return None
        while record.failures and now - record.failures[0][0] > self.window:
            record.failures.popleft()
        if not record.failures and record.locked_until <= now:
            del self.records[key]
            return None
        return record

    def delay(self, record: _Record | None, base: float, ceiling: float) -> float:
        extra = len(record.failures) - self.free if record is not None else -1
        return 0.0 if extra < 0 else min(ceiling, base * 2 ** min(extra, 32))

    def fail(self, key: str, other: str, now: float) -> None:
        record = self.current(key, now) or _Record(deque(maxlen=self.lock))
        record.failures.append((now, other))
        if len(record.failures) >= self.lock:
            record.locked_until = now + min(self.max_lock, self.lock_seconds * 2 ** min(record.locks, 32))
            record.locks += 1
        self.records[key] = record
        self.records.move_to_end(key)
        while len(self.records) > self.limit:
            self.records.popitem(last=False)


class Lockout:
    """Counts failed authentications per account and per source, and says who waits or is refused."""

    def __init__(
        self,
        settings: LockoutSection | None = None,
        clock: Callable[[], float] = time.monotonic,
        base_delay: float = BASE_DELAY,
        max_delay: float = MAX_DELAY,
    ):
        s = self.settings = settings if settings is not None else LockoutSection()
        self._accounts = _Table(
            s.free_failures, s.lock_failures, s.window, s.lock_seconds, s.max_lock_seconds, MAX_ACCOUNTS
        )
        # A source's lock does not grow: a busy NAT must get its turn back after source_lock_seconds.
        self._sources = _Table(
            s.source_free_failures,
            s.source_lock_failures,
            s.source_window,
            s.source_lock_seconds,
            s.source_lock_seconds,
            MAX_SOURCES,
        )
        self._trusted: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._clock = clock
        self.base_delay, self.max_delay = base_delay, max_delay
        # Requests dropped unanswered because an account or a source was locked, since start.
        self.refused: dict[Kind, int] = {"account": 0, "source": 0}

    def check(self, account: str, source: str) -> Verdict:
        """What to do with a request from ``source`` that claims ``account``, before looking at its
        credentials (so that the answer's timing never depends on them)."""
        account = account[:MAX_KEY]
        now = self._clock()
        claimed = self._accounts.current(account, now)
        if claimed is not None and claimed.locked_until > now:
            self.refused["account"] += 1
            return Verdict("locked", 0.0, "account")
        account_delay = self._accounts.delay(claimed, self.base_delay, self.max_delay)
        if account_delay == 0.0 and self._is_trusted(account, source, now):
            return Verdict("allow")  # a phone known at this address, its account not under attack
        origin = self._sources.current(source, now)
        if origin is not None and origin.locked_until > now:
            self.refused["source"] += 1
            return Verdict("locked", 0.0, "source")
        source_delay = self._sources.delay(origin, self.base_delay, self.max_delay)
        if account_delay == source_delay == 0.0:
            return Verdict("allow")
        by: Kind = "account" if account_delay >= source_delay else "source"
        return Verdict("delay", max(account_delay, source_delay), by)

    def failed(self, account: str, source: str) -> None:
        """A wrong password (or any other failure) for ``account`` from ``source``."""
        account = account[:MAX_KEY]
        now = self._clock()
        self._accounts.fail(account, source, now)
        self._sources.fail(source, account, now)

    def succeeded(self, account: str, source: str) -> None:
        """``account`` authenticated from ``source``: trust the pair; forgive the source its failures
        for this account only. The account's own failures stay until they age out."""
        account = account[:MAX_KEY]
        now = self._clock()
        origin = self._sources.current(source, now)
        if origin is not None and any(other == account for _, other in origin.failures):
            kept = [(t, other) for t, other in origin.failures if other != account]
            origin.failures = deque(kept, maxlen=origin.failures.maxlen)
        self._trusted[(account, source)] = now
        self._trusted.move_to_end((account, source))
        while len(self._trusted) > MAX_TRUSTED:
            self._trusted.popitem(last=False)

    def _is_trusted(self, account: str, source: str, now: float) -> bool:
        since = self._trusted.get((account, source))
        return since is not None and now - since <= TRUST_SECONDS

    # What an operator sees and does (the gateway's ListLockouts and Unlock).

    def entries(self, include_failing: bool = False) -> list[LockoutEntry]:
        """Locked accounts and sources (with ``include_failing``, also those with failures on record),
        locked first, longest lock first."""
        now = self._clock()
        found: list[LockoutEntry] = []
        tables: tuple[tuple[Kind, _Table], ...] = (("account", self._accounts), ("source", self._sources))
        for kind, table in tables:
            for key in list(table.records):
                record = table.current(key, now)
                if record is None:
                    continue
                locked_for = max(0.0, record.locked_until - now)
                if locked_for or include_failing:
                    delay = table.delay(record, self.base_delay, self.max_delay)
                    found.append(LockoutEntry(kind, key, len(record.failures), locked_for, delay))
        found.sort(key=lambda e: (-e.locked_for, e.kind, e.key))
        return found

    def unlock(self, key: str) -> list[Kind]:
        """Forgets every failure and lock of account or source ``key``; which kinds it was."""
        cleared: list[Kind] = []
        if self._accounts.records.pop(key[:MAX_KEY], None) is not None:
            cleared.append("account")
        if self._sources.records.pop(key, None) is not None:
            cleared.append("source")
        return cleared

    def locked(self, kind: Kind) -> int:
        """How many accounts (or sources) are locked now."""
        now = self._clock()
        table = self._accounts if kind == "account" else self._sources
        return sum(1 for record in table.records.values() if record.locked_until > now)
