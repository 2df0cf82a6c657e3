"""Two servers, each with its registry and gateway, on one etcd: a call crosses the trunk."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import grpc.aio
import pytest

from pbxmesh.sipgw.v1 import sipgw_pb2 as pb
from pbxmesh.sipgw.v1 import sipgw_pb2_grpc as pb_grpc
from services.runtime.embedded_etcd import free_port
from tests.harness.servers import Gateway, Group
from tests.harness.sipp import phones_done, register_phone, run, sipp_args, sipp_call, start_phone, stop_phones
from tests.harness.site import SECRET, Site, Spec, make_site, running_sites, stop_sites
from tests.integration.test_sipgw import CallWatch, _invite
from tests.support import has_numbers, wait_for

ALICE = ("100", "alice-pw-100")  # on alpha
CAROL = ("200", "carol-pw-200")  # on beta


def spec(account: tuple[str, str], **more: Any) -> Spec:
    """A server with its registry and gateway (no callstate) and a 5 s lease."""
    return Spec(account, callstate=False, lease_ttl=5, **more)


@pytest.fixture
async def sites(group: Group) -> AsyncIterator[dict[str, Site]]:
    async with running_sites(group, {"alpha": spec(ALICE), "beta": spec(CAROL)}, {"alpha": {"200"}}) as made:
        yield made


async def usage(gateway: Gateway) -> pb.GetTrunkUsageResponse:
    async with grpc.aio.insecure_channel(gateway.api) as channel:
        return await pb_grpc.SipGatewayServiceStub(channel).GetTrunkUsage(pb.GetTrunkUsageRequest(), timeout=5)


@pytest.mark.parametrize("hold", [False, True], ids=["plain", "hold-and-resume"])
async def test_a_phone_on_alpha_calls_a_phone_on_beta(sites: dict[str, Site], hold: bool) -> None:
    alpha, beta = sites["alpha"].gateway, sites["beta"].gateway
    caller_xml, callee_xml = ("caller_hold.xml", "callee_hold.xml") if hold else ("caller.xml", "callee.xml")
    watches = [CallWatch(alpha), CallWatch(beta)]
    try:
        for watch in watches:
            await asyncio.wait_for(watch.synced.wait(), 5)
        await sipp_call(alpha, beta, ALICE, CAROL, caller_xml, callee_xml)
        for watch in watches:
            await wait_for(lambda w=watch: _ended(w), what="the call's end on both servers")  # type: ignore[misc]
    finally:
        for watch in watches:
            await watch.close()
    out, into = watches[0].events[-1], watches[1].events[-1]
    assert (out.kind, into.kind) == (pb.CALL_KIND_TRUNK_OUT, pb.CALL_KIND_TRUNK_IN)
    assert out.call_id == into.call_id  # one correlation id for the call on both servers
    assert (into.caller, into.callee) == (ALICE[0], CAROL[0])
    alpha_log, beta_log = "".join(alpha.log), "".join(beta.log)
    assert "over the trunk" in alpha_log and "server beta" in alpha_log
    assert f": {ALICE[0]} -> {CAROL[0]}" in beta_log and "hung up by caller" in beta_log
    for gateway in (alpha, beta):
        await wait_for(lambda g=gateway: _idle(g), what="trunk lines back to zero")  # type: ignore[misc]
    assert (await usage(alpha)).lines == 4


async def _ended(watch: CallWatch) -> bool:
    return bool(watch.events) and watch.events[-1].state == pb.CALL_STATE_ENDED


async def _idle(gateway: Gateway) -> bool:
    return (await usage(gateway)).in_use == 0


async def test_a_trunk_request_without_the_right_proof_gets_403(sites: dict[str, Site]) -> None:
    host, port = sites["beta"].trunk.split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(3)
    invite = (
        f"INVITE sip:200@{host}:{port} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKforged1;rport\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:100@127.0.0.1>;tag=f1\r\nTo: <sip:200@127.0.0.1>\r\n"
        "Call-ID: forged-1\r\nCSeq: 1 INVITE\r\nX-Pbxmesh-Trunk: v1;ts=1;sig=forged\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    try:
        sock.sendto(invite, (host, int(port)))
        answer = await asyncio.to_thread(sock.recv, 65536)
    finally:
        sock.close()
    assert answer.startswith(b"SIP/2.0 403 Forbidden")
    assert b"forged" not in answer.split(b"\r\n", 1)[0]
    await wait_for(lambda: _logged(sites["beta"].gateway, "trunk INVITE from 127.0.0.1"), what="the refusal logged")
    assert (await usage(sites["beta"].gateway)).in_use == 0


async def _logged(gateway: Gateway, text: str) -> bool:
    return text in "".join(gateway.log)


async def test_a_captured_trunk_invite_sent_again_makes_no_call(group: Group) -> None:
    """A signed INVITE replayed with only a new Via branch is refused; sent again as it was (a
    retransmission of the live transaction) it is absorbed: one call, one line, one ring."""
    site = await make_site(group, "beta", spec(CAROL))
    host, port = site.trunk.split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(3)
    trace = site.registry.config_path.parent / "carol.log"
    try:
        carol = await register_phone(site.gateway, CAROL)
        phone = await start_phone(
            site.gateway, "callee_cancel.xml", carol, CAROL[0], "-trace_msg", "-message_file", str(trace)
        )

        def answers(data: bytes, until: bytes) -> bytes:
            sock.sendto(data, (host, int(port)))
            while True:
                answer = sock.recv(65536)
                if answer.startswith(until):
                    return answer

        captured = _signed_invite(site.trunk, CAROL[0], "replay1")
        await asyncio.to_thread(answers, captured, b"SIP/2.0 180")
        # A new branch is another request, which the proof does not cover; the same branch from
        # another sent-by is a new transaction to the transaction layer, and the proof was used.
        for replayed in (
            captured.replace(b"branch=z9hG4bKreplay1;", b"branch=z9hG4bKreplay2;"),
            captured.replace(b"127.0.0.1:5999;branch", b"127.0.0.1:5998;branch"),
        ):
            refused = await asyncio.to_thread(answers, replayed, b"SIP/2.0 4")
            assert refused.startswith(b"SIP/2.0 403 Forbidden"), refused[:80]
        again = await asyncio.to_thread(answers, captured, b"SIP/2.0 180")  # the live transaction's answer
        assert b"branch=z9hG4bKreplay1" in again
        counts = await usage(site.gateway)
        assert (counts.in_use, counts.incoming) == (1, 1)
        await wait_for(lambda: _logged(site.gateway, "refused: wrong trunk proof"), what="the new branch refused")
        await wait_for(lambda: _logged(site.gateway, "refused: replayed trunk proof"), what="the replay refused")
        await stop_phones(phone)
        assert trace.read_text().count("INVITE sip:") == 1  # the phone rang once
    finally:
        sock.close()
        await stop_sites(site)


async def test_a_flood_of_unsigned_trunk_requests_writes_a_few_lines_and_counts_them_all(group: Group) -> None:
    site = await make_site(group, "beta", spec(CAROL))
    host, port = site.trunk.split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(3)
    sent = 500
    try:
        for n in range(sent):
            sock.sendto(_invite(CAROL[0], f"flood{n}", host=site.trunk), (host, int(port)))
        answers = 0
        while answers < sent:  # every one answered 403 (none dropped unanswered)
            answer = await asyncio.to_thread(sock.recv, 65536)
            answers += answer.startswith(b"SIP/2.0 403")
        lines = [line for line in site.gateway.log if "refused: no trunk proof" in line]
        assert 1 <= len(lines) <= 2, lines[:5]
    finally:
        sock.close()
        await stop_sites(site)


def _signed_invite(trunk: str, number: str, branch: str) -> bytes:
    """An INVITE as another server of the group sends it: signed with the group's secret."""
    from services.sipgw.auth.trunk_proof import TrunkProof

    asserted_identity = "<sip:100@alpha.pbxmesh.invalid>"
    proof = TrunkProof(SECRET).sign(
        "INVITE", f"sip:{number}@{trunk}", f"{branch}@127.0.0.1", "1 INVITE", f"a{branch}", f"z9hG4bK{branch}",
        b"", f"{asserted_identity}\n\n\n\n\n",  # identity, origin, correlation, path, traceparent, instance
    )  # fmt: skip
    identity = f"P-Asserted-Identity: {asserted_identity}\r\n"
    return _invite(number, branch, host=trunk, extra=f"{identity}X-Pbxmesh-Trunk: {proof}\r\n")


