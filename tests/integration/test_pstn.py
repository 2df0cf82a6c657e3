"""The group and the outside world: real provider software (Kamailio, with digest auth in front)
and the PSTN behind it (SIPp). alpha has no provider; r1 and r2 are router servers, each with its
own provider. A phone on alpha calls out through a router server; the PSTN calls a DID of alpha
through r1; a router server that dies or refuses leaves the next one to carry the call."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc.aio
import pytest

from pbxmesh.callstate.v1 import callstate_pb2 as cs
from pbxmesh.sipgw.v1 import sipgw_pb2 as gpb
from pbxmesh.sipgw.v1 import sipgw_pb2_grpc as gpb_grpc
from services.runtime.embedded_etcd import free_port
from tests.harness.dns import DnsServer
from tests.harness.provider import Provider
from tests.harness.pstn import Answerer, customer_call, pstn_call
from tests.harness.servers import Group
from tests.harness.sipp import register_phone, run, sipp_args, start_phone, stop_phones
from tests.harness.site import Site, Spec, make_site, stop_sites
from tests.integration.test_callstate import Watch
from tests.support import wait_for

ALICE = ("100", "alice-pw-100")  # on alpha
ROUTER_PHONE = ("300", "r1-phone-300")  # on r1
R2_PHONE = ("400", "r2-phone-400")  # on r2
DID = "+74951234567"
MOBILE = "89161234567"
MOBILE_E164 = "+79161234567"


def router(
    name: str, provider: Provider, priority: int, account: str, password: str = "", **external: Any
) -> dict[str, Any]:
    """The config of a router server registered with ``provider`` as ``account``."""
    return {
        "providers": [
            {
                "name": name,
                "address": provider.sip,
                "username": account,
                "password": password or f"{account}-secret",
                "register": True,
                "allow_from": [provider.host],
                "dids": [{"did": DID, "number": ALICE[0]}],
            }
        ],
        "routes": [
            {
                "pattern": r"^8\d{10}$",
                "provider": name,
                "strip": 1,
                "prepend": "+7",
                "caller_id": DID,
                "priority": priority,
            }
        ],
        **({"external": external} if external else {}),
    }


@pytest.fixture
async def pstn(tmp_path: Path) -> AsyncIterator[Answerer]:
    async with Answerer(tmp_path) as answerer:
        yield answerer


@pytest.fixture
async def carrier_a(pstn: Answerer) -> AsyncIterator[Provider]:
    async with Provider({"r1": "r1-secret"}, pstn=pstn.address, host="127.0.0.2") as provider:
        yield provider


@pytest.fixture
async def carrier_b(pstn: Answerer) -> AsyncIterator[Provider]:
    async with Provider({"r2": "r2-secret"}, pstn=pstn.address, host="127.0.0.3") as provider:
        yield provider


async def _listed_routes(site: Site) -> list[Any]:
    """The group's external routes as the site's registry merges them."""
    from pbxmesh.registry.v1 import registry_pb2 as rpb

    return list((await site.registry.stub.ListExternalRoutes(rpb.ListExternalRoutesRequest())).routes)


async def _external_routes(site: Site, count: int) -> bool:
    return len(await _listed_routes(site)) == count


async def call_out(site: Site, account: tuple[str, str], number: str) -> str:
    """A SIPp phone of ``site`` dials ``number``; returns SIPp's output (asserting it got through)."""
    done = await asyncio.to_thread(
        run, *sipp_args(site.gateway, "caller.xml", free_port(), number, "-au", account[0], "-ap", account[1])
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-1500:] + "".join(site.gateway.log[-30:])
    return done.stdout


async def refused_out(site: Site, account: tuple[str, str], number: str) -> str:
    """The same call, expected to fail: returns what SIPp saw."""
    done = await asyncio.to_thread(
        run, *sipp_args(site.gateway, "caller.xml", free_port(), number, "-au", account[0], "-ap", account[1])
    )
    assert done.returncode != 0, "the call went through"
    return done.stdout + done.stderr


