"""A gateway that restarts keeps its phones' registrations; one that is told to stop lets calls
finish for a while, takes no new ones, then hangs up the rest with a Reason."""

from __future__ import annotations

import asyncio
import signal
import socket
from pathlib import Path

import grpc.aio
import pytest

from pbxmesh.sipgw.v1 import sipgw_pb2 as pb
from pbxmesh.sipgw.v1 import sipgw_pb2_grpc as pb_grpc
from services.runtime.embedded_etcd import free_port
from tests.harness.config import lone_gateway_config
from tests.harness.servers import Gateway, start_gateway, stop_gateway
from tests.harness.sipp import phones_done, register_phone, run, sipp_args, start_phone, stop_phones
from tests.harness.wait import wait_for
from tests.integration.test_sipgw import ALICE, BOB, _invite


@pytest.mark.parametrize("how", ["sigterm", "kill"])
async def test_registrations_survive_a_gateway_restart(tmp_path: Path, how: str) -> None:
    kept = tmp_path / "state" / "bindings.json"
    gateway = await start_gateway(lone_gateway_config(tmp_path, (ALICE, BOB), sip={"bindings_file": str(kept)}))
    phones: list[asyncio.subprocess.Process] = []
    try:
        bob = await register_phone(gateway, BOB)
        await wait_for(lambda: _true(kept.exists() and BOB[0] in kept.read_text()), what="the registration on disk")
        if how == "kill":
            gateway.process.kill()
            await gateway.process.wait_exit()
        else:
            await gateway.process.stop()
        await gateway.process.start()
        contacts = (await gateway.registrations())[BOB[0]]
        assert [c.source for c in contacts] == [f"127.0.0.1:{bob}"]
        # Bob is reachable at once, without registering again.
        phones.append(await start_phone(gateway, "callee.xml", bob, BOB[0]))
        calling = await asyncio.to_thread(
            run, *sipp_args(gateway, "caller.xml", free_port(), BOB[0], "-au", ALICE[0], "-ap", ALICE[1])
        )
        assert calling.returncode == 0, calling.stdout[-1500:]
        assert await phones_done(*phones) == [0]
    finally:
        await stop_phones(*phones)
        await stop_gateway(gateway)


async def _true(value: bool) -> bool:
    return value


async def _answered(gateway: Gateway) -> bool:
    async with grpc.aio.insecure_channel(gateway.api) as channel:
        calls = (await pb_grpc.SipGatewayServiceStub(channel).ListCalls(pb.ListCallsRequest(), timeout=5)).calls
    return [c.state for c in calls] == [pb.CALL_STATE_ANSWERED]


async def test_sigterm_takes_no_new_call_and_hangs_up_the_rest_with_a_reason(tmp_path: Path) -> None:
    gateway = await start_gateway(lone_gateway_config(tmp_path, (ALICE, BOB), sip={"drain_seconds": 3}))
    traces = {name: tmp_path / f"{name}.log" for name in ("alice", "bob")}
    phones: list[asyncio.subprocess.Process] = []
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(3)
    try:
        alice, bob = await register_phone(gateway, ALICE), await register_phone(gateway, BOB)
        phones = [
            await start_phone(gateway, "talker.xml", port, account[0], "-trace_msg", "-message_file", str(trace))
            for port, account, trace in ((alice, ALICE, traces["alice"]), (bob, BOB, traces["bob"]))
        ]
        async with grpc.aio.insecure_channel(gateway.api) as channel:
            await pb_grpc.SipGatewayServiceStub(channel).PlaceCall(
                pb.PlaceCallRequest(from_number=ALICE[0], to=BOB[0]), timeout=5
            )
        await wait_for(lambda: _answered(gateway), what="the call answered")
        gateway.process.send(signal.SIGTERM)
        await wait_for(lambda: _true(any("stopping (drain)" in line for line in gateway.log)), what="the drain")
        sock.sendto(_invite(BOB[0], "late1"), ("127.0.0.1", gateway.sip_port))
        refused = await asyncio.to_thread(sock.recv, 65536)
        assert refused.startswith(b"SIP/2.0 503 Service Unavailable (shutting down)"), refused[:80]
        assert await phones_done(*phones, seconds=15) == [0, 0]  # each got its BYE
        assert await gateway.process.wait_exit() == 0
        for trace in traces.values():
            assert 'Reason: SIP;cause=503;text="the server is shutting down"' in trace.read_text()
    finally:
        sock.close()
        await stop_phones(*phones)
        await stop_gateway(gateway)
