"""Two servers, each with its registry and gateway, on one etcd: a call crosses the trunk."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc.aio
import pytest

from pbxmesh.sipgw.v1 import sipgw_pb2 as pb
from pbxmesh.sipgw.v1 import sipgw_pb2_grpc as pb_grpc
from services.runtime.embedded_etcd import free_port
from tests.integration.test_sipgw import Gateway, run, sipp_args, start_gateway, stop_gateway
from tests.support import Group, Server, has_numbers, wait_for

SECRET = "the-group-trunk-secret-2026"
ALICE = ("100", "alice-pw-100")  # on alpha
CAROL = ("200", "carol-pw-200")  # on beta


@dataclass
class Site:
    registry: Server
    gateway: Gateway
    trunk: str


@pytest.fixture
async def sites(group: Group) -> AsyncIterator[dict[str, Site]]:
    made: dict[str, Site] = {}
    try:
        for server_id, (number, password) in (("alpha", ALICE), ("beta", CAROL)):
            trunk = f"127.0.0.1:{free_port()}"
            listen = {
                "registry": f"127.0.0.1:{free_port()}",
                "sip": "127.0.0.1:0",
                "sipgw": "127.0.0.1:0",
                "trunk": trunk,
            }
            extra = {
                "sip": {"accounts": [{"number": number, "password": password}]},
                "trunk": {"secret": SECRET, "lines": 4},
            }
            server = group.server(server_id, [number], listen=listen, extra=extra)
            await server.start()
            made[server_id] = Site(server, await start_gateway(server.config_path), trunk)
        await wait_for(lambda: has_numbers(made["alpha"].registry, {"200"}), what="beta's 200 on alpha")
        yield made
    finally:
        for site in made.values():
            await stop_gateway(site.gateway)


async def usage(gateway: Gateway) -> pb.GetTrunkUsageResponse:
    async with grpc.aio.insecure_channel(gateway.api) as channel:
        return await pb_grpc.SipGatewayServiceStub(channel).GetTrunkUsage(pb.GetTrunkUsageRequest(), timeout=5)


@pytest.mark.parametrize("hold", [False, True], ids=["plain", "hold-and-resume"])
async def test_a_phone_on_alpha_calls_a_phone_on_beta(sites: dict[str, Site], hold: bool) -> None:
    alpha, beta = sites["alpha"].gateway, sites["beta"].gateway
    callee_port, caller_port = free_port(), free_port()
    registered = await asyncio.to_thread(
        run, *sipp_args(beta, "register.xml", callee_port, CAROL[0], "-au", CAROL[0], "-ap", CAROL[1])
    )
    assert registered.returncode == 0, registered.stdout[-1500:]
    callee = await asyncio.create_subprocess_exec(
        *sipp_args(beta, "callee_hold.xml" if hold else "callee.xml", callee_port, CAROL[0]),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    await asyncio.sleep(0.5)
    caller = await asyncio.to_thread(
        run,
        *sipp_args(
            alpha, "caller_hold.xml" if hold else "caller.xml", caller_port, CAROL[0], "-au", ALICE[0], "-ap", ALICE[1]
        ),
    )
    assert caller.returncode == 0, caller.stdout[-2000:] + caller.stderr[-2000:]
    assert await asyncio.wait_for(callee.wait(), 30) == 0
    alpha_log, beta_log = "".join(alpha.log), "".join(beta.log)
    assert "over the trunk" in alpha_log and "server beta" in alpha_log
    assert f": {ALICE[0]} -> {CAROL[0]}" in beta_log and "hung up by caller" in beta_log
    for gateway in (alpha, beta):
        await wait_for(lambda g=gateway: _idle(g), what="trunk lines back to zero")  # type: ignore[misc]
    assert (await usage(alpha)).lines == 4


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