async def test_a_phone_without_a_provider_calls_out_through_a_router_server(
    group: Group, pstn: Answerer, carrier_a: Provider
) -> None:
    alpha = await make_site(group, "alpha", Spec(ALICE))
    r1 = await make_site(group, "r1", Spec(ROUTER_PHONE, extra=router("carrier-a", carrier_a, 10, "r1")))
    watch = Watch(alpha.callstate)
    try:
        await wait_for(lambda: _external_routes(alpha, 1), what="r1's route on alpha")
        await wait_for(lambda: carrier_a.registered("r1"), what="r1 registered with its provider")
        await wait_for(lambda: _routes_live(alpha, [True]), what="r1's route live on alpha")
        await asyncio.wait_for(watch.synced.wait(), 5)
        await call_out(alpha, ALICE, MOBILE)
        # alpha's callstate names the party behind r1 as the outside world: its number as dialed in
        # the group, the provider and the router server (r1 told it, as servers share parties).
        ended = await watch.seen(lambda c: c.phase == cs.CALL_PHASE_ENDED and c.remote_party.external, "the call")
        party = ended.remote_party
        assert (party.number, party.provider, party.router_server_id) == (MOBILE, "carrier-a", "r1")
        await wait_for(lambda: _true(len(pstn.calls()) == 1), what="the call at the PSTN")
        reached = pstn.calls()[0]
        # Out through r1's provider: the number as the route rewrote it, the caller id it names.
        assert reached.number == MOBILE_E164
        assert reached.caller == DID and reached.asserted_user == DID
        relayed = [c for c in carrier_a.calls() if c.direction == "out"]
        assert [(c.number, c.account) for c in relayed] == [(MOBILE_E164, "r1")]
        alpha_log, r1_log = "".join(alpha.gateway.log), "".join(r1.gateway.log)
        assert "goes out through router server r1" in alpha_log
        assert "goes out through provider carrier-a" in r1_log
    finally:
        await watch.close()
        await stop_sites(alpha, r1)


async def test_a_pstn_call_to_a_did_of_alpha_arrives_at_r1_and_rings_alpha(
    group: Group, pstn: Answerer, carrier_a: Provider
) -> None:
    alpha = await make_site(group, "alpha", Spec(ALICE, callstate=False))
    r1 = await make_site(
        group, "r1", Spec(ROUTER_PHONE, callstate=False, extra=router("carrier-a", carrier_a, 10, "r1"))
    )
    try:
        await carrier_a.set_gateway(r1.gateway.sip)
        await wait_for(lambda: _plan_has(r1, ALICE[0]), what="alpha's 100 in r1's plan")
        phone = await start_phone(alpha.gateway, "callee.xml", await register_phone(alpha.gateway, ALICE), ALICE[0])
        try:
            call = await pstn_call(carrier_a.carrier, DID, "+79031112233")
            assert call.returncode == 0, call.stdout[-2000:] + "".join(r1.gateway.log[-20:])
            assert await asyncio.wait_for(phone.wait(), 30) == 0
        finally:
            await stop_phones(phone)
        r1_log = "".join(r1.gateway.log)
        assert f"from provider carrier-a: DID {DID} for {ALICE[0]}" in r1_log
        assert "+79031112233 -> 100" in r1_log  # the caller's PSTN number, the DID's internal number
    finally:
        await stop_sites(alpha, r1)


async def test_when_a_router_server_dies_or_refuses_the_next_one_carries_the_call(
    group: Group, pstn: Answerer, carrier_a: Provider, carrier_b: Provider
) -> None:
    alpha = await make_site(group, "alpha", Spec(ALICE, callstate=False))
    r1 = await make_site(
        group, "r1", Spec(ROUTER_PHONE, callstate=False, extra=router("carrier-a", carrier_a, 10, "r1"))
    )
    r2 = await make_site(group, "r2", Spec(R2_PHONE, callstate=False, extra=router("carrier-b", carrier_b, 20, "r2")))
    try:
        await wait_for(lambda: _external_routes(alpha, 2), what="both routes on alpha")
        # r1's provider refuses everything: r1 answers 503 and alpha tries r2.
        await carrier_a.set_unavailable(True)
        await call_out(alpha, ALICE, MOBILE)
        assert [c.account for c in carrier_b.calls() if c.direction == "out"] == ["r2"]
        assert "route refused with 503: trying the next one" in "".join(alpha.gateway.log)
        await carrier_a.set_unavailable(False)
        # r1 dies (registry and gateway, kill -9): its routes go with its lease; r2 carries the next call.
        for process in (r1.gateway.process, r1.registry):
            process.send(signal.SIGKILL)
        await wait_for(lambda: _external_routes(alpha, 1), timeout=10, what="r1's route gone from alpha")
        await call_out(alpha, ALICE, MOBILE)
        assert [c.account for c in carrier_b.calls() if c.direction == "out"] == ["r2", "r2"]
        assert not [c for c in carrier_a.calls() if c.direction == "out"]
    finally:
        await stop_sites(alpha, r1, r2)


