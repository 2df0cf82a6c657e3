"""The server config file: one file per server, read by every service of that server.

Later services add sections; a key that no section knows is an error, so a typo fails at start.
``load_config`` validates everything it can before any service binds a port.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from services.runtime._loader import ConfigError, Secret, load, max_length
from services.runtime.addresses import parse_host_port
from services.runtime.config_calls import (
    AccountEntry,
    RuleMatch,
    ScenarioRule,
    ScenariosSection,
    SipSection,
    TrunkSection,
    validate_calls,
)
from services.runtime.config_media import MediaSection, RecordingSection, validate_media
from services.runtime.config_pstn import DnsSection, ExternalSection, ProviderEntry, RouteEntry, validate_pstn
from services.runtime.logs import LOG_FORMATS
from services.runtime.text import MAX_NAME, MAX_PATH

SERVER_ID_RE = re.compile(r"[a-z0-9-]{1,63}")
GROUP_RE = re.compile(r"[A-Za-z0-9._-]{1,63}")
NUMBER_RE = re.compile(r"[0-9*#+]{1,32}")
DEPARTMENT_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,63}")
NUMBER_KINDS = ("user", "department", "ivr", "queue", "conference")
MIN_LEASE_TTL = 2
# etcd takes far longer TTLs, but a server that dies keeps its numbers for a TTL: an hour is
# already more than any group wants, and a typo (5000000) fails at start rather than at etcd.
MAX_LEASE_TTL = 3600
MAX_CONFIG_BYTES = 64 * 1024 * 1024  # a 100,000-number plan is a few MB
# Server-streaming RPCs (the watches) one client (a peer host) and the whole process may hold open.
DEFAULT_STREAMS_PER_CLIENT = 100
DEFAULT_STREAMS_TOTAL = 1000
MAX_STREAMS = 100_000
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclasses.dataclass(frozen=True)
class ServerSection:
    id: str
    name: str = dataclasses.field(default="", metadata=max_length(MAX_NAME))


@dataclasses.dataclass(frozen=True)
class TlsSection:
    """TLS toward etcd; a CA file turns it on, a cert and key file add a client certificate."""

    ca_file: str = dataclasses.field(default="", metadata=max_length(MAX_PATH))
    cert_file: str = dataclasses.field(default="", metadata=max_length(MAX_PATH))
    key_file: str = dataclasses.field(default="", metadata=max_length(MAX_PATH))
    server_name: str = ""


@dataclasses.dataclass(frozen=True)
class GroupTlsSection:
    """The server's own certificate from the group's CA: with it, every gRPC port takes mutual TLS
    only and every gRPC link presents it (services/runtime/tls.py). ``ca_file`` may hold two CAs
    while the group changes CA."""

    ca_file: str = dataclasses.field(default="", metadata=max_length(MAX_PATH))
    cert_file: str = dataclasses.field(default="", metadata=max_length(MAX_PATH))
    key_file: str = dataclasses.field(default="", metadata=max_length(MAX_PATH))

    @property
    def enabled(self) -> bool:
        return bool(self.ca_file)


@dataclasses.dataclass(frozen=True)
class ConnectorSection:
    """How the server reaches the group: the etcd cluster and the group's key prefix."""

    endpoints: tuple[str, ...] = ("127.0.0.1:2379",)
    username: str = ""
    password: Secret = dataclasses.field(default_factory=Secret)
    group: str = "main"
    lease_ttl: int = 5
    tls: TlsSection = TlsSection()


@dataclasses.dataclass(frozen=True)
class ListenSection:
    """Where each service listens; an empty address leaves that part off."""

    registry: str = "127.0.0.1:50051"
    sip: str = ""
    trunk: str = ""
    sipgw: str = ""
    callstate: str = ""
    media: str = ""  # the media service's API; the gateway anchors calls on it when set
    sips: str = ""  # phones' SIP over TLS (the server's tls certificate), beside listen.sip


