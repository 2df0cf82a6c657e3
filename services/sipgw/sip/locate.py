"""Locating a provider trunk's SIP servers from its configured address (RFC 3263 section 4).

    targets = await Locator().locate("carrier.example")        # [Target(host, port, transport), ...]
    targets = await Locator().locate("carrier.example:5080", "TCP")

Only addresses from the configuration come here, never a name found in a SIP message (resolving
those would let any peer make the gateway query names of its choosing).

The steps, as RFC 3263 orders them:

- an IP literal (``203.0.113.10``, ``[2001:db8::1]:5080``) is the one target: no DNS at all;
- a name with a port: its A and AAAA records at that port (section 4.2);
- a name without a port and no transport asked for: NAPTR (4.1) for SIP+D2U, SIP+D2T and
  SIPS+D2T by order and preference, each followed to its SRV records; without NAPTR, SRV for
  ``_sip._udp``, ``_sip._tcp`` and ``_sips._tcp`` in that order (only the asked transport's when one
  is given); SRV records by priority, then weighted random (RFC 2782); each SRV target's A and AAAA;
- no SRV record: the name's A and AAAA at the default port (5060, 5061 for TLS).

A step moves on to the next only when DNS said there is nothing: a query that failed (timeout,
SERVFAIL) stops the lookup with whatever targets were found, or with ``LocateError``, rather than
guess a transport or port the provider may not offer.

Every target comes back in the order to try them: the next is the failover (section 4.3). Answers,
negative ones too (RFC 2308), are kept for their TTL so that a call setup does not wait on DNS.
Failed queries are not kept: the next call asks again. When nothing resolves, ``LocateError``
says why.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdata
import dns.rdatatype
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.rdtypes.IN.NAPTR
import dns.rdtypes.IN.SRV
import dns.resolver

TRANSPORTS = ("UDP", "TCP", "TLS")  # the ones the gateway speaks, in RFC 3263's order of preference
DEFAULT_PORTS = {"UDP": 5060, "TCP": 5060, "TLS": 5061}
NAPTR_SERVICES = {"SIP+D2U": "UDP", "SIP+D2T": "TCP", "SIPS+D2T": "TLS"}  # RFC 3263 section 4.1
SRV_PREFIXES = {"UDP": "_sip._udp", "TCP": "_sip._tcp", "TLS": "_sips._tcp"}
CACHE_ENTRIES = 1024  # a gateway has a handful of trunks; this only stops runaway growth

_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")
_DIGITS = re.compile(r"[0-9]+")  # ASCII only: int() takes the digits of other scripts too


@dataclass(frozen=True)
class Target:
    """One place to send to: an IP literal, a port and a transport (UDP, TCP or TLS)."""

    host: str
    port: int
    transport: str


class LocateError(Exception):
    """A configured address that gives no target; ``reason`` says why (no secret in it)."""

    def __init__(self, address: str, reason: str):
        super().__init__(f"cannot locate {address!r}: {reason}")
        self.address = address
        self.reason = reason


@dataclass(frozen=True)
class _Answer:
    records: tuple[dns.rdata.Rdata, ...]
    no_such_name: bool  # NXDOMAIN, as opposed to a name without records of this type


class _Lookup:
    """What one ``locate`` call found wrong, for the error if nothing resolves."""

    def __init__(self) -> None:
        self.failures: list[str] = []
        self.missing: list[str] = []  # names queried for addresses that do not exist

    def reason(self, fallback: str) -> str:
        if self.failures:
            return "; ".join(dict.fromkeys(self.failures))
        if self.missing:
            return "no such name in DNS: " + ", ".join(dict.fromkeys(self.missing))
        return fallback


class Locator:
    """Resolves configured trunk addresses to targets, with a cache that honours TTLs.

    ``nameservers``: (ip, port) pairs to ask; None reads the system's resolv.conf. ``timeout``:
    the most one DNS query may take, in seconds. ``rng`` orders SRV records of equal priority by
    weight; ``clock`` (seconds, monotonic) ages the cache.
    """

    def __init__(
        self,
        nameservers: Sequence[tuple[str, int]] | None = None,
        timeout: float = 2.0,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        if timeout <= 0:
            raise ValueError(f"DNS timeout must be positive, not {timeout}")
        if nameservers is not None and not nameservers:
            raise ValueError("no DNS server given (None reads /etc/resolv.conf)")
        for host, port in nameservers or ():
            try:
                ipaddress.ip_address(host)
            except ValueError:
                raise ValueError(f"DNS server {host!r} is not an IP address") from None
            if not 0 < port <= 65535:
                raise ValueError(f"DNS server port {port} is out of range 1-65535")
        self.nameservers = None if nameservers is None else list(nameservers)
        self.timeout = timeout
        self._rng = rng or random.Random()
        self._clock = clock
        self._resolver: dns.asyncresolver.Resolver | None = None
        self._cache: dict[tuple[str, str], tuple[float, _Answer]] = {}

    async def locate(self, address: str, transport: str | None = None) -> list[Target]:
        """Every target for ``address`` (``host``, ``host:port``, ``[v6]:port``), in try order.

        ``transport`` (UDP, TCP or TLS) when the trunk is configured for one; otherwise RFC 3263
        picks (UDP for an IP literal or a name with a port). Raises ``LocateError``.
        """
        host, port, is_ip = _split(address)
        wanted = _transport(address, transport)
        if is_ip:
            chosen = wanted or "UDP"
            return [Target(host, port or DEFAULT_PORTS[chosen], chosen)]
        lookup = _Lookup()
        if port is not None:
            chosen = wanted or "UDP"
            targets = await self._addresses(lookup, host, port, chosen)
            return _found(address, targets, lookup, f"no A or AAAA record for {host}")
        fallback = f"no NAPTR, SRV, A or AAAA record for {host}"
        # Each step falls through to the next only when it surely found nothing: after a failed
        # query the next step could pick a transport or port the provider does not offer.
        targets = await self._by_naptr(lookup, host) if wanted is None else []
        if targets or lookup.failures:
            return _found(address, targets, lookup, fallback)
        targets, any_srv = await self._by_srv(lookup, host, [wanted] if wanted else TRANSPORTS)
        # An SRV record of target "." says the service is not there: no guessing at A records.
        if targets or lookup.failures or any_srv:
            return _found(address, targets, lookup, fallback)
        chosen = wanted or "UDP"
        targets = await self._addresses(lookup, host, DEFAULT_PORTS[chosen], chosen)
        return _found(address, targets, lookup, fallback)

    async def _by_naptr(self, lookup: _Lookup, host: str) -> list[Target]:
        answer = await self._query(lookup, host, "NAPTR")
        usable: list[tuple[int, int, str, str]] = []
        for record in answer.records:
            if not isinstance(record, dns.rdtypes.IN.NAPTR.NAPTR):
                continue
            service = NAPTR_SERVICES.get(record.service.decode("ascii", "replace").upper())
            # RFC 3263 uses the "S" flag only: the replacement names SRV records; a regexp has no place.
            if service is None or record.flags.lower() != b"s" or record.regexp:
                continue
            if record.replacement != dns.name.root:
                usable.append((record.order, record.preference, service, _host(record.replacement)))
        targets: list[Target] = []
        for _, _, service, replacement in sorted(usable):
            found, _ = await self._srv(lookup, replacement, service)
            targets += found
        return targets

    async def _by_srv(self, lookup: _Lookup, host: str, transports: Iterable[str]) -> tuple[list[Target], bool]:
        targets: list[Target] = []
        any_srv = False
        for transport in transports:
            found, had_records = await self._srv(lookup, f"{SRV_PREFIXES[transport]}.{host}", transport)
            targets += found
            any_srv = any_srv or had_records
        return targets, any_srv

    async def _srv(self, lookup: _Lookup, name: str, transport: str) -> tuple[list[Target], bool]:
        """The targets of ``name``'s SRV records, and whether it had any SRV record at all."""
        answer = await self._query(lookup, name, "SRV")
        records = [r for r in answer.records if isinstance(r, dns.rdtypes.IN.SRV.SRV)]
        # RFC 2782: a target of "." means no service at this domain.
        hosts = [(_host(r.target), r.port) for r in srv_order(records, self._rng) if r.target != dns.name.root]
        found = await asyncio.gather(*(self._addresses(lookup, host, port, transport) for host, port in hosts))
        return [target for targets in found for target in targets], bool(records)

    async def _addresses(self, lookup: _Lookup, host: str, port: int, transport: str) -> list[Target]:
        # IPv4 first: the gateway's trunk sockets speak IPv4 unless configured otherwise.
        answers = await asyncio.gather(self._query(lookup, host, "A"), self._query(lookup, host, "AAAA"))
        if all(answer.no_such_name for answer in answers):
            lookup.missing.append(host)
        return [
            Target(str(record.address), port, transport)
            for answer in answers
            for record in answer.records
            if isinstance(record, dns.rdtypes.IN.A.A | dns.rdtypes.IN.AAAA.AAAA)
        ]

    async def _query(self, lookup: _Lookup, name: str, rdtype: str) -> _Answer:
        """``name``'s records of ``rdtype``, from the cache while their TTL lasts."""
        key = (name, rdtype)
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            resolver = self._resolver_or_config()
            # Absolute names, no search list: a configured trunk address is a full domain name.
            reply = await resolver.resolve(name + ".", rdtype, raise_on_no_answer=False, search=False)
        except dns.resolver.NXDOMAIN as error:
            answer = _Answer((), no_such_name=True)
            ttl = _negative_ttl(error)
        except dns.resolver.LifetimeTimeout:
            lookup.failures.append(f"no answer from DNS for {name} {rdtype} within {self.timeout:g} s")
            return _Answer((), no_such_name=False)
        except _NoConfig:
            lookup.failures.append("no DNS server configured (none in /etc/resolv.conf)")
            return _Answer((), no_such_name=False)
        except dns.resolver.NoNameservers:
            lookup.failures.append(f"DNS servers failed to answer {name} {rdtype}")
            return _Answer((), no_such_name=False)
        except (dns.exception.DNSException, OSError) as error:
            lookup.failures.append(f"DNS query {name} {rdtype} failed ({type(error).__name__})")
            return _Answer((), no_such_name=False)
        else:
            answer = _Answer(tuple(reply.rrset or ()), no_such_name=False)
            ttl = reply.chaining_result.minimum_ttl
        self._remember(key, now + ttl, answer)
        return answer

    def _remember(self, key: tuple[str, str], expires: float, answer: _Answer) -> None:
        if len(self._cache) >= CACHE_ENTRIES:
            now = self._clock()
            for stale in [k for k, (until, _) in self._cache.items() if until <= now]:
                del self._cache[stale]
            if len(self._cache) >= CACHE_ENTRIES:
                del self._cache[next(iter(self._cache))]  # the oldest entry
        self._cache[key] = (expires, answer)

    def _resolver_or_config(self) -> dns.asyncresolver.Resolver:
        if self._resolver is None:
            if self.nameservers is None:
                try:
                    resolver = dns.asyncresolver.Resolver()  # reads /etc/resolv.conf
                except (dns.exception.DNSException, OSError) as error:
                    raise _NoConfig from error
            else:
                resolver = dns.asyncresolver.Resolver(configure=False)
                resolver.nameservers = [dns.nameserver.Do53Nameserver(host, port) for host, port in self.nameservers]
            resolver.timeout = self.timeout
            resolver.lifetime = self.timeout
            self._resolver = resolver
        return self._resolver


