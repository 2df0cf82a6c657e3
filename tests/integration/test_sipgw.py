"""The SIP gateway process with real SIP peers: sipsak (OPTIONS, REGISTER) and SIPp (REGISTER)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc.aio
import pytest

from pbxmesh.sipgw.v1 import sipgw_pb2 as pb
from pbxmesh.sipgw.v1 import sipgw_pb2_grpc as pb_grpc
from services.runtime.embedded_etcd import free_port
from tests.harness.config import lone_gateway_config
from tests.harness.process import REPO, child_env
from tests.harness.servers import Gateway, start_gateway, stop_gateway
from tests.harness.sipp import (
    SIPP_DIR,
    phones_done,
    register_phone,
    run,
    sipp_args,
    sipp_call,
    spawn_sipp,
    start_phone,
    stop_phones,
    tool,
)
from tests.harness.wait import wait_for

# Helpers other test files take from here (they live in tests.harness now).
__all__ = ["Gateway", "lone_gateway_config", "phones_done", "register_phone", "start_phone", "stop_gateway"]

ALICE, BOB = ("100", "alice-secret-1"), ("101", "bob-secret-22")


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    gw = await start_gateway(lone_gateway_config(tmp_path, (ALICE, BOB)))
    try:
        yield gw
    finally:
        await stop_gateway(gw)


async def test_sipsak_options_and_register_with_digest(gateway: Gateway) -> None:
    sipsak = tool("sipsak")
    ping = await asyncio.to_thread(run, sipsak, "-v", "-s", f"sip:{ALICE[0]}@{gateway.sip}")
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert "200 OK" in ping.stdout and "Allow: INVITE, ACK, CANCEL, BYE, REGISTER, OPTIONS" in ping.stdout

    good = await asyncio.to_thread(
        run, sipsak, "-U", "-x", "120", "-s", f"sip:{ALICE[0]}@{gateway.sip}", "-u", ALICE[0], "-a", ALICE[1]
    )
    assert good.returncode == 0, good.stdout + good.stderr
    bad = await asyncio.to_thread(
        run, sipsak, "-U", "-x", "120", "-s", f"sip:{BOB[0]}@{gateway.sip}", "-u", BOB[0], "-a", "not-his-password"
    )
    assert bad.returncode != 0 and "403" in bad.stdout + bad.stderr
    # sipsak unregisters at the end of its usrloc test: what counts is that only Alice got in.
    log = "".join(gateway.log)
    assert ALICE[1] not in log and "not-his-password" not in log and "refused: wrong digest" in log


async def test_sipp_registers_with_digest_and_the_binding_is_listed(gateway: Gateway) -> None:
    sipp = tool("sipp")
    port = free_port()
    result = await asyncio.to_thread(
        run, "timeout", "30", sipp, gateway.sip, "-sf", str(SIPP_DIR / "register.xml"),
        "-i", "127.0.0.1", "-p", str(port), "-m", "1", "-s", BOB[0], "-au", BOB[0], "-ap", BOB[1],
        "-timeout", "20s", "-nostdin",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    registrations = await gateway.registrations()
    assert list(registrations) == [BOB[0]]
    (contact,) = registrations[BOB[0]]
    assert contact.uri == f"sip:{BOB[0]}@127.0.0.1:{port}"
    assert contact.source == f"127.0.0.1:{port}" and 290 <= contact.expires_in <= 300


def test_the_gateway_refuses_to_start_without_its_addresses(tmp_path: Path) -> None:
    path = tmp_path / "no-sip.yaml"
    path.write_text("server: {id: alpha}\nlisten: {registry: '127.0.0.1:0'}\n")
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "serve", "sipgw", "-c", str(path)],
        capture_output=True, text=True, timeout=30, env=child_env(), cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 2 and "listen.sip: required to run the SIP gateway" in result.stderr


CALLS = {
    "plain": ("caller.xml", "callee.xml", "hung up by caller"),
    "hold-and-resume": ("caller_hold.xml", "callee_hold.xml", "hung up by caller"),
    "callee-hangs-up": ("caller_hungup.xml", "callee_hangup.xml", "hung up by callee"),
    "callee-busy": ("caller_busy.xml", "callee_busy.xml", "ended: 486 Busy Here"),
}


@pytest.mark.parametrize("flow", list(CALLS))
async def test_a_local_call_between_two_sipp_phones(gateway: Gateway, flow: str) -> None:
    caller_xml, callee_xml, ending = CALLS[flow]
    await sipp_call(gateway, gateway, ALICE, BOB, caller_xml, callee_xml)
    log = "".join(gateway.log)
    assert f": {ALICE[0]} -> {BOB[0]}" in log and ending in log


def _invite(
    called: str,
    branch: str,
    max_forwards: int = 70,
    cseq: int = 1,
    auth: str = "",
    host: str = "127.0.0.1",
    extra: str = "",
) -> bytes:
    """A phone's (or, with ``extra`` headers, a server's) INVITE as raw bytes; ``auth`` is a header line."""
    return (
        f"INVITE sip:{called}@{host} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK{branch};rport\r\n"
        f"Max-Forwards: {max_forwards}\r\nFrom: <sip:100@127.0.0.1>;tag=a{branch}\r\nTo: <sip:{called}@127.0.0.1>\r\n"
        f"Call-ID: {branch}@127.0.0.1\r\nCSeq: {cseq} INVITE\r\nContact: <sip:100@127.0.0.1:5999>\r\n"
        f"{auth}{extra}Content-Length: 0\r\n\r\n"
    ).encode()


def _proxy_authorization(challenge: bytes, uri: str, user: str, password: str) -> str:
    import hashlib

    def h(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()

    match = re.search(rb'Proxy-Authenticate: Digest realm="([^"]+)", nonce="([^"]+)", algorithm=MD5', challenge)
    assert match is not None, challenge
    realm, nonce = match.group(1).decode(), match.group(2).decode()
    ha1, ha2 = h(f"{user}:{realm}:{password}"), h(f"INVITE:{uri}")
    response = h(f"{ha1}:{nonce}:00000001:c0ffee:auth:{ha2}")
    return (
        f'Proxy-Authorization: Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
        f'response="{response}", algorithm=MD5, qop=auth, nc=00000001, cnonce="c0ffee"\r\n'
    )


class RawPhone:
    """A phone made of one UDP socket: it sends raw requests, reads only the answers to the request
    it waits on (a retransmitted answer to an earlier one is skipped), and ACKs every failure answer
    to its INVITEs, as RFC 3261 17.1.1.3 asks (else the gateway keeps resending it)."""

    def __init__(self, target: str):
        import socket

        host, port = target.split(":")
        self.target = (host, int(port))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(5)

    def send(self, request: bytes) -> None:
        self.sock.sendto(request, self.target)

    def answer_to(self, request: bytes, skip: tuple[bytes, ...] = (b"SIP/2.0 100",)) -> bytes:
        branch = re.search(rb"branch=([^;\r]+)", request)
        assert branch is not None
        while True:
            answer = self.sock.recv(65536)
            head = answer.split(b"\r\n\r\n", 1)[0]
            if branch.group(1) not in head:
                continue
            status = int(answer.split(b" ", 2)[1])
            if status >= 300 and b" INVITE\r\n" in head and request.startswith(b"INVITE"):
                self.send(_ack(request, answer))
            if not answer.startswith(skip):
                return answer

    def close(self) -> None:
        self.sock.close()


def _ack(invite: bytes, answer: bytes) -> bytes:
    """The ACK for a failure answer: the INVITE's Via, From, Call-ID and CSeq number, the answer's To."""

    def field(message: bytes, name: bytes) -> bytes:
        found = re.search(rb"\r\n" + name + rb": ([^\r]*)", message)
        assert found is not None
        return found.group(1)

    uri = invite.split(b" ", 2)[1]
    cseq = field(invite, b"CSeq").split()[0]
    return (
        b"ACK "
        + uri
        + b" SIP/2.0\r\nVia: "
        + field(invite, b"Via")
        + b"\r\nMax-Forwards: 70\r\nFrom: "
        + field(invite, b"From")
        + b"\r\nTo: "
        + field(answer, b"To")
        + b"\r\nCall-ID: "
        + field(invite, b"Call-ID")
        + b"\r\nCSeq: "
        + cseq
        + b" ACK\r\nContent-Length: 0\r\n\r\n"
    )


async def test_calls_need_credentials_and_those_that_cannot_connect_get_404_480_or_483(gateway: Gateway) -> None:
    phone = RawPhone(gateway.sip)

    def final(data: bytes) -> bytes:
        phone.send(data)
        return phone.answer_to(data)

    def call(called: str, branch: str, max_forwards: int = 70, password: str = ALICE[1]) -> bytes:
        challenge = final(_invite(called, branch, max_forwards))
        assert challenge.startswith(b"SIP/2.0 407"), challenge  # even for numbers that do not exist
        auth = _proxy_authorization(challenge, f"sip:{called}@127.0.0.1", ALICE[0], password)
        return final(_invite(called, branch + "b", max_forwards, 2, auth))

    try:
        assert (await asyncio.to_thread(call, "999", "nf1")).startswith(b"SIP/2.0 404")
        assert (await asyncio.to_thread(call, BOB[0], "nr1")).startswith(b"SIP/2.0 480")
        assert (await asyncio.to_thread(call, BOB[0], "mf1", 0)).startswith(b"SIP/2.0 483")
        assert (await asyncio.to_thread(call, BOB[0], "pw1", 70, "wrong")).startswith(b"SIP/2.0 403")
    finally:
        phone.close()


async def test_cancel_before_the_answer_reaches_the_ringing_phone(gateway: Gateway) -> None:
    callee = await start_phone(gateway, "callee_cancel.xml", await register_phone(gateway, BOB), BOB[0])
    phone = RawPhone(gateway.sip)

    def caller() -> list[bytes]:
        first = _invite(BOB[0], "cx1")
        phone.send(first)
        challenge = phone.answer_to(first)
        auth = _proxy_authorization(challenge, f"sip:{BOB[0]}@127.0.0.1", ALICE[0], ALICE[1])
        invite = _invite(BOB[0], "cx2", 70, 2, auth)
        phone.send(invite)
        seen = [phone.answer_to(invite, skip=()) for _ in range(2)]  # 100 Trying, 180 Ringing
        cancel = invite.replace(b"INVITE sip:", b"CANCEL sip:", 1).replace(b"CSeq: 2 INVITE", b"CSeq: 2 CANCEL")
        cancel = re.sub(rb"Proxy-Authorization: [^\r]*\r\n", b"", cancel)
        phone.send(cancel)
        # The CANCEL and the INVITE share a branch: their answers (200, 487) come in either order.
        seen += [phone.answer_to(invite, skip=()) for _ in range(2)]
        return seen

    try:
        seen = await asyncio.to_thread(caller)
        statuses = sorted(message.split(b"\r\n", 1)[0] for message in seen)
        assert statuses == [
            b"SIP/2.0 100 Trying", b"SIP/2.0 180 Ringing", b"SIP/2.0 200 OK", b"SIP/2.0 487 Request Terminated",
        ]  # fmt: skip
        assert await asyncio.wait_for(callee.wait(), 30) == 0  # the phone saw the CANCEL and was ACKed
    finally:
        phone.close()
        await stop_phones(callee)


class CallWatch:
    """Collects a gateway's WatchCalls stream in the background."""

    def __init__(self, gateway: Gateway):
        self.events: list[pb.Call] = []
        self.synced = asyncio.Event()
        self._task = asyncio.create_task(self._run(gateway))

    async def _run(self, gateway: Gateway) -> None:
        async with grpc.aio.insecure_channel(gateway.api) as channel:
            async for message in pb_grpc.SipGatewayServiceStub(channel).WatchCalls(pb.WatchCallsRequest()):
                self.events.extend(message.calls)
                self.synced.set()

    def states(self) -> list[str]:
        return [pb.CallState.Name(c.state).removeprefix("CALL_STATE_") for c in self.events]

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def test_watch_and_list_calls_follow_a_call(gateway: Gateway) -> None:
    watch = CallWatch(gateway)
    try:
        await asyncio.wait_for(watch.synced.wait(), 5)
        assert watch.events == []
        await sipp_call(gateway, gateway, ALICE, BOB, "caller.xml", "callee.xml")
        await wait_for(lambda: _sync(watch.states() == ["DIALING", "RINGING", "ANSWERED", "ENDED"]), what="states")
        ended = watch.events[-1]
        assert (ended.caller, ended.callee, ended.end_reason) == (ALICE[0], BOB[0], "hung up by caller")
        assert ended.kind == pb.CALL_KIND_LOCAL and len({c.call_id for c in watch.events}) == 1
        assert ended.answered_at.ToNanoseconds() >= ended.started_at.ToNanoseconds() > 0
    finally:
        await watch.close()
    async with grpc.aio.insecure_channel(gateway.api) as channel:
        listed = await pb_grpc.SipGatewayServiceStub(channel).ListCalls(pb.ListCallsRequest(), timeout=5)
    assert list(listed.calls) == []
    cli = await asyncio.to_thread(run, sys.executable, "-m", "services.cli", "calls", "--sipgw", gateway.api)
    assert cli.returncode == 0 and "no calls in progress" in cli.stdout


