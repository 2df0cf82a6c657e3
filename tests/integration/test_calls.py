"""Calls through one gateway with SIPp phones: forking, calls placed through the API, TCP."""

from __future__ import annotations

import asyncio
import re
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc.aio
import pytest

from pbxmesh.sipgw.v1 import sipgw_pb2 as pb
from pbxmesh.sipgw.v1 import sipgw_pb2_grpc as pb_grpc
from services.runtime import error_info
from services.runtime.embedded_etcd import free_port
from tests.harness.config import lone_gateway_config
from tests.harness.servers import Gateway, start_gateway, stop_gateway
from tests.harness.sipmsg import digest_authorization, response
from tests.harness.sipp import phones_done, register_phone, run, sipp_args, start_phone, stop_phones
from tests.integration.test_sipgw import ALICE, BOB, CallWatch
from tests.support import wait_for

DAVE = ("102", "dave-secret-33")  # registered nowhere


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    path = lone_gateway_config(tmp_path, (ALICE, BOB, DAVE))
    gw = await start_gateway(path)
    try:
        yield gw
    finally:
        await stop_gateway(gw)


async def test_a_number_rings_on_every_phone_and_the_ones_that_lose_are_canceled(gateway: Gateway) -> None:
    answering, ringing = await register_phone(gateway, BOB), await register_phone(gateway, BOB)
    assert len((await gateway.registrations())[BOB[0]]) == 2
    phones = [
        await start_phone(gateway, "callee.xml", answering, BOB[0]),
        await start_phone(gateway, "callee_cancel.xml", ringing, BOB[0]),
    ]
    calling = await asyncio.to_thread(
        run, *sipp_args(gateway, "caller.xml", free_port(), BOB[0], "-au", ALICE[0], "-ap", ALICE[1])
    )
    assert calling.returncode == 0, calling.stdout[-2000:]
    # One phone answered and talked; the other saw the CANCEL, answered 487 and got its ACK.
    assert await phones_done(*phones) == [0, 0]


async def test_a_call_nobody_answers_ends_at_the_ring_timeout(tmp_path: Path) -> None:
    gateway = await start_gateway(lone_gateway_config(tmp_path, (ALICE, BOB), sip={"ring_timeout": 5}))
    phones: list[asyncio.subprocess.Process] = []
    try:
        phones.append(await start_phone(gateway, "callee_cancel.xml", await register_phone(gateway, BOB), BOB[0]))
        calling = await asyncio.to_thread(
            run, *sipp_args(gateway, "caller_noanswer.xml", free_port(), BOB[0], "-au", ALICE[0], "-ap", ALICE[1])
        )
        # The caller got 480 No Answer after 5 s of ringing; the phone got CANCEL, said 487, got its ACK.
        assert calling.returncode == 0, calling.stdout[-2000:] + "".join(gateway.log[-20:])
        assert await phones_done(*phones) == [0]
        assert "ended: 480 No Answer" in "".join(gateway.log)
    finally:
        await stop_phones(*phones)
        await stop_gateway(gateway)


async def place(gateway: Gateway, request: pb.PlaceCallRequest) -> pb.PlaceCallResponse:
    async with grpc.aio.insecure_channel(gateway.api) as channel:
        return await pb_grpc.SipGatewayServiceStub(channel).PlaceCall(request, timeout=5)


async def hang_up(gateway: Gateway, call_id: str) -> None:
    async with grpc.aio.insecure_channel(gateway.api) as channel:
        await pb_grpc.SipGatewayServiceStub(channel).HangUpCall(pb.HangUpCallRequest(call_id=call_id), timeout=5)


async def test_a_placed_call_rings_the_first_phone_then_connects_it_to_the_second(gateway: Gateway) -> None:
    alice_port, bob_port = await register_phone(gateway, ALICE), await register_phone(gateway, BOB)
    watch = CallWatch(gateway)
    phones = [
        await start_phone(gateway, "callee.xml", alice_port, ALICE[0]),
        await start_phone(gateway, "callee.xml", bob_port, BOB[0]),
    ]
    try:
        await asyncio.wait_for(watch.synced.wait(), 5)
        dial = await asyncio.to_thread(
            run, sys.executable, "-m", "services.cli", "dial", ALICE[0], BOB[0], "--sipgw", gateway.api, "--json"
        )
        assert dial.returncode == 0, dial.stderr
        call_id = re.search(r'"callId": "([0-9a-f]+)"', dial.stdout)
        assert call_id is not None, dial.stdout
        await wait_for(lambda: _true(bool(watch.events) and watch.states()[-1] == "ANSWERED"), what="answered")
        answered = watch.events[-1]
        assert (answered.call_id, answered.caller, answered.callee) == (call_id.group(1), ALICE[0], BOB[0])
        await hang_up(gateway, call_id.group(1))
        assert await phones_done(*phones) == [0, 0]  # each phone: INVITE, answer, ACK, then our BYE
        await wait_for(lambda: _true(watch.states()[-1] == "ENDED"), what="ended")
        assert watch.events[-1].end_reason == "hung up through the API"
    finally:
        await watch.close()
        await phones_done(*phones)
    log = "".join(gateway.log)
    assert f"{ALICE[0]} answered, calling {BOB[0]}" in log