@dataclasses.dataclass(frozen=True)
class ProbesSection:
    """Where each service also answers health checks (and reflection) in plain text, for
    orchestrators whose probes cannot present a client certificate; empty: no such port."""

    registry: str = ""
    sipgw: str = ""
    callstate: str = ""
    media: str = ""


@dataclasses.dataclass(frozen=True)
class AdvertiseSection:
    """Where the other servers reach this one's trunk and callstate, when that is not the address
    they listen on (a bind address like 0.0.0.0:5070, a Service name in Kubernetes). Host names are
    resolved by the other servers' gateways; empty: the listen address."""

    trunk: str = ""
    callstate: str = ""


@dataclasses.dataclass(frozen=True)
class DepartmentEntry:
    id: str
    name: str = dataclasses.field(default="", metadata=max_length(MAX_NAME))


@dataclasses.dataclass(frozen=True)
class NumberEntry:
    number: str
    name: str = dataclasses.field(default="", metadata=max_length(MAX_NAME))
    department: str = ""
    kind: str = "user"


@dataclasses.dataclass(frozen=True)
class NumberingSection:
    departments: tuple[DepartmentEntry, ...] = ()
    numbers: tuple[NumberEntry, ...] = ()


@dataclasses.dataclass(frozen=True)
class MetricsSection:
    """Where each service serves its Prometheus metrics (host:port); empty: no endpoint."""

    registry: str = ""
    sipgw: str = ""
    callstate: str = ""
    media: str = ""


@dataclasses.dataclass(frozen=True)
class TelemetrySection:
    """Traces go out over OTLP when an endpoint is set here or in OTEL_EXPORTER_OTLP_ENDPOINT."""

    otlp_endpoint: str = ""
    log_level: str = "info"
    log_format: str = "text"  # or json: one object a line, with call_id and trace_id on call lines
    metrics: MetricsSection = MetricsSection()


@dataclasses.dataclass(frozen=True)
class LimitsSection:
    """What one client and the whole process may hold of a service: beyond, RESOURCE_EXHAUSTED."""

    streams_per_client: int = DEFAULT_STREAMS_PER_CLIENT
    streams_total: int = DEFAULT_STREAMS_TOTAL


@dataclasses.dataclass(frozen=True)
class Config:
    server: ServerSection
    connector: ConnectorSection = ConnectorSection()
    listen: ListenSection = ListenSection()
    tls: GroupTlsSection = GroupTlsSection()
    probes: ProbesSection = ProbesSection()
    advertise: AdvertiseSection = AdvertiseSection()
    numbering: NumberingSection = NumberingSection()
    sip: SipSection = dataclasses.field(default_factory=SipSection)
    trunk: TrunkSection = dataclasses.field(default_factory=TrunkSection)
    scenarios: ScenariosSection = dataclasses.field(default_factory=ScenariosSection)
    media: MediaSection = dataclasses.field(default_factory=MediaSection)
    recording: RecordingSection = dataclasses.field(default_factory=RecordingSection)
    providers: tuple[ProviderEntry, ...] = ()
    routes: tuple[RouteEntry, ...] = ()
    external: ExternalSection = dataclasses.field(default_factory=ExternalSection)
    dns: DnsSection = dataclasses.field(default_factory=DnsSection)
    telemetry: TelemetrySection = TelemetrySection()
    limits: LimitsSection = LimitsSection()


def load_config(path: str | Path | None, environ: Mapping[str, str] | None = None) -> Config:
    """Reads, overrides from the environment and validates a config file (``None``: environment only)."""
    env = os.environ if environ is None else environ
    document: Any = {}
    if path is not None:
        document = _read_document(Path(path))
    config = load(Config, document, env)
    validate(config)
    return config


