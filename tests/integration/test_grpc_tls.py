"""Mutual TLS on every gRPC port and link of a server (``tls`` in its config), and who may call what.

Two servers with certificates from the test group's CA; a third certificate of the same CA for a
server that is not a member; a CA of someone else's; API clients with the read and control roles.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pbxmesh.callstate.v1 import callstate_pb2 as cs
from pbxmesh.callstate.v1 import callstate_pb2_grpc as cs_grpc
from pbxmesh.registry.v1 import registry_pb2 as pb
from pbxmesh.registry.v1 import registry_pb2_grpc as pb_grpc
from pbxmesh.sipgw.v1 import sipgw_pb2 as gw
from pbxmesh.sipgw.v1 import sipgw_pb2_grpc as gw_grpc
from services.runtime.config import load_config
from services.runtime.embedded_etcd import free_port
from services.runtime.pki import init_ca, issue
from tests.harness.servers import Group
from tests.harness.sipp import phones_done, register_phone, run, sipp_args, start_phone, stop_phones
from tests.harness.site import Site, Spec, running_sites
from tests.harness.tls import channel, credentials, secure
from tests.support import wait_for

ALICE = ("100", "alice-pw-100")
CAROL = ("200", "carol-pw-200")


@pytest.fixture
async def sites(group: Group) -> AsyncIterator[dict[str, Site]]:
    specs = {"alpha": Spec(ALICE, "sales", tls=True), "beta": Spec(CAROL, "support", tls=True)}
    async with running_sites(group, specs, {"alpha": {"200"}, "beta": {"100"}}) as made:
        yield made


def client(pki: Path, name: str, role: str) -> grpc.ChannelCredentials:
    issue(pki, "client", name, role=role)
    return credentials(pki, name)


def server_credentials(pki: Path, server_id: str) -> grpc.ChannelCredentials:
    """A channel presenting a server's certificate (as that server's services do)."""
    cert, key = issue(pki, "server", server_id, hosts=("127.0.0.1",))
    return grpc.ssl_channel_credentials((pki / "ca.pem").read_bytes(), key.read_bytes(), cert.read_bytes())


async def status_of(call: asyncio.Future[object] | object) -> grpc.StatusCode:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def health(address: str, creds: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    make = grpc.aio.insecure_channel(address) if creds is None else grpc.aio.secure_channel(address, creds)
    async with make as ch:
        return await status_of(health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=3))


async def watch(address: str, seen: list[cs.Call]) -> None:
    async with channel(address) as ch:
        async for message in cs_grpc.CallStateServiceStub(ch).WatchCalls(cs.WatchCallsRequest()):
            seen.extend(message.calls)


async def place_call(alpha: Site, beta: Site) -> dict[str, list[cs.Call]]:
    """Alice on alpha calls Carol on beta (SIPp); returns what each callstate streamed."""
    seen: dict[str, list[cs.Call]] = {"alpha": [], "beta": []}
    watches = [
        asyncio.create_task(watch(site.callstate.address, seen[name]))
        for name, site in (("alpha", alpha), ("beta", beta))
    ]
    carol = await register_phone(beta.gateway, CAROL)
    phone = await start_phone(beta.gateway, "callee.xml", carol, CAROL[0])
    try:
        calling = await asyncio.to_thread(
            run, *sipp_args(alpha.gateway, "caller.xml", free_port(), CAROL[0], "-au", ALICE[0], "-ap", ALICE[1])
        )
        assert calling.returncode == 0, calling.stderr[-2000:]
        assert await phones_done(phone) == [0]

        async def ended() -> bool:
            return all(
                any(c.phase == cs.CALL_PHASE_ENDED and c.remote_party.server_id for c in calls)
                for calls in seen.values()
            )

        await wait_for(ended, timeout=10, what="the call's end on both callstates")
    finally:
        await stop_phones(phone)
        for task in watches:
            task.cancel()
    return seen


async def test_a_cross_server_call_shares_its_parties_over_mutual_tls(sites: dict[str, Site]) -> None:
    seen = await place_call(sites["alpha"], sites["beta"])
    on_alpha, on_beta = seen["alpha"][-1], seen["beta"][-1]
    assert on_alpha.call_id == on_beta.call_id
    assert (on_beta.remote_party.number, on_beta.remote_party.department, on_beta.remote_party.server_id) == (
        "100",
        "sales",
        "alpha",
    )
    assert (on_alpha.remote_party.number, on_alpha.remote_party.server_id) == ("200", "beta")


async def test_ports_refuse_a_client_without_a_certificate_or_from_another_ca(
    sites: dict[str, Site], tmp_path: Path
) -> None:
    alpha = sites["alpha"]
    stranger = tmp_path / "stranger-ca"
    init_ca(stranger, "someone-else")
    issue(stranger, "client", "harness", role="control")
    issue(stranger, "server", "alpha", hosts=("127.0.0.1",))
    ours = credentials(sites_pki(sites))
    for address in (alpha.registry.address, alpha.gateway.api, alpha.callstate.address):
        assert await health(address, ours) == grpc.StatusCode.OK, address
        assert await health(address, None) == grpc.StatusCode.UNAVAILABLE, address  # plain text
        no_certificate = grpc.ssl_channel_credentials((sites_pki(sites) / "ca.pem").read_bytes())
        assert await health(address, no_certificate) == grpc.StatusCode.UNAVAILABLE, address
        # A certificate of another CA, even one that names this very server.
        other = grpc.ssl_channel_credentials(
            (sites_pki(sites) / "ca.pem").read_bytes(),
            (stranger / "alpha-key.pem").read_bytes(),
            (stranger / "alpha.pem").read_bytes(),
        )
        assert await health(address, other) == grpc.StatusCode.UNAVAILABLE, address


def sites_pki(sites: dict[str, Site]) -> Path:
    ca = Path(next(iter(sites.values())).registry.config_path).parent / "pki"
    assert (ca / "ca.pem").exists()
    return ca


async def test_read_and_control_roles(sites: dict[str, Site]) -> None:
    alpha = sites["alpha"]
    pki = sites_pki(sites)
    reader, controller = client(pki, "dashboard", "read"), client(pki, "crm", "control")
    upsert = pb.UpsertNumberRequest(number="150", display_name="Front desk", department_id="sales")
    async with grpc.aio.secure_channel(alpha.registry.address, reader) as ch:
        stub = pb_grpc.RegistryServiceStub(ch)
        assert await status_of(stub.ListNumbers(pb.ListNumbersRequest(), timeout=5)) == grpc.StatusCode.OK
        assert await status_of(stub.UpsertNumber(upsert, timeout=5)) == grpc.StatusCode.PERMISSION_DENIED
    async with grpc.aio.secure_channel(alpha.gateway.api, reader) as ch:
        place = gw.PlaceCallRequest(from_number="100", to="200")
        code = await status_of(gw_grpc.SipGatewayServiceStub(ch).PlaceCall(place, timeout=5))
        assert code == grpc.StatusCode.PERMISSION_DENIED
    async with grpc.aio.secure_channel(alpha.registry.address, controller) as ch:
        assert await status_of(pb_grpc.RegistryServiceStub(ch).UpsertNumber(upsert, timeout=5)) == grpc.StatusCode.OK
    # What only servers call is closed to every client, control or not.
    async with grpc.aio.secure_channel(alpha.callstate.address, controller) as ch:
        share = cs.SharePartyRequest(call_id="c1", server_id="beta")
        code = await status_of(cs_grpc.CallStateServiceStub(ch).ShareParty(share, timeout=5))
        assert code == grpc.StatusCode.PERMISSION_DENIED
    log = "".join(alpha.registry.log)
    assert "refused /pbxmesh.registry.v1.RegistryService/UpsertNumber" in log
    assert "client dashboard (read)" in log


async def test_a_forged_share_is_refused_or_changes_nothing(sites: dict[str, Site], group: Group) -> None:
    alpha, beta = sites["alpha"], sites["beta"]
    pki = sites_pki(sites)
    call_id = (await place_call(alpha, beta))["beta"][-1].call_id

    async def beta_call() -> cs.Call:
        async with channel(beta.callstate.address) as ch:
            return (await cs_grpc.CallStateServiceStub(ch).GetCall(cs.GetCallRequest(call_id=call_id), timeout=5)).call

    before = await beta_call()
    forged = cs.Party(number="666", display_name="The bank", server_id="alpha")
    # Alpha's own services could share for alpha; another server's certificate cannot, member or not.
    async with grpc.aio.secure_channel(beta.callstate.address, server_credentials(pki, "gamma")) as ch:
        stub = cs_grpc.CallStateServiceStub(ch)
        as_alpha = cs.SharePartyRequest(call_id=call_id, server_id="alpha", party=forged)
        assert await status_of(stub.ShareParty(as_alpha, timeout=5)) == grpc.StatusCode.PERMISSION_DENIED
        as_itself = cs.SharePartyRequest(call_id=call_id, server_id="gamma", party=forged)
        assert await status_of(stub.ShareParty(as_itself, timeout=5)) == grpc.StatusCode.PERMISSION_DENIED
    assert "not a live member" in "".join(beta.callstate.log)
    # A live member that is not the call's peer: its share is taken, and changes nothing.
    gamma = group.server("gamma", ["300"], extra={"tls": server_tls_for(pki, "gamma")})
    secure([load_config(gamma.config_path).listen.registry], pki)
    await gamma.start()
    await wait_for(lambda: member_of(beta, "gamma"), timeout=10, what="gamma in beta's view")
    async with grpc.aio.secure_channel(beta.callstate.address, server_credentials(pki, "gamma")) as ch:
        stub = cs_grpc.CallStateServiceStub(ch)
        as_itself = cs.SharePartyRequest(call_id=call_id, server_id="gamma", party=forged)

        async def accepted() -> bool:
            return await status_of(stub.ShareParty(as_itself, timeout=5)) == grpc.StatusCode.OK

        await wait_for(accepted, timeout=10, what="beta's callstate to see gamma as a member")
    after = await beta_call()
    assert after.remote_party == before.remote_party and after.remote_party.number == "100"
    await gamma.stop()


def server_tls_for(pki: Path, server_id: str) -> dict[str, str]:
    return {
        "ca_file": str(pki / "ca.pem"),
        "cert_file": str(pki / f"{server_id}.pem"),
        "key_file": str(pki / f"{server_id}-key.pem"),
    }


async def member_of(site: Site, server_id: str) -> bool:
    return server_id in await site.registry.member_ids()


async def test_a_renewed_certificate_and_a_second_ca_are_taken_without_a_restart(sites: dict[str, Site]) -> None:
    alpha = sites["alpha"]
    pki = sites_pki(sites)
    # The group moves to a new CA: first every server trusts both, then alpha gets a certificate
    # of the new one; a client of the new CA only gets through without anyone restarting.
    new = pki.parent / "pki-next"
    init_ca(new, "test-next")
    issue(new, "client", "harness", role="read")
    with (pki / "ca.pem").open("ab") as bundle:
        bundle.write((new / "ca.pem").read_bytes())
    new_client = credentials(new)
    cert, key = issue(new, "server", "alpha", hosts=("127.0.0.1",))
    shutil.copy(key, pki / "alpha-key.pem.new")
    shutil.copy(cert, pki / "alpha.pem.new")
    (pki / "alpha-key.pem.new").rename(pki / "alpha-key.pem")
    (pki / "alpha.pem.new").rename(pki / "alpha.pem")

    async def through() -> bool:
        return await health(alpha.registry.address, new_client) == grpc.StatusCode.OK

    await wait_for(through, timeout=10, what="alpha's registry to present its renewed certificate")
    assert alpha.registry.process is not None and alpha.registry.process.returncode is None
