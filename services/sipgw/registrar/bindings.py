"""Where each registered number can be reached: its contacts and when they expire.

Implements the binding rules of RFC 3261 section 10.3, steps 6-8: a number may have several
contacts; a REGISTER refreshes, adds or (with expires 0) removes them; "Contact: *" with expires
0 removes them all; a REGISTER whose Call-ID matches a binding but whose CSeq is not higher is
out of order and changes nothing. The clock is injectable; nothing here does I/O.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

MIN_EXPIRES = 60
MAX_EXPIRES = 3600
DEFAULT_EXPIRES = 3600
MAX_CONTACTS = 10


class OutOfOrder(ValueError):
    """The REGISTER is older than what the binding already holds (RFC 3261 10.3 step 7)."""


class IntervalTooBrief(ValueError):
    """The requested expiry is below MIN_EXPIRES: answer 423 with Min-Expires."""


@dataclasses.dataclass(frozen=True)
class Binding:
    contact: str  # the contact URI as the phone sent it
    source: str  # host:port the REGISTER came from: where requests are sent (NAT-safe)
    expires_at: float
    call_id: str
    cseq: int
    transport: str = "UDP"  # how the phone registered: requests to it go the same way

    def remaining(self, now: float) -> int:
        return max(0, int(self.expires_at - now))


class Bindings:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._by_number: dict[str, dict[str, Binding]] = {}
        self.on_change: Callable[[], None] = lambda: None  # told after every change (kept on disk)

    def restore(self, number: str, binding: Binding) -> bool:
        """A binding kept from before a restart, if it is still live and the number has room."""
        contacts = self._by_number.setdefault(number, {})
        if binding.expires_at <= self._clock() or len(contacts) >= MAX_CONTACTS:
            return False
        contacts[binding.contact] = binding
        return True

    def now(self) -> float:
        """The clock the bindings' expiry times are on."""
        return self._clock()

    def lookup(self, number: str) -> list[Binding]:
        """Live contacts of ``number``, the most recently refreshed first."""
        now = self._clock()
        contacts = self._by_number.get(number, {})
        for uri in [u for u, b in contacts.items() if b.expires_at <= now]:
            del contacts[uri]
        return sorted(contacts.values(), key=lambda b: b.expires_at, reverse=True)

    def numbers(self) -> list[str]:
        return sorted(n for n in self._by_number if self.lookup(n))

    def update(
        self,
        number: str,
        contacts: Sequence[tuple[str, int]],
        source: str,
        call_id: str,
        cseq: int,
        wildcard: bool = False,
        transport: str = "UDP",
    ) -> list[Binding]:
        """Applies one REGISTER: ``contacts`` is [(uri, expires)], ``wildcard`` is "Contact: *"
        (only valid with expires 0). Returns the number's bindings after it."""
        self.lookup(number)  # an expired binding must not make a new REGISTER look out of order
        now = self._clock()
        current = self._by_number.setdefault(number, {})
        if wildcard:
            for binding in current.values():
                if binding.call_id == call_id and cseq <= binding.cseq:
                    raise OutOfOrder(f"CSeq {cseq} is not above {binding.cseq}")
            current.clear()
            self.on_change()
            return []
        for uri, expires in contacts:
            old = current.get(uri)
            if old is not None and old.call_id == call_id and cseq <= old.cseq:
                raise OutOfOrder(f"CSeq {cseq} is not above {old.cseq}")
            if 0 < expires < MIN_EXPIRES:
                raise IntervalTooBrief(str(MIN_EXPIRES))
        for uri, expires in contacts:
            if expires == 0:
                current.pop(uri, None)
                continue
            current[uri] = Binding(uri, source, now + min(expires, MAX_EXPIRES), call_id, cseq, transport)
        if len(current) > MAX_CONTACTS:
            for uri, _ in sorted(current.items(), key=lambda item: item[1].expires_at)[: len(current) - MAX_CONTACTS]:
                del current[uri]
        self.on_change()
        return self.lookup(number)