async def test_calls_above_the_trunk_lines_get_503_and_the_count_stays_exact(group: Group) -> None:
    site = await make_site(group, "beta", spec(CAROL, lines=1))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(3)
    host, port = site.trunk.split(":")
    try:
        callee_port = await register_phone(site.gateway, CAROL)
        callee = await start_phone(site.gateway, "callee_cancel.xml", callee_port, CAROL[0])

        def first_final(data: bytes) -> bytes:
            sock.sendto(data, (host, int(port)))
            while True:
                answer = sock.recv(65536)
                if not answer.startswith((b"SIP/2.0 100", b"SIP/2.0 180")):
                    return answer

        def ringing(data: bytes) -> bytes:
            sock.sendto(data, (host, int(port)))
            while True:
                answer = sock.recv(65536)
                if answer.startswith(b"SIP/2.0 180"):
                    return answer

        await asyncio.to_thread(ringing, _signed_invite(site.trunk, CAROL[0], "line1"))
        assert (await usage(site.gateway)).in_use == 1
        busy = await asyncio.to_thread(first_final, _signed_invite(site.trunk, CAROL[0], "line2"))
        assert busy.startswith(b"SIP/2.0 503 Service Unavailable (all 1 trunk lines are busy)"), busy[:80]
        counts = await usage(site.gateway)
        assert (counts.in_use, counts.incoming, counts.rejected) == (1, 1, 1)
        await stop_phones(callee)
    finally:
        sock.close()
        await stop_sites(site)