class _NoConfig(dns.exception.DNSException):
    """The system has no usable resolver configuration (no nameserver in /etc/resolv.conf)."""


def srv_order(records: Sequence[dns.rdtypes.IN.SRV.SRV], rng: random.Random) -> list[dns.rdtypes.IN.SRV.SRV]:
    """SRV records in the order to try them: lowest priority first, by weight within one (RFC 2782)."""
    ordered: list[dns.rdtypes.IN.SRV.SRV] = []
    for priority in sorted({r.priority for r in records}):
        group = [r for r in records if r.priority == priority]
        rng.shuffle(group)  # so that records of weight 0 share the chance between them
        group.sort(key=lambda r: r.weight != 0)  # RFC 2782: weight-0 records go first in the list
        while group:
            pick = rng.randint(0, sum(r.weight for r in group))
            running = 0
            for index, record in enumerate(group):
                running += record.weight
                if running >= pick:
                    ordered.append(group.pop(index))
                    break
    return ordered


def _host(name: dns.name.Name) -> str:
    return str(name.to_text(omit_final_dot=True)).lower()


def _negative_ttl(error: dns.resolver.NXDOMAIN) -> int:
    # The SOA in the NXDOMAIN answer bounds how long the absence may be kept (RFC 2308 section 5).
    try:
        responses = error.kwargs.get("responses") or {}
        return min(int(r.resolve_chaining().minimum_ttl) for r in responses.values())
    except (dns.exception.DNSException, KeyError, ValueError, AttributeError):
        return 0


