"""Config sections for calls: phone accounts, the inter-server trunk and routing scenarios.

A scenario is a short list of rules tried in order: the first whose ``match`` fits the call runs its
one action. Patterns are regular expressions matched against the whole number ("1.." is 100-199).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re

from services.runtime._loader import ConfigError, Secret
from services.runtime.config_admission import (
    PHONES_RATE,
    SCANNER_AGENTS,
    RateLimitSection,
    validate_rate_limit,
    validate_user_agents,
)
from services.runtime.config_lockout import LockoutSection, validate_lockout

TEMPLATE_RE = re.compile(r"\$\{(\w+)\}")
TEMPLATE_FIELDS = ("called", "caller")
TARGET_RE = re.compile(r"[0-9*#+]{1,32}")
# A full address to call: the host is an IP address, as the gateway never resolves names.
URI_RE = re.compile(r"sip:(?P<user>[0-9*#+]{1,32})@(?P<host>\[[0-9A-Fa-f:.]+\]|[0-9.]+):(?P<port>[0-9]{1,5})")
MIN_SECRET = 16
MAX_LINES = 10_000
MIN_RING, MAX_RING = 5, 3600
MIN_SESSION, MAX_SESSION = 90, 86_400  # RFC 4028 Min-SE, a day
MAX_DRAIN = 3600


@dataclasses.dataclass(frozen=True)
class AccountEntry:
    """A phone's login: the number it registers as, and its digest password."""

    number: str
    password: Secret = dataclasses.field(default_factory=Secret)
    # This account's digest challenges, where it differs from sip.digest_algorithms (a phone
    # known to do SHA-256 can be held to it); empty: the server's.
    digest_algorithms: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class SipSection:
    accounts: tuple[AccountEntry, ...] = ()
    # Digest challenges in this order. MD5 alone by default: many phones (baresip/libre among them)
    # refuse a challenge set that offers any algorithm they cannot do, even beside MD5, so
    # SHA-256 (RFC 8760) is offered only where a server or an account asks for it.
    digest_algorithms: tuple[str, ...] = ("MD5",)
    # Seconds a call may ring before the caller gets 480 No Answer and the phones a CANCEL
    # (RFC 3261's Timer C, at most 3 minutes there, is the default).
    ring_timeout: int = 180
    # Seconds a call's session lasts without a refresh (RFC 4028): the gateway refreshes each leg
    # every half of it, and a party that no longer answers ends the call.
    session_expires: int = 1800
    # Where registrations are kept across restarts (a JSON file; empty: in memory only).
    bindings_file: str = ""
    # Seconds SIGTERM lets calls in progress finish (no new ones are taken) before the rest are
    # hung up with a Reason; Kubernetes' terminationGracePeriodSeconds leaves 10 s more.
    drain_seconds: int = 50
    # Password lockout thresholds: per account over hours, per source over minutes.
    lockout: LockoutSection = dataclasses.field(default_factory=LockoutSection)
    # Phones must use SIP over TLS (listen.sips): a request from a phone over UDP or TCP gets 403.
    require_tls: bool = False
    # Out-of-dialog requests one address may send (config_admission.py); beyond it, dropped unanswered.
    rate_limit: RateLimitSection = PHONES_RATE
    # Requests whose User-Agent names one of these products (scanners) are dropped unanswered.
    drop_user_agents: tuple[str, ...] = SCANNER_AGENTS


@dataclasses.dataclass(frozen=True)
class TrunkSection:
    """The group's shared trunk: the same secret on every server; ``lines`` caps calls in + out."""

    secret: Secret = dataclasses.field(default_factory=Secret)
    lines: int = 30
    # Secrets also accepted from peers, while the group changes its secret (see trunk_proof.py).
    accept_secrets: tuple[Secret, ...] = ()
    # Requests one peer address may send; unset: sized from ``lines`` (config_admission.trunk_rate).
    rate_limit: RateLimitSection | None = None


@dataclasses.dataclass(frozen=True)
class RuleMatch:
    called: str = ""
    caller: str = ""


@dataclasses.dataclass(frozen=True)
class ScenarioRule:
    match: RuleMatch = RuleMatch()
    dial: str = ""
    ring_department: str = ""
    forward: str = ""
    reject: int = 0
    # The rule's dial/forward may reach an external number (the PSTN). Off by default: a call
    # from a provider forwarded back out to a provider is how toll fraud pays.
    allow_external: bool = False


@dataclasses.dataclass(frozen=True)
class ScenariosSection:
    incoming: tuple[ScenarioRule, ...] = ()
    inter_server: tuple[ScenarioRule, ...] = ()