BOB = ("101", "bob-pw-101")  # on alpha
ERIN = ("201", "erin-pw-201")  # on beta


@pytest.fixture
async def office(group: Group) -> AsyncIterator[dict[str, Site]]:
    """alpha (100, 101) and beta (200, 201 in department support, dialed as 250; 299 forwards to
    alpha's 101 by a full URI on alpha's trunk)."""
    alpha_trunk = f"127.0.0.1:{free_port()}"
    specs = {
        "alpha": spec(ALICE, more=(BOB,), trunk=alpha_trunk),
        "beta": spec(
            CAROL,
            more=(ERIN,),
            departments=[{"id": "support", "name": "Support"}],
            numbers=[
                {"number": "200", "department": "support"},
                {"number": "201", "department": "support"},
                {"number": "250", "department": "support", "kind": "department"},
                "299",
            ],
            scenarios={
                "inter_server": [
                    {"match": {"called": "250"}, "ring_department": "support"},
                    {"match": {"called": "299"}, "forward": f"sip:{BOB[0]}@{alpha_trunk}"},
                    {"match": {"called": "2.."}, "dial": "${called}"},
                ]
            },
        ),
    }
    async with running_sites(group, specs, {"alpha": {"250", "299"}}) as made:
        yield made


async def test_a_department_number_rings_every_phone_of_the_department(office: dict[str, Site]) -> None:
    alpha, beta = office["alpha"].gateway, office["beta"].gateway
    carol, erin = await register_phone(beta, CAROL), await register_phone(beta, ERIN)
    phones = [
        await start_phone(beta, "callee.xml", carol, CAROL[0]),
        await start_phone(beta, "callee_cancel.xml", erin, ERIN[0]),
    ]
    calling = await asyncio.to_thread(
        run, *sipp_args(alpha, "caller.xml", free_port(), "250", "-au", ALICE[0], "-ap", ALICE[1])
    )
    assert calling.returncode == 0, calling.stderr[-2000:]
    assert await phones_done(*phones) == [0, 0]  # Carol answered; Erin's ringing phone was canceled
    await wait_for(lambda: _all_idle(alpha, beta), what="trunk lines free")