async def test_toll_fraud_guard_refuses_and_says_why(group: Group, pstn: Answerer, carrier_a: Provider) -> None:
    extra = router("carrier-a", carrier_a, 10, "r1", per_minute_per_number=1)
    # A DID whose scenario forwards it back out to the PSTN: not allowed without allow_external.
    extra["providers"][0]["dids"].append({"did": "+74950000000", "number": "399", "scenario": True})
    extra["scenarios"] = {"incoming": [{"match": {"called": "399"}, "forward": MOBILE}, {"dial": "${called}"}]}
    r1 = await make_site(group, "r1", Spec(ROUTER_PHONE, callstate=False, extra=extra))
    try:
        await carrier_a.set_gateway(r1.gateway.sip)
        await call_out(r1, ROUTER_PHONE, MOBILE)  # the first this minute goes out
        seen = await refused_out(r1, ROUTER_PHONE, MOBILE)  # the second does not
        assert "503" in seen
        log = "".join(r1.gateway.log)
        assert "external call refused: 300 started 1 external calls this minute (caller 300 from phone 300" in log
        call = await pstn_call(carrier_a.carrier, "+74950000000", "+79031112233")
        assert call.returncode != 0
        log = "".join(r1.gateway.log)
        assert "external call refused: external calls are not allowed from provider" in log
        assert len(pstn.calls()) == 1  # only the first call ever reached the PSTN
    finally:
        await stop_sites(r1)


async def test_a_refused_registration_is_shown_and_no_call_goes_to_that_provider(
    group: Group, pstn: Answerer, carrier_a: Provider
) -> None:
    alpha = await make_site(group, "alpha", Spec(ALICE, callstate=False))
    extra = router("carrier-a", carrier_a, 10, "r1", password="not-the-password")
    r1 = await make_site(group, "r1", Spec(ROUTER_PHONE, callstate=False, extra=extra))
    try:
        await wait_for(lambda: _registration_is(r1, gpb.REGISTRATION_STATE_FAILED), what="the registration failed")
        provider = (await _providers(r1))[0]
        assert provider.last_status in (401, 403) and not provider.live
        assert provider.targets == [f"{carrier_a.sip}/UDP"]
        shown = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "services.cli", "providers", "--sipgw", r1.gateway.api],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert shown.returncode == 0, shown.stderr
        row = shown.stdout.splitlines()[1].split()
        assert row[0] == "carrier-a" and row[2] == "failed" and row[-3] == "no", shown.stdout
        assert "not-the-password" not in "".join(r1.gateway.log)
        # The group knows: alpha lists r1's route as not live.
        await wait_for(lambda: _routes_live(alpha, [False]), what="r1's route not live on alpha")
        seen = await refused_out(alpha, ALICE, MOBILE)
        assert "503" in seen
        assert not [c for c in carrier_a.calls() if c.direction == "out"] and not pstn.calls()
        assert "provider carrier-a is not registered" in "".join(r1.gateway.log)
    finally:
        await stop_sites(alpha, r1)


