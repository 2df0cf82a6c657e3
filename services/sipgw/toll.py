"""The toll fraud guard: who may call out to the PSTN, and how much.

An external call (one that leaves through a provider, here or on a router server) needs a source
that proved who it is: a phone that passed digest, a client of the API's control role, a scenario
rule that says ``allow_external``, or a trunk call from a member of the group. A call that came in
from a provider never goes back out to one unless such a rule says so: relaying PSTN to PSTN is
how stolen minutes are sold.

Each caller number and the server as a whole may hold so many external calls at once and start so
many a minute (``external`` in the config). A refused call gets 403 (not allowed at all) or 503
(a limit: try later), a log line naming its source, and a count by reason.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable

from services.runtime.config_pstn import ExternalSection

_log = logging.getLogger(__name__)

Failure = tuple[int, str]
WINDOW = 60.0  # seconds of the per-minute limits
# Where a call comes from, as the guard sees it.
PHONE, API, TRUNK, PROVIDER, SCENARIO = "phone", "api", "trunk", "provider", "scenario"
ALLOWED = (PHONE, API, TRUNK, SCENARIO)


class TollGuard:
    def __init__(self, section: ExternalSection, clock: Callable[[], float] = time.monotonic):
        self.section = section
        self.clock = clock
        self.active: collections.Counter[str] = collections.Counter()  # caller number -> calls out now
        self.total = 0
        self._starts: dict[str, collections.deque[float]] = {}
        self._server_starts: collections.deque[float] = collections.deque()
        self.refused: collections.Counter[str] = collections.Counter()  # reason -> count

    def admit(self, caller: str, origin: str, source: str, number: str) -> Callable[[], None] | Failure:
        """Takes one external call for ``caller``: the function that gives it back (once) when the
        call ends, or the failure to answer with."""
        if origin not in ALLOWED:
            return self._refuse("origin", 403, f"external calls are not allowed from {origin}", caller, source, number)
        s, now = self.section, self.clock()
        starts = self._starts.setdefault(caller, collections.deque())
        for window in (starts, self._server_starts):
            while window and now - window[0] >= WINDOW:
                window.popleft()
        if self.active[caller] >= s.calls_per_number:
            return self._refuse(
                "calls_per_number", 503, f"{caller} has {s.calls_per_number} external calls", caller, source, number
            )
        if self.total >= s.calls_per_server:
            return self._refuse(
                "calls_per_server", 503, f"the server has {s.calls_per_server} external calls", caller, source, number
            )
        if len(starts) >= s.per_minute_per_number:
            return self._refuse(
                "per_minute_per_number",
                503,
                f"{caller} started {s.per_minute_per_number} external calls this minute",
                caller,
                source,
                number,
            )
        if len(self._server_starts) >= s.per_minute_per_server:
            return self._refuse(
                "per_minute_per_server",
                503,
                f"the server started {s.per_minute_per_server} external calls this minute",
                caller,
                source,
                number,
            )
        starts.append(now)
        self._server_starts.append(now)
        self.active[caller] += 1
        self.total += 1
        given = False

        def give_back() -> None:
            nonlocal given
            if given:
                return
            given = True
            self.active[caller] -= 1
            if self.active[caller] <= 0:
                del self.active[caller]
            self.total -= 1

        return give_back

    def _refuse(self, reason: str, status: int, why: str, caller: str, source: str, number: str) -> Failure:
        self.refused[reason] += 1
        _log.warning("external call refused: %s (caller %s from %s, to %s)", why, caller, source, number)
        if not self._starts.get(caller):
            self._starts.pop(caller, None)  # keep no state for callers that never got a call out
        text = "Forbidden" if status == 403 else "Service Unavailable"
        return (status, f"{text} ({why})")