async def test_a_scenario_forwards_a_call_to_a_full_uri(office: dict[str, Site]) -> None:
    alpha, beta = office["alpha"].gateway, office["beta"].gateway
    bob = await register_phone(alpha, BOB)
    phone = await start_phone(alpha, "callee.xml", bob, BOB[0])
    calling = await asyncio.to_thread(
        run, *sipp_args(alpha, "caller.xml", free_port(), "299", "-au", ALICE[0], "-ap", ALICE[1])
    )
    assert calling.returncode == 0, calling.stderr[-2000:]
    assert await phones_done(phone) == [0]
    # alpha -> beta (299) -> back to alpha's trunk by URI -> Bob: two lines on each server, all freed.
    await wait_for(lambda: _all_idle(alpha, beta), what="trunk lines free")
    assert [(await usage(gw)).rejected for gw in (alpha, beta)] == [0, 0]


async def test_a_call_placed_to_a_full_uri_crosses_the_trunk(office: dict[str, Site]) -> None:
    alpha, beta = office["alpha"].gateway, office["beta"].gateway
    alice, carol = await register_phone(alpha, ALICE), await register_phone(beta, CAROL)
    phones = [
        await start_phone(alpha, "callee.xml", alice, ALICE[0]),
        await start_phone(beta, "callee.xml", carol, CAROL[0]),
    ]
    watch = CallWatch(beta)
    try:
        async with grpc.aio.insecure_channel(alpha.api) as channel:
            stub = pb_grpc.SipGatewayServiceStub(channel)
            request = pb.PlaceCallRequest(
                from_number=ALICE[0], to=f"sip:{CAROL[0]}@{office['beta'].trunk}", caller_id="555"
            )
            placed = (await stub.PlaceCall(request, timeout=5)).call
            await wait_for(lambda: _answered(watch), what="the call answered on beta")
            assert (await usage(alpha)).outgoing == 1
            await stub.HangUpCall(pb.HangUpCallRequest(call_id=placed.call_id), timeout=5)
        assert await phones_done(*phones) == [0, 0]
        seen = watch.events[-1]
        assert (seen.call_id, seen.caller, seen.callee, seen.kind) == (
            placed.call_id,
            "555",
            CAROL[0],
            pb.CALL_KIND_TRUNK_IN,
        )
        await wait_for(lambda: _all_idle(alpha, beta), what="trunk lines free")
    finally:
        await watch.close()
        await phones_done(*phones)


async def _all_idle(*gateways: Gateway) -> bool:
    return all([await _idle(gw) for gw in gateways])


async def _answered(watch: CallWatch) -> bool:
    return any(c.state == pb.CALL_STATE_ANSWERED for c in watch.events)


async def test_a_trunk_advertised_by_name_is_resolved_and_called(group: Group) -> None:
    """beta listens on 127.0.0.1 and advertises its trunk as localhost (as a Kubernetes Service name
    would be): alpha's gateway resolves the name and the call goes through."""
    made: list[Site] = []
    try:
        made.append(await make_site(group, "alpha", spec(ALICE)))
        port = free_port()
        made.append(
            await make_site(group, "beta", spec(CAROL, trunk=f"127.0.0.1:{port}", advertise=f"localhost:{port}"))
        )
        await wait_for(lambda: has_numbers(made[0].registry, {"200"}), what="beta's 200 on alpha")
        route = await made[0].registry.resolve("200")
        assert route is not None and route.trunk_address == f"localhost:{port}"
        await sipp_call(made[0].gateway, made[1].gateway, ALICE, CAROL, "caller.xml", "callee.xml")
        assert f"trunk address localhost:{port} is 127.0.0.1:{port}" in "".join(made[0].gateway.log)
    finally:
        await stop_sites(*made)