def _found(address: str, targets: list[Target], lookup: _Lookup, fallback: str) -> list[Target]:
    if not targets:
        raise LocateError(address, lookup.reason(fallback))
    return list(dict.fromkeys(targets))  # two SRV records may lead to one address


def _transport(address: str, transport: str | None) -> str | None:
    if transport is None:
        return None
    upper = transport.upper()
    if upper not in TRANSPORTS:
        raise LocateError(address, f"unknown transport {transport!r} (UDP, TCP or TLS)")
    return upper


def _split(address: str) -> tuple[str, int | None, bool]:
    """(host, port or None, whether host is an IP literal); IPv6 without its brackets."""
    text = address.strip() if isinstance(address, str) else ""
    if not text:
        raise LocateError(str(address), "empty address")
    try:
        return str(ipaddress.ip_address(text)), None, True
    except ValueError:
        pass
    if text.startswith("["):
        inside, bracket, rest = text[1:].partition("]")
        try:
            host = str(ipaddress.IPv6Address(inside))
        except ValueError:
            raise LocateError(address, "not an IPv6 address between the brackets") from None
        if not bracket or (rest and not rest.startswith(":")):
            raise LocateError(address, "not [IPv6]:port")
        return host, _port(address, rest[1:]) if rest else None, True
    host, colon, port_text = text.partition(":")
    if ":" in port_text:
        raise LocateError(address, "an IPv6 address with a port goes in brackets: [2001:db8::1]:5060")
    port = _port(address, port_text) if colon else None
    try:
        return str(ipaddress.IPv4Address(host)), port, True
    except ValueError:
        pass
    name = host[:-1] if host.endswith(".") else host  # a fully qualified name may end in a dot
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise LocateError(address, "not an IP address nor a domain name")
    if all(_DIGITS.fullmatch(label) for label in labels):
        raise LocateError(address, "not an IP address (nor a domain name: its labels are all numbers)")
    return name.lower(), port, False


def _port(address: str, text: str) -> int:
    if not _DIGITS.fullmatch(text) or not 0 < int(text) <= 65535:
        raise LocateError(address, f"port {text!r} is not a number in 1-65535")
    return int(text)
