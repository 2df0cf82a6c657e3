"""``sip.rate_limit``, ``trunk.rate_limit`` and ``sip.drop_user_agents``: what the gateway takes
from one source address before it does any work on a request (see README: "Floods and scanners")."""

from __future__ import annotations

import dataclasses
import re

from services.runtime._loader import ConfigError

MAX_RATE = 1_000_000
MAX_AGENTS = 200
AGENT_RE = re.compile(r"[\x21-\x7e]{1,64}")  # one product name: printable, no space
# What SIP scanners and password crackers call themselves in User-Agent (the product name, the
# value's first word before "/"): sipvicious and its "friendly-scanner", sipcli, VaxSIPUserAgent
# (the Vax SDK's default, used by crackers), SIPScan, sundayddr, iWar, SIParmyknife, pplsip.
# A real phone's user agent names its make; none of these is one.
SCANNER_AGENTS = (
    "friendly-scanner",
    "sipvicious",
    "sipcli",
    "VaxSIPUserAgent",
    "sip-scan",
    "SIPScan",
    "sundayddr",
    "iWar",
    "siparmyknife",
    "pplsip",
)


@dataclasses.dataclass(frozen=True)
class RateLimitSection:
    """Requests one source address may send: ``burst`` at once, then ``per_second``."""

    per_second: int
    burst: int


# Phones: out-of-dialog requests (REGISTER, INVITE, OPTIONS, SUBSCRIBE, ...) per address. A phone
# registering (2 requests with the challenge), subscribing to its keys at boot (a few dozen) and
# calling stays far below; the steady rate leaves room for a NAT with a hundred phones behind it
# (re-registrations, keepalives, calls). Requests inside a call go through whatever the rate.
PHONES_RATE = RateLimitSection(per_second=20, burst=200)
# The trunk, when trunk.rate_limit is not set: at least 2000 requests a second from each peer,
# more for a trunk of many lines. A call crossing the trunk sends about 5 requests each way
# (INVITE, ACK, BYE, a session refresh, an UPDATE), so 2000/s is 400 calls/s: twice a busy trunk
# at 200 calls/s. A trunk of many lines may turn them all over within a second (short calls):
# 5 requests a line a second covers that. The peers are the group's servers; the limit is only
# there to stop one address flooding the trunk with junk or bad proofs before any HMAC is done.
TRUNK_MIN_RATE = 2000
TRUNK_PER_LINE = 5


def trunk_rate(section: RateLimitSection | None, lines: int) -> RateLimitSection:
    """trunk.rate_limit as set, else sized from trunk.lines (see TRUNK_MIN_RATE)."""
    if section is not None:
        return section
    per_second = max(TRUNK_MIN_RATE, TRUNK_PER_LINE * lines)
    return RateLimitSection(per_second=per_second, burst=2 * per_second)


def validate_rate_limit(section: RateLimitSection | None, key: str) -> None:
    if section is None:
        return
    if not 1 <= section.per_second <= MAX_RATE:
        raise ConfigError(f"{key}.per_second: {section.per_second} is not between 1 and {MAX_RATE}")
    if not 1 <= section.burst <= MAX_RATE:
        raise ConfigError(f"{key}.burst: {section.burst} is not between 1 and {MAX_RATE}")


def validate_user_agents(agents: tuple[str, ...], key: str = "sip.drop_user_agents") -> None:
    if len(agents) > MAX_AGENTS:
        raise ConfigError(f"{key}: {len(agents)} entries, at most {MAX_AGENTS}")
    for i, agent in enumerate(agents):
        if not AGENT_RE.fullmatch(agent) or "/" in agent:
            raise ConfigError(f"{key}[{i}]: {agent!r} is not a product name (1-64 characters, no space or /)")