def _read_document(path: Path) -> Any:
    """The parsed file: a mapping, or ConfigError naming the file (never a traceback)."""
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc.__class__.__name__}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is larger than {MAX_CONFIG_BYTES // (1024 * 1024)} MB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start})") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}") from None
    except (ValueError, RecursionError):  # an integer of thousands of digits, nesting too deep
        raise ConfigError(f"config file {path} holds a value YAML cannot read") from None
    if document is None:
        return {}
    if not isinstance(document, Mapping):
        kind = "a list" if isinstance(document, list) else type(document).__name__
        raise ConfigError(f"config file {path}: expected a mapping of sections (server, connector...), got {kind}")
    return document


def _validate_tls(config: Config) -> None:
    t = config.tls
    given = [name for name in ("ca_file", "cert_file", "key_file") if getattr(t, name)]
    if not given:
        return
    if len(given) < 3:
        missing = next(name for name in ("ca_file", "cert_file", "key_file") if not getattr(t, name))
        raise ConfigError(f"tls.{missing}: required with tls.{given[0]} (ca_file, cert_file and key_file go together)")
    pems = []
    for name in ("ca_file", "cert_file", "key_file"):
        try:
            pems.append(Path(getattr(t, name)).read_bytes())
        except OSError as error:
            raise ConfigError(f"tls.{name}: cannot read {getattr(t, name)!r}: {error.strerror}") from None
    from services.runtime.pki import PkiError, check_pair

    try:
        identity = check_pair(*pems)
    except PkiError as error:
        raise ConfigError(f"tls.cert_file: {error}") from None
    if identity.kind != "server" or identity.name != config.server.id:
        raise ConfigError(f"tls.cert_file: the certificate is for {identity}, this is server {config.server.id}")


def validate(config: Config) -> None:
    """Checks what types alone cannot say; raises ConfigError naming the key and value."""
    _match(SERVER_ID_RE, config.server.id, "server.id")
    c = config.connector
    if not c.endpoints:
        raise ConfigError("connector.endpoints: at least one host:port is required")
    for i, endpoint in enumerate(c.endpoints):
        check_host_port(endpoint, f"connector.endpoints[{i}]")
    _match(GROUP_RE, c.group, "connector.group")
    if c.lease_ttl < MIN_LEASE_TTL:
        raise ConfigError(f"connector.lease_ttl: {c.lease_ttl} is below the minimum of {MIN_LEASE_TTL} seconds")
    if c.lease_ttl > MAX_LEASE_TTL:
        raise ConfigError(f"connector.lease_ttl: {c.lease_ttl} is above the maximum of {MAX_LEASE_TTL} seconds")
    if c.password and not c.username:
        raise ConfigError("connector.password: set connector.username too")
    for name in ("ca_file", "cert_file", "key_file"):
        value = getattr(c.tls, name)
        if value and not Path(value).is_file():
            raise ConfigError(f"connector.tls.{name}: no such file {value!r}")
    if (c.tls.cert_file or c.tls.key_file) and not (c.tls.cert_file and c.tls.key_file and c.tls.ca_file):
        raise ConfigError("connector.tls: a client certificate needs ca_file, cert_file and key_file")
    _validate_tls(config)
    if config.listen.sips:
        check_host_port(config.listen.sips, "listen.sips")
        if not config.tls.enabled:
            raise ConfigError("listen.sips: set tls too (its certificate is what phones see)")
    if config.sip.require_tls and not config.listen.sips:
        raise ConfigError("sip.require_tls: set listen.sips too (phones need a way in)")
    for name in ("registry", "sip", "trunk", "sipgw", "callstate", "media"):
        address = getattr(config.listen, name)
        if address or name == "registry":
            check_host_port(address, f"listen.{name}")
    for name in ("registry", "sipgw", "callstate", "media"):
        address = getattr(config.probes, name)
        if address:
            check_host_port(address, f"probes.{name}")
            if address == getattr(config.listen, name):
                raise ConfigError(f"probes.{name}: {address!r} is listen.{name} already (the probe port is another)")
    for name in ("trunk", "callstate"):
        address = getattr(config.advertise, name)
        if address:
            check_host_port(address, f"advertise.{name}")
            if not getattr(config.listen, name):
                raise ConfigError(f"advertise.{name}: set listen.{name} too (nothing listens to be reached)")
    for name in ("registry", "sipgw", "callstate", "media"):
        address = getattr(config.telemetry.metrics, name)
        if address:
            check_host_port(address, f"telemetry.metrics.{name}")
    if config.telemetry.log_format not in LOG_FORMATS:
        raise ConfigError(
            f"telemetry.log_format: {config.telemetry.log_format!r} is not one of {', '.join(LOG_FORMATS)}"
        )
    if config.telemetry.log_level.lower() not in LOG_LEVELS:
        raise ConfigError(f"telemetry.log_level: {config.telemetry.log_level!r} is not one of {', '.join(LOG_LEVELS)}")
    limits = config.limits
    if not 1 <= limits.streams_total <= MAX_STREAMS:
        raise ConfigError(f"limits.streams_total: {limits.streams_total} is not between 1 and {MAX_STREAMS}")
    if not 1 <= limits.streams_per_client <= limits.streams_total:
        raise ConfigError(
            f"limits.streams_per_client: {limits.streams_per_client} is not between 1 and"
            f" limits.streams_total ({limits.streams_total})"
        )
    _validate_numbering(config.numbering)
    validate_media(config.media, config.recording)
    validate_calls(
        config.sip,
        config.trunk,
        config.scenarios,
        {n.number for n in config.numbering.numbers},
        {d.id for d in config.numbering.departments},
        config.listen.trunk,
    )
    own = {n.number for n in config.numbering.numbers}
    validate_pstn(config.providers, config.routes, config.external, own, {d.id for d in config.numbering.departments})
    for i, server in enumerate(config.dns.servers):
        check_host_port(server, f"dns.servers[{i}]")
    if config.providers and not config.listen.sip:
        raise ConfigError("providers: set listen.sip too (calls to and from providers use the phones' SIP port)")


def _validate_numbering(numbering: NumberingSection) -> None:
    departments: set[str] = set()
    for i, dep in enumerate(numbering.departments):
        key = f"numbering.departments[{i}].id"
        _match(DEPARTMENT_ID_RE, dep.id, key)
        if dep.id in departments:
            raise ConfigError(f"{key}: duplicate department {dep.id!r}")
        departments.add(dep.id)
    seen: set[str] = set()
    for i, entry in enumerate(numbering.numbers):
        key = f"numbering.numbers[{i}]"
        _match(NUMBER_RE, entry.number, f"{key}.number")
        if entry.number in seen:
            raise ConfigError(f"{key}.number: duplicate own number {entry.number!r}")
        seen.add(entry.number)
        if entry.department and entry.department not in departments:
            raise ConfigError(f"{key}.department: unknown department {entry.department!r}")
        if entry.kind not in NUMBER_KINDS:
            raise ConfigError(f"{key}.kind: {entry.kind!r} is not one of {', '.join(NUMBER_KINDS)}")


def check_host_port(value: str, key: str) -> tuple[str, int]:
    """Splits ``host:port`` (``[v6]:port`` too); raises ConfigError naming ``key`` if it is not one."""
    try:
        return parse_host_port(value)
    except ValueError as error:
        raise ConfigError(f"{key}: {error}") from None


def _match(pattern: re.Pattern[str], value: str, key: str) -> None:
    if not pattern.fullmatch(value):
        raise ConfigError(f"{key}: {value!r} does not match {pattern.pattern}")


__all__ = [
    "AccountEntry",
    "Config",
    "RuleMatch",
    "ScenarioRule",
    "ScenariosSection",
    "SipSection",
    "TrunkSection",
    "ConfigError",
    "ConnectorSection",
    "DepartmentEntry",
    "LimitsSection",
    "ListenSection",
    "NumberEntry",
    "NumberingSection",
    "ProbesSection",
    "Secret",
    "ServerSection",
    "TelemetrySection",
    "TlsSection",
    "check_host_port",
    "load_config",
    "validate",
]
