"""RFC 3263 server location of trunk addresses against a real DNS server on 127.0.0.1."""

from __future__ import annotations

import random

import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.IN.SRV
import pytest

from services.runtime.embedded_etcd import free_port
from services.sipgw.sip.locate import LocateError, Locator, Target, srv_order
from tests.harness.dns import DnsServer, Records


class Clock:
    """A monotonic clock the test moves by hand, to age the locator's cache."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def locator(server: DnsServer, clock: Clock | None = None) -> Locator:
    return Locator([server.address], timeout=1.0, rng=random.Random(7), clock=clock or Clock())


CHAIN: Records = {
    ("carrier.test", "NAPTR"): [
        '20 10 "s" "SIPS+D2T" "" _sips._tcp.carrier.test.',
        '10 20 "s" "SIP+D2T" "" _sip._tcp.carrier.test.',
        '10 10 "s" "SIP+D2U" "" _sip._udp.carrier.test.',
        '5 10 "s" "SIP+D2S" "" _sip._sctp.carrier.test.',  # SCTP: not ours, skipped
    ],
    ("_sip._udp.carrier.test", "SRV"): ["10 10 5060 udp.carrier.test."],
    ("_sip._tcp.carrier.test", "SRV"): ["10 10 5070 tcp.carrier.test."],
    ("_sips._tcp.carrier.test", "SRV"): ["10 10 5071 tls.carrier.test."],
    ("_sip._sctp.carrier.test", "SRV"): ["10 10 5080 sctp.carrier.test."],
    ("udp.carrier.test", "A"): ["127.0.0.21"],
    ("udp.carrier.test", "AAAA"): ["::1"],
    ("tcp.carrier.test", "A"): ["127.0.0.22"],
    ("tls.carrier.test", "A"): ["127.0.0.23"],
    ("sctp.carrier.test", "A"): ["127.0.0.24"],
}


async def test_ip_literals_need_no_dns() -> None:
    async with DnsServer({}) as server:
        found = locator(server)
        assert await found.locate("127.0.0.5") == [Target("127.0.0.5", 5060, "UDP")]
        assert await found.locate("127.0.0.5:5080", "tcp") == [Target("127.0.0.5", 5080, "TCP")]
        assert await found.locate("127.0.0.5", "TLS") == [Target("127.0.0.5", 5061, "TLS")]
        assert server.queries == []


async def test_ipv6_literals_lose_their_brackets() -> None:
    async with DnsServer({}) as server:
        found = locator(server)
        assert await found.locate("[::1]:5080") == [Target("::1", 5080, "UDP")]
        assert await found.locate("[::1]", "TLS") == [Target("::1", 5061, "TLS")]
        assert await found.locate("0:0:0:0:0:0:0:1") == [Target("::1", 5060, "UDP")]
        assert server.queries == []


async def test_name_with_port_is_a_and_aaaa_only() -> None:
    records: Records = {
        ("edge.carrier.test", "A"): ["127.0.0.31", "127.0.0.32"],
        ("edge.carrier.test", "AAAA"): ["::1"],
        ("edge.carrier.test", "NAPTR"): ['10 10 "s" "SIP+D2U" "" _sip._udp.carrier.test.'],
    }
    async with DnsServer(records) as server:
        targets = await locator(server).locate("Edge.Carrier.Test:5080", "TCP")
        assert sorted(targets[:2], key=lambda t: t.host) == [
            Target("127.0.0.31", 5080, "TCP"),
            Target("127.0.0.32", 5080, "TCP"),
        ]
        assert targets[2:] == [Target("::1", 5080, "TCP")]
        # RFC 3263 section 4.2: a port given means no NAPTR and no SRV.
        assert sorted(server.queries) == [("edge.carrier.test", "A"), ("edge.carrier.test", "AAAA")]


async def test_naptr_leads_to_srv_then_addresses_in_order() -> None:
    async with DnsServer(CHAIN) as server:
        targets = await locator(server).locate("carrier.test")
        assert targets == [
            Target("127.0.0.21", 5060, "UDP"),  # order 10, preference 10
            Target("::1", 5060, "UDP"),
            Target("127.0.0.22", 5070, "TCP"),  # order 10, preference 20
            Target("127.0.0.23", 5071, "TLS"),  # order 20
        ]
        assert server.count("_sip._sctp.carrier.test", "SRV") == 0
        assert server.count("sctp.carrier.test", "A") == 0


async def test_a_given_transport_skips_naptr() -> None:
    async with DnsServer(CHAIN) as server:
        assert await locator(server).locate("carrier.test", "TLS") == [Target("127.0.0.23", 5071, "TLS")]
        assert server.count("carrier.test", "NAPTR") == 0
        assert server.count("_sip._udp.carrier.test", "SRV") == 0


async def test_srv_without_naptr_by_priority_then_transport() -> None:
    records: Records = {
        ("_sip._udp.carrier.test", "SRV"): ["20 10 5060 backup.carrier.test.", "10 10 5062 main.carrier.test."],
        ("_sip._tcp.carrier.test", "SRV"): ["10 10 5060 main.carrier.test."],
        ("main.carrier.test", "A"): ["127.0.0.41"],
        ("backup.carrier.test", "A"): ["127.0.0.42"],
    }
    async with DnsServer(records) as server:
        targets = await locator(server).locate("carrier.test")
        assert targets == [
            Target("127.0.0.41", 5062, "UDP"),  # priority 10 before 20
            Target("127.0.0.42", 5060, "UDP"),
            Target("127.0.0.41", 5060, "TCP"),
        ]
        assert server.count("carrier.test", "NAPTR") == 1
        assert server.count("_sips._tcp.carrier.test", "SRV") == 1
        assert server.count("carrier.test", "A") == 0  # SRV found: no fallback to the name's A


def test_srv_weights_share_the_first_place() -> None:
    def srv(weight: int, target: str) -> dns.rdtypes.IN.SRV.SRV:
        record = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.SRV, f"10 {weight} 5060 {target}.")
        assert isinstance(record, dns.rdtypes.IN.SRV.SRV)
        return record

    heavy, light, last = srv(90, "heavy"), srv(10, "light"), srv(0, "last")
    low = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.SRV, "20 100 5060 low.")
    assert isinstance(low, dns.rdtypes.IN.SRV.SRV)
    rng = random.Random(11)
    firsts = [srv_order([low, last, light, heavy], rng)[0] for _ in range(1000)]
    assert 800 <= firsts.count(heavy) <= 980  # 90/101 expected
    assert 40 <= firsts.count(light) <= 160  # 10/101
    assert firsts.count(low) == 0  # a higher priority number never comes first
    assert all(srv_order([low, last, light, heavy], rng)[-1] is low for _ in range(50))


async def test_no_srv_falls_back_to_the_names_a_at_the_default_port() -> None:
    async with DnsServer({("plain.carrier.test", "A"): ["127.0.0.51"]}) as server:
        found = locator(server)
        assert await found.locate("plain.carrier.test") == [Target("127.0.0.51", 5060, "UDP")]
        assert await found.locate("plain.carrier.test", "TLS") == [Target("127.0.0.51", 5061, "TLS")]
        assert server.count("_sip._udp.plain.carrier.test", "SRV") == 1


async def test_srv_target_dot_means_no_service() -> None:
    records: Records = {
        ("_sip._udp.closed.test", "SRV"): ["0 0 0 ."],
        ("closed.test", "A"): ["127.0.0.52"],
    }
    async with DnsServer(records) as server:
        with pytest.raises(LocateError) as raised:
            await locator(server).locate("closed.test", "UDP")
        assert raised.value.address == "closed.test"
        assert raised.value.reason == "no NAPTR, SRV, A or AAAA record for closed.test"
        assert server.queries == [("_sip._udp.closed.test", "SRV")]


async def test_unknown_name_is_a_clear_error() -> None:
    async with DnsServer(CHAIN) as server:
        with pytest.raises(LocateError) as raised:
            await locator(server).locate("nowhere.test")
        assert raised.value.reason == "no such name in DNS: nowhere.test"
        assert str(raised.value) == "cannot locate 'nowhere.test': no such name in DNS: nowhere.test"
        with pytest.raises(LocateError, match=r"no such name in DNS: nowhere\.test"):
            await locator(server).locate("nowhere.test:5060")


async def test_silent_dns_server_is_a_clear_error() -> None:
    found = Locator([("127.0.0.1", free_port())], timeout=0.3)  # nothing listens there
    with pytest.raises(LocateError) as raised:
        await found.locate("carrier.test:5060")
    assert "carrier.test A" in raised.value.reason
    assert "no answer" in raised.value.reason or "failed" in raised.value.reason
    # Without a port it stops at the failed NAPTR query instead of waiting on every other step.
    with pytest.raises(LocateError) as raised:
        await found.locate("carrier.test")
    assert raised.value.reason == "no answer from DNS for carrier.test NAPTR within 0.3 s"


async def test_a_failed_naptr_or_srv_query_is_no_reason_to_guess() -> None:
    records: Records = {**CHAIN, ("carrier.test", "A"): ["127.0.0.61"]}
    async with DnsServer(records, failing=[("carrier.test", "NAPTR")]) as server:
        with pytest.raises(LocateError, match=r"DNS servers failed to answer carrier\.test NAPTR"):
            await locator(server).locate("carrier.test")
        assert server.queries == [("carrier.test", "NAPTR")]
    async with DnsServer(records, failing=[("_sip._udp.carrier.test", "SRV")]) as server:
        # The SRV records that did answer still give their targets.
        assert await locator(server).locate("carrier.test", "TCP") == [Target("127.0.0.22", 5070, "TCP")]
        with pytest.raises(LocateError, match=r"_sip\._udp\.carrier\.test SRV"):
            await locator(server).locate("carrier.test", "UDP")
        assert server.count("carrier.test", "A") == 0


async def test_a_failing_target_leaves_the_others() -> None:
    records: Records = {
        ("_sip._udp.carrier.test", "SRV"): ["10 10 5060 one.carrier.test.", "20 10 5060 two.carrier.test."],
        ("one.carrier.test", "A"): ["127.0.0.71"],
        ("two.carrier.test", "A"): ["127.0.0.72"],
    }
    failing = [("one.carrier.test", "A"), ("one.carrier.test", "AAAA")]
    async with DnsServer(records, failing=failing) as server:
        assert await locator(server).locate("carrier.test", "UDP") == [Target("127.0.0.72", 5060, "UDP")]


async def test_answers_are_kept_for_their_ttl() -> None:
    clock = Clock()
    async with DnsServer(CHAIN, ttl=300, ttls={("udp.carrier.test", "A"): 30}, negative_ttl=60) as server:
        found = locator(server, clock)
        first = await found.locate("carrier.test")
        asked = len(server.queries)
        assert asked == 10  # NAPTR, three SRV, A and AAAA of three hosts
        # The AAAA records that are absent (NODATA) are kept too, for the SOA's minimum.
        assert await found.locate("carrier.test") == first
        assert len(server.queries) == asked
        # The address changes; the locator keeps the old one until its TTL (30 s) runs out.
        server.set_records({**CHAIN, ("udp.carrier.test", "A"): ["127.0.0.29"]})
        clock.now += 29
        assert (await found.locate("carrier.test"))[0] == Target("127.0.0.21", 5060, "UDP")
        assert len(server.queries) == asked
        clock.now += 2
        assert (await found.locate("carrier.test"))[0] == Target("127.0.0.29", 5060, "UDP")
        assert server.queries[asked:] == [("udp.carrier.test", "A")]
        # Past the negative TTL (60 s) the absent AAAA records are asked for again.
        clock.now += 29.5
        await found.locate("carrier.test")
        assert sorted(set(server.queries[asked + 1 :])) == [
            ("tcp.carrier.test", "AAAA"),
            ("tls.carrier.test", "AAAA"),
        ]
        # A name that does not exist (NXDOMAIN) is kept for the SOA's minimum too.
        for _ in range(2):
            with pytest.raises(LocateError):
                await found.locate("gone.test:5060")
        assert server.count("gone.test", "A") == 1
        clock.now += 61
        with pytest.raises(LocateError):
            await found.locate("gone.test:5060")
        assert server.count("gone.test", "A") == 2


@pytest.mark.parametrize(
    ("address", "transport", "reason"),
    [
        ("", None, "empty address"),
        ("  ", None, "empty address"),
        ("carrier.test:", None, "port '' is not a number"),
        ("carrier.test:50x", None, "port '50x' is not a number"),
        ("carrier.test:70000", None, "port '70000' is not a number in 1-65535"),
        ("carrier.test:0", None, "port '0'"),
        ("[::1", None, "not [IPv6]:port"),
        ("[::1]5060", None, "not [IPv6]:port"),
        ("[carrier.test]:5060", None, "not an IPv6 address"),
        ("2001:db8::1::5", None, "in brackets"),
        ("carrier..test", None, "not an IP address nor a domain name"),
        ("-carrier.test", None, "not an IP address nor a domain name"),
        ("carrier test", None, "not an IP address nor a domain name"),
        ("1.2.3", None, "labels are all numbers"),
        ("carrier.test", "SCTP", "unknown transport 'SCTP'"),
    ],
)
async def test_bad_addresses_are_clear_errors(address: str, transport: str | None, reason: str) -> None:
    async with DnsServer({}) as server:
        with pytest.raises(LocateError) as raised:
            await locator(server).locate(address, transport)
        assert reason in raised.value.reason
        assert server.queries == []


def test_nameservers_must_be_addresses() -> None:
    with pytest.raises(ValueError, match="not an IP address"):
        Locator([("dns.test", 53)])
    with pytest.raises(ValueError, match="out of range"):
        Locator([("127.0.0.1", 0)])
    with pytest.raises(ValueError, match="no DNS server given"):
        Locator([])