async def _sync(value: bool) -> bool:
    return value


async def test_hang_up_through_the_api_sends_bye_to_both_phones(gateway: Gateway) -> None:
    from services.runtime import error_info

    callee_port, caller_port = await register_phone(gateway, BOB), free_port()
    watch = CallWatch(gateway)
    phones = []
    try:
        await asyncio.wait_for(watch.synced.wait(), 5)
        phones.append(await start_phone(gateway, "callee.xml", callee_port, BOB[0]))
        caller = sipp_args(gateway, "caller_hungup.xml", caller_port, BOB[0], "-au", ALICE[0], "-ap", ALICE[1])
        phones.append(await spawn_sipp(*caller))
        await wait_for(lambda: _sync("ANSWERED" in watch.states()), what="the answer")
        call_id = watch.events[-1].call_id
        async with grpc.aio.insecure_channel(gateway.api) as channel:
            stub = pb_grpc.SipGatewayServiceStub(channel)
            await stub.HangUpCall(pb.HangUpCallRequest(call_id=call_id), timeout=5)
            for bad, code, reason in (
                ("no-such-call", grpc.StatusCode.NOT_FOUND, "CALL_NOT_FOUND"),
                ("", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_CALL_ID"),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await stub.HangUpCall(pb.HangUpCallRequest(call_id=bad), timeout=5)
                info = error_info(raised.value)
                assert raised.value.code() == code and info is not None and info.reason == reason
        for phone in phones:
            assert await asyncio.wait_for(phone.wait(), 20) == 0  # each got its BYE and answered it
        assert watch.events[-1].end_reason == "hung up through the API"
    finally:
        await watch.close()
        await stop_phones(*phones)