async def test_providers_by_name_and_in_priority_order_with_failover(
    group: Group, pstn: Answerer, carrier_a: Provider, carrier_b: Provider
) -> None:
    """carrier-a is a DNS name (NAPTR/SRV to its address, RFC 3263) and refuses everything (503
    with Retry-After); carrier-b, next in priority, takes the call, and the next one while
    carrier-a rests."""
    port = int(carrier_a.sip.rpartition(":")[2])
    records = {
        ("carrier-a.test", "NAPTR"): ['10 10 "s" "SIP+D2U" "" _sip._udp.carrier-a.test.'],
        ("_sip._udp.carrier-a.test", "SRV"): [f"10 10 {port} edge.carrier-a.test."],
        ("edge.carrier-a.test", "A"): [carrier_a.host],
    }
    async with DnsServer(records) as dns:
        a, b = router("carrier-a", carrier_a, 10, "r1"), router("carrier-b", carrier_b, 20, "r2")
        a["providers"][0]["address"] = "carrier-a.test"
        b["providers"][0]["dids"] = []
        extra = {
            "providers": a["providers"] + b["providers"],
            "routes": a["routes"] + b["routes"],
            "dns": {"servers": [f"{dns.address[0]}:{dns.address[1]}"]},
        }
        r1 = await make_site(group, "r1", Spec(ROUTER_PHONE, callstate=False, extra=extra))
        try:
            listed = await _providers(r1)
            assert [(p.name, list(p.targets)) for p in listed] == [
                ("carrier-a", [f"{carrier_a.sip}/UDP"]),
                ("carrier-b", [f"{carrier_b.sip}/UDP"]),
            ]
            assert ("carrier-a.test", "NAPTR") in dns.queries
            await wait_for(lambda: _all_live(r1), what="both registered")
            await carrier_a.set_unavailable(True)
            await call_out(r1, ROUTER_PHONE, MOBILE)
            assert [c.account for c in carrier_b.calls() if c.direction == "out"] == ["r2"]
            assert not [c for c in carrier_a.calls() if c.direction == "out"]
            assert "route refused with 503: trying the next one" in "".join(r1.gateway.log)
            assert [(p.name, p.calls_out) for p in await _providers(r1)] == [("carrier-a", 1), ("carrier-b", 1)]
            # carrier-a's 503 said Retry-After: 30: it rests, shown as not live, and the next call
            # goes straight to carrier-b although carrier-a takes calls again.
            assert [p.live for p in await _providers(r1)] == [False, True]
            # ... and the group is told: its route shows as not live (so others try it last).
            await wait_for(
                lambda: _routes_by_provider(r1, {"carrier-a": False, "carrier-b": True}),
                what="carrier-a's route not live",
            )
            await carrier_a.set_unavailable(False)
            await call_out(r1, ROUTER_PHONE, MOBILE)
            assert [c.account for c in carrier_b.calls() if c.direction == "out"] == ["r2", "r2"]
            assert [(p.name, p.calls_out) for p in await _providers(r1)] == [("carrier-a", 1), ("carrier-b", 2)]
            assert "provider carrier-a asks for no calls for 30 s" in "".join(r1.gateway.log)
        finally:
            await stop_sites(r1)


async def test_a_pstn_call_forwarded_on_another_server_does_not_go_back_out(
    group: Group, pstn: Answerer, carrier_a: Provider
) -> None:
    """A DID of alpha reaches alpha through r1; alpha's scenario for trunk calls forwards it to an
    external number, without allow_external: alpha refuses, as the call is from the outside."""
    scenarios = {"inter_server": [{"match": {"called": "100"}, "forward": MOBILE}]}
    alpha = await make_site(group, "alpha", Spec(ALICE, callstate=False, scenarios=scenarios))
    r1 = await make_site(
        group, "r1", Spec(ROUTER_PHONE, callstate=False, extra=router("carrier-a", carrier_a, 10, "r1"))
    )
    try:
        await carrier_a.set_gateway(r1.gateway.sip)
        await wait_for(lambda: _plan_has(r1, ALICE[0]), what="alpha's 100 in r1's plan")
        await wait_for(lambda: _external_routes(alpha, 1), what="r1's route on alpha")
        call = await pstn_call(carrier_a.carrier, DID, "+79031112233")
        assert call.returncode != 0
        assert "external call refused: external calls are not allowed from provider" in "".join(alpha.gateway.log)
        assert not pstn.calls()
    finally:
        await stop_sites(alpha, r1)


async def _providers(site: Site) -> list[Any]:
    async with grpc.aio.insecure_channel(site.gateway.api) as channel:
        stub = gpb_grpc.SipGatewayServiceStub(channel)
        return list((await stub.ListProviders(gpb.ListProvidersRequest(), timeout=5)).providers)


async def _all_live(site: Site) -> bool:
    return all(p.live for p in await _providers(site))


async def _registration_is(site: Site, state: int) -> bool:
    return bool((await _providers(site))[0].registration == state)


async def _routes_live(site: Site, live: list[bool]) -> bool:
    return [r.live for r in await _listed_routes(site)] == live


async def _routes_by_provider(site: Site, live: dict[str, bool]) -> bool:
    return {r.provider: r.live for r in await _listed_routes(site)} == live


async def _plan_has(site: Site, number: str) -> bool:
    return await site.registry.resolve(number) is not None


async def _true(value: bool) -> bool:
    return value


