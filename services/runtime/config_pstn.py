"""Config for the outside world: ``providers`` (this server's SIP trunks to telephone providers),
``routes`` (external numbers and how they go out) and ``external`` (the toll fraud guard).

A route with a ``provider`` is published to the group (the registry), so that servers without a
provider send matching calls to this one. A route without a provider is a local dialing rule: a
number that matches it is rewritten (``strip``, ``prepend``) before the routes are looked up, e.g.
a 7-digit city number to E.164. Patterns are regular expressions matched against the whole number.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re

from services.runtime._loader import ConfigError, Secret, max_length
from services.runtime.text import MAX_NAME

PROVIDER_NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
EXTERNAL_RE = re.compile(r"\+?[0-9*#]{1,32}")  # a dialled external number, or an E.164 one
# A configured provider address: an IP literal or a DNS name, with an optional port.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOST_RE = re.compile(rf"(?P<host>\[[0-9A-Fa-f:.]+\]|{_LABEL}(?:\.{_LABEL})*\.?)(?::(?P<port>[0-9]{{1,5}}))?")
TRANSPORTS = ("udp", "tcp")  # to a provider; TLS to providers is not there yet
CODECS = ("PCMU", "PCMA")
ANONYMOUS = "anonymous"
MAX_PATTERN = 200
MAX_PROVIDERS = 32
MAX_ROUTES = 1000
MAX_LINES = 10_000
MIN_EXPIRES, MAX_EXPIRES = 60, 86_400
MAX_LIMIT = 100_000


@dataclasses.dataclass(frozen=True)
class DidEntry:
    """A number the provider delivers, and the internal number (of any server) it reaches."""

    did: str
    number: str
    # True: the call runs this server's ``incoming`` scenario (CalledId = ``number``) instead of
    # ringing ``number`` directly.
    scenario: bool = False


@dataclasses.dataclass(frozen=True)
class ProviderEntry:
    name: str
    address: str  # host[:port]; a name is resolved per RFC 3263 (NAPTR, SRV, A)
    transport: str = ""  # udp or tcp; empty: what RFC 3263 finds, else udp
    username: str = dataclasses.field(default="", metadata=max_length(MAX_NAME))
    password: Secret = dataclasses.field(default_factory=Secret)
    # The SIP domain in Request-URIs, From and To when it is not the address's host.
    domain: str = ""
    register: bool = False  # outbound registration with username and password
    register_expires: int = 300
    lines: int = 30  # calls in and out through this provider at once
    # Addresses (or networks) the provider sends calls from; empty: the addresses ``address``
    # resolves to.
    allow_from: tuple[str, ...] = ()
    dids: tuple[DidEntry, ...] = ()
    codecs: tuple[str, ...] = CODECS


@dataclasses.dataclass(frozen=True)
class CallerIdEntry:
    """The caller id shown for calls from one number or one department of this server."""

    caller_id: str
    number: str = ""
    department: str = ""


@dataclasses.dataclass(frozen=True)
class RouteEntry:
    pattern: str
    provider: str = ""  # empty: a local dialing rule, not published
    strip: int = 0  # leading digits taken off
    prepend: str = ""  # put in front after the strip
    caller_id: str = ""  # shown to the outside; "anonymous" hides it; empty: the caller's number
    caller_ids: tuple[CallerIdEntry, ...] = ()
    priority: int = 100  # lower goes first, in this server and across the group


@dataclasses.dataclass(frozen=True)
class ExternalSection:
    """The toll fraud guard: external calls at once and per minute, per caller and per server."""

    calls_per_number: int = 2
    calls_per_server: int = 30
    per_minute_per_number: int = 10
    per_minute_per_server: int = 120


@dataclasses.dataclass(frozen=True)
class DnsSection:
    """Where the gateway resolves its providers' names (host:port each); empty: the system's
    resolver (/etc/resolv.conf). Only configured names are ever resolved."""

    servers: tuple[str, ...] = ()


def host_and_port(address: str) -> tuple[str, int | None]:
    """A provider address as (host, port or None); ValueError if it is neither."""
    match = HOST_RE.fullmatch(address)
    if match is None or len(address) > 255:
        raise ValueError(f"{address!r} is not host or host:port")
    host = match["host"].strip("[]")
    port = int(match["port"]) if match["port"] else None
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range")
    return host, port


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def apply_digits(number: str, strip: int, prepend: str) -> str:
    return prepend + number[strip:]


def validate_pstn(
    providers: tuple[ProviderEntry, ...],
    routes: tuple[RouteEntry, ...],
    external: ExternalSection,
    own_numbers: set[str],
    departments: set[str],
) -> None:
    if len(providers) > MAX_PROVIDERS:
        raise ConfigError(f"providers: {len(providers)} entries, at most {MAX_PROVIDERS}")
    names: set[str] = set()
    dids: set[str] = set()
    for i, provider in enumerate(providers):
        key = f"providers[{i}]"
        if not PROVIDER_NAME_RE.fullmatch(provider.name):
            raise ConfigError(f"{key}.name: {provider.name!r} does not match {PROVIDER_NAME_RE.pattern}")
        if provider.name in names:
            raise ConfigError(f"{key}.name: duplicate provider {provider.name!r}")
        names.add(provider.name)
        _validate_provider(provider, key, dids)
    if len(routes) > MAX_ROUTES:
        raise ConfigError(f"routes: {len(routes)} entries, at most {MAX_ROUTES}")
    for i, route in enumerate(routes):
        _validate_route(route, f"routes[{i}]", names, own_numbers, departments)
    for name in ("calls_per_number", "calls_per_server", "per_minute_per_number", "per_minute_per_server"):
        value = getattr(external, name)
        if not 0 <= value <= MAX_LIMIT:
            raise ConfigError(f"external.{name}: {value} is not between 0 and {MAX_LIMIT} (0: no external calls)")


def _validate_provider(provider: ProviderEntry, key: str, dids: set[str]) -> None:
    try:
        host, _ = host_and_port(provider.address)
    except ValueError as error:
        raise ConfigError(f"{key}.address: {error}") from None
    if provider.transport and provider.transport not in TRANSPORTS:
        raise ConfigError(f"{key}.transport: {provider.transport!r} is not one of {', '.join(TRANSPORTS)}")
    if provider.domain and not HOST_RE.fullmatch(provider.domain):
        raise ConfigError(f"{key}.domain: {provider.domain!r} is not a host name")
    if provider.register and not (provider.username and provider.password):
        raise ConfigError(f"{key}.register: username and password are required to register")
    if provider.password and not provider.username:
        raise ConfigError(f"{key}.password: set {key}.username too")
    if not MIN_EXPIRES <= provider.register_expires <= MAX_EXPIRES:
        raise ConfigError(
            f"{key}.register_expires: {provider.register_expires} is not between {MIN_EXPIRES} and {MAX_EXPIRES}"
        )
    if not 1 <= provider.lines <= MAX_LINES:
        raise ConfigError(f"{key}.lines: {provider.lines} is not between 1 and {MAX_LINES}")
    for j, source in enumerate(provider.allow_from):
        try:
            ipaddress.ip_network(source, strict=False)
        except ValueError:
            raise ConfigError(f"{key}.allow_from[{j}]: {source!r} is not an IP address or network") from None
    if not provider.allow_from and not is_ip(host) and provider.dids:
        # A name's addresses change with DNS; calls in are taken only from addresses written here.
        raise ConfigError(f"{key}.allow_from: required with dids when the address is a name ({host!r})")
    if not provider.codecs or not set(provider.codecs) <= set(CODECS):
        raise ConfigError(f"{key}.codecs: {list(provider.codecs)!r} must list some of {', '.join(CODECS)}")
    for j, entry in enumerate(provider.dids):
        if not EXTERNAL_RE.fullmatch(entry.did):
            raise ConfigError(f"{key}.dids[{j}].did: {entry.did!r} does not match {EXTERNAL_RE.pattern}")
        if entry.did in dids:
            raise ConfigError(f"{key}.dids[{j}].did: duplicate DID {entry.did!r}")
        dids.add(entry.did)
        if not re.fullmatch(r"[0-9*#+]{1,32}", entry.number):
            raise ConfigError(f"{key}.dids[{j}].number: {entry.number!r} is not an internal number")


def _validate_route(
    route: RouteEntry, key: str, providers: set[str], own_numbers: set[str], departments: set[str]
) -> None:
    compile_pattern(route.pattern, f"{key}.pattern")
    if route.provider and route.provider not in providers:
        raise ConfigError(f"{key}.provider: no provider named {route.provider!r} in providers")
    if not 0 <= route.strip <= 32:
        raise ConfigError(f"{key}.strip: {route.strip} is not between 0 and 32")
    if route.prepend and not EXTERNAL_RE.fullmatch(route.prepend):
        raise ConfigError(f"{key}.prepend: {route.prepend!r} does not match {EXTERNAL_RE.pattern}")
    if not 0 <= route.priority <= 65535:
        raise ConfigError(f"{key}.priority: {route.priority} is not between 0 and 65535")
    _caller_id(route.caller_id, f"{key}.caller_id")
    for j, entry in enumerate(route.caller_ids):
        sub = f"{key}.caller_ids[{j}]"
        _caller_id(entry.caller_id, f"{sub}.caller_id")
        if bool(entry.number) == bool(entry.department):
            raise ConfigError(f"{sub}: exactly one of number and department is required")
        if entry.number and entry.number not in own_numbers:
            raise ConfigError(f"{sub}.number: {entry.number!r} is not one of this server's numbers")
        if entry.department and entry.department not in departments:
            raise ConfigError(f"{sub}.department: unknown department {entry.department!r}")


def _caller_id(value: str, key: str) -> None:
    if value and value != ANONYMOUS and not EXTERNAL_RE.fullmatch(value):
        raise ConfigError(f"{key}: {value!r} is a number ({EXTERNAL_RE.pattern}) or {ANONYMOUS!r}")


def compile_pattern(pattern: str, key: str) -> re.Pattern[str]:
    if not pattern or len(pattern) > MAX_PATTERN:
        raise ConfigError(f"{key}: a pattern of 1-{MAX_PATTERN} characters is required")
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"{key}: {pattern!r} is not a valid pattern ({exc.msg})") from None