async def _true(value: bool) -> bool:
    return value


async def test_a_placed_call_whose_second_party_is_busy_hangs_up_the_first(gateway: Gateway) -> None:
    alice_port, bob_port = await register_phone(gateway, ALICE), await register_phone(gateway, BOB)
    phones = [
        await start_phone(gateway, "callee.xml", alice_port, ALICE[0]),
        await start_phone(gateway, "callee_busy.xml", bob_port, BOB[0]),
    ]
    try:
        await place(gateway, pb.PlaceCallRequest(from_number=ALICE[0], to=BOB[0]))
        # Alice answered, Bob was busy: Alice's 2xx is ACKed (refusing her media) and she gets BYE.
        assert await phones_done(*phones) == [0, 0]
    finally:
        await phones_done(*phones)
    assert "ended: 486 Busy Here" in "".join(gateway.log)


@pytest.mark.parametrize(
    ("request_fields", "code", "reason"),
    [
        ({"from_number": "", "to": "101"}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_NUMBER"),
        (
            {"from_number": "100", "to": "sip:101@pbx.example.com:5060"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_TARGET",
        ),
        ({"from_number": "100", "to": "101", "caller_id": "alice"}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_NUMBER"),
        ({"from_number": "555", "to": "101"}, grpc.StatusCode.NOT_FOUND, "NUMBER_NOT_FOUND"),
        ({"from_number": "100", "to": "999"}, grpc.StatusCode.NOT_FOUND, "NUMBER_NOT_FOUND"),
        ({"from_number": "102", "to": "100"}, grpc.StatusCode.FAILED_PRECONDITION, "NOT_REGISTERED"),
        ({"from_number": "100", "to": "102"}, grpc.StatusCode.FAILED_PRECONDITION, "NOT_REGISTERED"),
        ({"from_number": "100", "to": "sip:101@127.0.0.1:5070"}, grpc.StatusCode.NOT_FOUND, "NUMBER_NOT_FOUND"),
    ],
)
async def test_place_call_checks_its_arguments(
    gateway: Gateway, request_fields: dict[str, str], code: grpc.StatusCode, reason: str
) -> None:
    await register_phone(gateway, ALICE)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await place(gateway, pb.PlaceCallRequest(**request_fields))
    assert caught.value.code() == code, caught.value.details()
    info = error_info(caught.value)
    assert info is not None and info.reason == reason
    async with grpc.aio.insecure_channel(gateway.api) as channel:
        listed = await pb_grpc.SipGatewayServiceStub(channel).ListCalls(pb.ListCallsRequest(), timeout=5)
    assert list(listed.calls) == []  # nothing was started


async def test_a_phone_calls_over_tcp(gateway: Gateway) -> None:
    bob_port = await register_phone(gateway, BOB)
    callee = await start_phone(gateway, "callee.xml", bob_port, BOB[0])
    try:
        calling = await asyncio.to_thread(
            run, *sipp_args(gateway, "caller.xml", free_port(), BOB[0], "-au", ALICE[0], "-ap", ALICE[1], "-t", "t1")
        )
        assert calling.returncode == 0, calling.stdout[-2000:]
        assert await phones_done(callee) == [0]
    finally:
        await phones_done(callee)
    assert "ended: hung up by caller" in "".join(gateway.log)


def _tcp_phone_answers_one_call(sip: str, registered: asyncio.Event, loop: asyncio.AbstractEventLoop) -> list[str]:
    """A phone that keeps one TCP connection, as RFC 5626-less TCP phones do: it registers on it
    (answering the digest challenge) and is then called on the same connection."""

    host, port = sip.split(":")
    conn = socket.create_connection((host, int(port)), timeout=10)
    local_host, local_port = conn.getsockname()
    local = f"{local_host}:{local_port}"
    reader = conn.makefile("rb")

    def read() -> tuple[str, bytes]:
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            head += reader.readline()
        length = int(re.search(rb"Content-Length: (\d+)", head, re.I).group(1))  # type: ignore[union-attr]
        return head.decode(), reader.read(length)

    def register(extra: str, cseq: int) -> str:
        conn.sendall(
            (
                f"REGISTER sip:{host} SIP/2.0\r\nVia: SIP/2.0/TCP {local};branch=z9hG4bKtcpreg{cseq}\r\n"
                f"Max-Forwards: 70\r\nFrom: <sip:{BOB[0]}@{host}>;tag=tcpphone\r\nTo: <sip:{BOB[0]}@{host}>\r\n"
                f"Call-ID: tcpreg@{local}\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:{BOB[0]}@{local};transport=tcp>\r\n"
                f"Expires: 120\r\n{extra}Content-Length: 0\r\n\r\n"
            ).encode()
        )
        return read()[0]

    challenge = register("", 1)
    ok = register(digest_authorization(challenge, "REGISTER", f"sip:{host}", *BOB, cnonce="abc"), 2)
    assert ok.startswith("SIP/2.0 200"), ok
    loop.call_soon_threadsafe(registered.set)
    seen = []
    invite, offer = read()
    seen.append(invite.split("\r\n", 1)[0])

    sdp = "v=0\r\no=bob 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4002 RTP/AVP 0\r\n"
    conn.sendall(response(invite, "180 Ringing", to_tag="tcpbob").encode())
    contact = f"Contact: <sip:{BOB[0]}@{local};transport=tcp>\r\nContent-Type: application/sdp\r\n"
    answer = response(invite, "200 OK", to_tag="tcpbob", extra=contact, body=sdp).encode()
    conn.sendall(answer)
    ack, _ = read()
    seen.append(ack.split("\r\n", 1)[0])
    bye, _ = read()
    seen.append(bye.split("\r\n", 1)[0])
    bye_ok = response(bye, "200 OK")
    conn.sendall(bye_ok.encode())
    seen.append("offer carried" if b"m=audio" in offer else "no offer")
    conn.close()
    return seen


async def test_a_phone_registered_over_tcp_is_called_on_its_connection(gateway: Gateway) -> None:
    registered = asyncio.Event()
    answering = asyncio.create_task(
        asyncio.to_thread(_tcp_phone_answers_one_call, gateway.sip, registered, asyncio.get_running_loop())
    )
    await asyncio.wait_for(registered.wait(), 10)
    (contact,) = (await gateway.registrations())[BOB[0]]
    assert contact.uri.endswith(";transport=tcp")
    calling = await asyncio.to_thread(
        run, *sipp_args(gateway, "caller.xml", free_port(), BOB[0], "-au", ALICE[0], "-ap", ALICE[1])
    )
    assert calling.returncode == 0, calling.stderr[-2000:]
    seen = await asyncio.wait_for(answering, 30)
    assert [line.split(" ")[0] for line in seen[:3]] == ["INVITE", "ACK", "BYE"]
    assert seen[0].startswith(f"INVITE sip:{BOB[0]}@") and seen[3] == "offer carried"


async def test_json_logs_carry_the_call_id_and_trace_id_on_call_lines(tmp_path: Path) -> None:
    import json

    path = lone_gateway_config(tmp_path, (ALICE, BOB), telemetry={"log_format": "json"})
    gw = await start_gateway(path)
    try:
        bob = await register_phone(gw, BOB)
        callee = await start_phone(gw, "callee.xml", bob, BOB[0])
        calling = await asyncio.to_thread(
            run, *sipp_args(gw, "caller.xml", free_port(), BOB[0], "-au", ALICE[0], "-ap", ALICE[1])
        )
        assert calling.returncode == 0, calling.stdout[-2000:]
        assert await phones_done(callee) == [0]
        await wait_for(lambda: _true(any("ended" in line for line in gw.log)), what="the call's end logged")
    finally:
        await stop_gateway(gw)
    entries = [json.loads(line) for line in gw.log if line.strip()]  # every line is one JSON object
    call_lines = [e for e in entries if e["message"].startswith("call ")]
    assert len(call_lines) >= 3  # started, answered, ended
    assert len({e["call_id"] for e in call_lines}) == 1
    assert all(len(e.get("trace_id", "")) == 32 for e in call_lines), call_lines
    assert {e["level"] for e in entries} <= {"debug", "info", "warning", "error"}
    assert ALICE[1] not in "".join(gw.log)
