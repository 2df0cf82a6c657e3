"""A tiny authoritative DNS server on 127.0.0.1 (UDP) for tests of the gateway's DNS lookups.

    records = {("carrier.test", "NAPTR"): ['10 50 "s" "SIP+D2U" "" _sip._udp.carrier.test.'],
               ("_sip._udp.carrier.test", "SRV"): ["10 60 5060 sip1.carrier.test."],
               ("sip1.carrier.test", "A"): ["127.0.0.11"]}
    async with DnsServer(records, ttl=300) as server:
        Locator([server.address]) ...
        server.queries        # every (name, type) asked, in order

It answers from ``records`` only: the records of the asked type, NODATA for a name it knows with
other types, NXDOMAIN for any other name; both negative answers carry an SOA whose minimum is
``negative_ttl`` (RFC 2308). ``ttls`` sets the TTL of one record set; ``failing`` lists questions
answered with SERVFAIL; ``records`` may be changed while it runs. A and AAAA records must be
loopback (127.0.0.x, ::1), so that nothing a test resolves can lead it off this machine.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Collection, Mapping, Sequence
from types import TracebackType

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from services.runtime.embedded_etcd import free_port

Records = Mapping[tuple[str, str], Sequence[str]]


class DnsServer(asyncio.DatagramProtocol):
    """Answers DNS queries over UDP on 127.0.0.1 from a dict of records."""

    def __init__(
        self,
        records: Records,
        ttl: int = 300,
        ttls: Mapping[tuple[str, str], int] | None = None,
        negative_ttl: int = 60,
        port: int | None = None,
        failing: Collection[tuple[str, str]] = (),
    ):
        self.records: dict[tuple[str, str], list[str]] = {}
        self.ttls = {_key(name, rdtype): seconds for (name, rdtype), seconds in (ttls or {}).items()}
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.failing = {_key(name, rdtype) for name, rdtype in failing}  # answered with SERVFAIL
        self.port = port or free_port()
        self.queries: list[tuple[str, str]] = []  # (name without final dot, type) of each question
        self._transport: asyncio.DatagramTransport | None = None
        self.set_records(records)

    @property
    def address(self) -> tuple[str, int]:
        """(ip, port) to give a resolver."""
        return ("127.0.0.1", self.port)

    def set_records(self, records: Records) -> None:
        """Replaces every record the server answers with; A and AAAA must be loopback."""
        for (name, rdtype), texts in records.items():
            for text in texts:
                if rdtype.upper() == "A" and ipaddress.IPv4Address(text) not in ipaddress.IPv4Network("127.0.0.0/24"):
                    raise ValueError(f"test A record {name} {text} is not 127.0.0.x")
                if rdtype.upper() == "AAAA" and not ipaddress.IPv6Address(text).is_loopback:
                    raise ValueError(f"test AAAA record {name} {text} is not ::1")
        self.records = {_key(name, rdtype): list(texts) for (name, rdtype), texts in records.items()}

    async def start(self) -> DnsServer:
        """Binds 127.0.0.1:port and starts answering."""
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", self.port))
        return self

    def stop(self) -> None:
        """Closes the socket."""
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    async def __aenter__(self) -> DnsServer:
        return await self.start()

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()

    def count(self, name: str, rdtype: str) -> int:
        """How many times ``name``'s ``rdtype`` records were asked for."""
        return self.queries.count(_key(name, rdtype))

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return  # not a DNS message: a real server drops it too
        if self._transport is None or len(query.question) != 1:
            return
        self._transport.sendto(self._answer(query).to_wire(), addr)

    def _answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        key = _key(question.name.to_text(), dns.rdatatype.to_text(question.rdtype))
        self.queries.append(key)
        texts = self.records.get(key)
        if key in self.failing:
            response.set_rcode(dns.rcode.SERVFAIL)
            return response
        if texts:
            ttl = self.ttls.get(key, self.ttl)
            rrset = dns.rrset.from_text_list(question.name, ttl, dns.rdataclass.IN, question.rdtype, texts)
            response.answer.append(rrset)
            return response
        if not any(name == key[0] for name, _ in self.records):
            response.set_rcode(dns.rcode.NXDOMAIN)
        # The SOA's minimum is how long a resolver may keep the absence (RFC 2308).
        soa = f"ns.test. hostmaster.test. 1 3600 600 86400 {self.negative_ttl}"
        response.authority.append(
            dns.rrset.from_text(dns.name.root, self.negative_ttl, dns.rdataclass.IN, dns.rdatatype.SOA, soa)
        )
        return response


def _key(name: str, rdtype: str) -> tuple[str, str]:
    return name.rstrip(".").lower(), rdtype.upper()