def validate_calls(
    sip: SipSection,
    trunk: TrunkSection,
    scenarios: ScenariosSection,
    own_numbers: set[str],
    departments: set[str],
    trunk_listen: str,
) -> None:
    """Checks the call sections against each other and against the numbering plan."""
    seen: set[str] = set()
    for i, account in enumerate(sip.accounts):
        key = f"sip.accounts[{i}]"
        if account.number not in own_numbers:
            raise ConfigError(f"{key}.number: {account.number!r} is not one of this server's numbers")
        if account.number in seen:
            raise ConfigError(f"{key}.number: duplicate account {account.number!r}")
        seen.add(account.number)
        if not account.password:
            raise ConfigError(f"{key}.password: a password is required")
        if account.digest_algorithms:
            _validate_algorithms(account.digest_algorithms, f"{key}.digest_algorithms")
    _validate_algorithms(sip.digest_algorithms, "sip.digest_algorithms")
    validate_lockout(sip.lockout)
    validate_rate_limit(sip.rate_limit, "sip.rate_limit")
    validate_user_agents(sip.drop_user_agents)
    validate_rate_limit(trunk.rate_limit, "trunk.rate_limit")
    if not MIN_RING <= sip.ring_timeout <= MAX_RING:
        raise ConfigError(f"sip.ring_timeout: {sip.ring_timeout} is not between {MIN_RING} and {MAX_RING} seconds")
    if not 0 <= sip.drain_seconds <= MAX_DRAIN:
        raise ConfigError(f"sip.drain_seconds: {sip.drain_seconds} is not between 0 and {MAX_DRAIN} seconds")
    if "\x00" in sip.bindings_file or len(sip.bindings_file) > 4096:
        raise ConfigError("sip.bindings_file: not a usable path")
    if not MIN_SESSION <= sip.session_expires <= MAX_SESSION:
        raise ConfigError(
            f"sip.session_expires: {sip.session_expires} is not between {MIN_SESSION} and {MAX_SESSION} seconds"
        )
    if not 1 <= trunk.lines <= MAX_LINES:
        raise ConfigError(f"trunk.lines: {trunk.lines} is not between 1 and {MAX_LINES}")
    if trunk_listen and len(trunk.secret.value) < MIN_SECRET:
        raise ConfigError(f"trunk.secret: at least {MIN_SECRET} characters are required when listen.trunk is set")
    for i, accepted in enumerate(trunk.accept_secrets):
        if len(accepted.value) < MIN_SECRET:
            raise ConfigError(f"trunk.accept_secrets[{i}]: at least {MIN_SECRET} characters are required")
    for name in ("incoming", "inter_server"):
        for i, rule in enumerate(getattr(scenarios, name)):
            _validate_rule(rule, f"scenarios.{name}[{i}]", departments)


def _validate_algorithms(algorithms: tuple[str, ...], key: str) -> None:
    if not algorithms or len(set(algorithms)) != len(algorithms) or not set(algorithms) <= {"MD5", "SHA-256"}:
        raise ConfigError(f"{key}: {list(algorithms)!r} must list MD5 and/or SHA-256, each once")


def _validate_rule(rule: ScenarioRule, key: str, departments: set[str]) -> None:
    for field in ("called", "caller"):
        pattern = getattr(rule.match, field)
        if pattern:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError(f"{key}.match.{field}: {pattern!r} is not a valid pattern ({exc.msg})") from None
    actions = [a for a in ("dial", "ring_department", "forward", "reject") if getattr(rule, a)]
    if len(actions) != 1:
        found = ", ".join(actions) or "none"
        raise ConfigError(f"{key}: exactly one of dial, ring_department, forward, reject is required (found {found})")
    if rule.dial:
        _validate_target(rule.dial, f"{key}.dial", allow_uri=False)
    if rule.forward:
        _validate_target(rule.forward, f"{key}.forward", allow_uri=True)
    if rule.ring_department and rule.ring_department not in departments:
        raise ConfigError(f"{key}.ring_department: unknown department {rule.ring_department!r}")
    if rule.reject and not 400 <= rule.reject <= 699:
        raise ConfigError(f"{key}.reject: {rule.reject} is not a SIP failure code (400-699)")


def parse_target_uri(text: str) -> tuple[str, str, int] | None:
    """``sip:number@ip:port`` as (number, ip, port); None if ``text`` is not one."""
    match = URI_RE.fullmatch(text)
    if match is None:
        return None
    host, port = match["host"].strip("[]"), int(match["port"])
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    if not 0 < port < 65536:
        return None
    return match["user"], host, port


def _validate_target(target: str, key: str, allow_uri: bool) -> None:
    for name in TEMPLATE_RE.findall(target):
        if name not in TEMPLATE_FIELDS:
            raise ConfigError(f"{key}: unknown placeholder ${{{name}}} in {target!r}")
    resolved = TEMPLATE_RE.sub("0", target)
    if TARGET_RE.fullmatch(resolved) or (allow_uri and parse_target_uri(resolved)):
        return
    what = "a number or sip:number@ip:port" if allow_uri else "a number"
    raise ConfigError(f"{key}: {target!r} is not {what} (placeholders: ${{called}}, ${{caller}})")