async def test_a_provider_is_offered_and_takes_only_its_codecs(
    group: Group, pstn: Answerer, carrier_a: Provider, tmp_path: Path
) -> None:
    """carrier-a takes PCMA only: the PSTN's offer (PCMU, PCMA, telephone-event) reaches r1's
    phone as PCMA and telephone-event, through r1's media service, and a phone's offer of the
    three reaches the PSTN the same way; a PSTN caller or a phone offering PCMU alone gets 488
    and nothing reaches the other side."""
    extra = router("carrier-a", carrier_a, 10, "r1")
    extra["providers"][0]["codecs"] = ["PCMA"]
    extra["providers"][0]["dids"] = [{"did": DID, "number": ROUTER_PHONE[0]}]
    r1 = await make_site(group, "r1", Spec(ROUTER_PHONE, callstate=False, media=True, extra=extra))
    try:
        await carrier_a.set_gateway(r1.gateway.sip)
        async with Answerer(tmp_path, port=await register_phone(r1.gateway, ROUTER_PHONE)) as phone:
            call = await pstn_call(carrier_a.carrier, DID, "+79031112233")
            assert call.returncode == 0, call.stdout[-2000:] + "".join(r1.gateway.log[-20:])
            assert [c.formats for c in phone.calls()] == ["8 101"]
            # A PSTN caller offering PCMU alone: 488, the phone never rings.
            refused = await pstn_call(carrier_a.carrier, DID, "+79031112233", codecs="0 101")
            assert refused.returncode != 0 and "488" in refused.stdout + refused.stderr, refused.stdout[-1500:]
            assert len(phone.calls()) == 1
        seen = await refused_out(r1, ROUTER_PHONE, MOBILE)
        assert "488" in seen
        assert "provider carrier-a takes none of the codecs offered" in "".join(r1.gateway.log)
        assert not [c for c in carrier_a.calls() if c.direction == "out"] and not pstn.calls()
        # No line of the provider is left taken by the refused calls, either way.
        assert [(p.lines_in_use, p.calls_in) for p in await _providers(r1)] == [(0, 1)]
        # A phone offering PCMU, PCMA and telephone-event: the provider is offered PCMA and
        # telephone-event only, and the call goes through.
        out = await customer_call(r1.gateway.sip, MOBILE, ROUTER_PHONE, codecs="0 8 101")
        assert out.returncode == 0, out.stdout[-2000:] + "".join(r1.gateway.log[-20:])
        assert [c.formats for c in pstn.calls()] == ["8 101"]
    finally:
        await stop_sites(r1)


async def test_a_provider_that_challenges_the_bye_gets_it_with_credentials(
    group: Group, pstn: Answerer, carrier_a: Provider
) -> None:
    """carrier-a challenges requests inside a call too (407 to the BYE): r1 answers with its
    account, and the hang-up reaches the PSTN (the call is not left running at the provider)."""
    r1 = await make_site(
        group, "r1", Spec(ROUTER_PHONE, callstate=False, extra=router("carrier-a", carrier_a, 10, "r1"))
    )
    try:
        await carrier_a.set_challenge_in_dialog(True)
        await wait_for(lambda: carrier_a.registered("r1"), what="r1 registered with its provider")
        await call_out(r1, ROUTER_PHONE, MOBILE)
        await wait_for(lambda: _true(carrier_a.in_dialog() == [("BYE", "r1")]), what="the BYE authenticated")
        assert not carrier_a.refusals()
        [reached] = pstn.calls()
        await wait_for(lambda: _true(pstn.hung_up() == [reached.call_id]), what="the BYE at the PSTN")
    finally:
        await stop_sites(r1)


async def test_a_provider_over_tcp_is_registered_with_and_called_over_tcp(
    group: Group, pstn: Answerer, carrier_a: Provider
) -> None:
    """carrier-a configured with transport tcp: r1 opens the connection itself (nothing was open),
    registers over it and sends the call over it."""
    extra = router("carrier-a", carrier_a, 10, "r1")
    extra["providers"][0]["transport"] = "tcp"
    r1 = await make_site(group, "r1", Spec(ROUTER_PHONE, callstate=False, extra=extra))
    try:
        await wait_for(lambda: carrier_a.registered("r1"), what="r1 registered with its provider")
        [contact] = await carrier_a.contacts("r1")
        assert contact.address.endswith(";transport=tcp"), contact
        assert [(p.name, list(p.targets)) for p in await _providers(r1)] == [("carrier-a", [f"{carrier_a.sip}/TCP"])]
        await call_out(r1, ROUTER_PHONE, MOBILE)
        relayed = [c for c in carrier_a.calls() if c.direction == "out"]
        assert [(c.number, c.account, c.transport) for c in relayed] == [(MOBILE_E164, "r1", "tcp")]
        await wait_for(lambda: _true(len(pstn.calls()) == 1), what="the call at the PSTN")
    finally:
        await stop_sites(r1)
