"""The SIP gateway process with real SIP peers: sipsak (OPTIONS, REGISTER) and SIPp (REGISTER)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc.aio
import pytest
import yaml

from pbxmesh.sipgw.v1 import sipgw_pb2 as pb
from pbxmesh.sipgw.v1 import sipgw_pb2_grpc as pb_grpc
from services.runtime.embedded_etcd import free_port
from tests.support import REPO, child_env, wait_for

READY = re.compile(r"SIP on (\S+):(\d+) \(UDP, TCP\), API on (\S+)")
SIPP_DIR = Path(__file__).parent / "sipp"
ALICE, BOB = ("100", "alice-secret-1"), ("101", "bob-secret-22")


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path is not None, f"{name} is not installed: `make test` installs it (Debian package)"
    return path


class Gateway:
    def __init__(self, process: asyncio.subprocess.Process, sip_port: int, api: str):
        self.process = process
        self.sip = f"127.0.0.1:{sip_port}"
        self.sip_port = sip_port
        self.api = api
        self.log: list[str] = []
        self.reader: asyncio.Task[None] | None = None

    async def registrations(self) -> dict[str, list[pb.Contact]]:
        async with grpc.aio.insecure_channel(self.api) as channel:
            stub = pb_grpc.SipGatewayServiceStub(channel)
            response = await stub.ListRegistrations(pb.ListRegistrationsRequest(), timeout=5)
        return {r.number: list(r.contacts) for r in response.registrations}


async def spawn_service(
    service: str, path: Path, ready: re.Pattern[str], env: dict[str, str] | None = None
) -> tuple[asyncio.subprocess.Process, re.Match[str], list[str], asyncio.Task[None]]:
    """``pbxmesh serve SERVICE -c PATH``, once its log says it is ready: (process, the ready
    line's match, its log so far and on, the task that keeps reading the log)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", "serve", service, "-c", str(path),
        stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL, env=child_env(env), cwd=REPO,
    )  # fmt: skip
    assert process.stderr is not None
    log: list[str] = []
    match = None
    async with asyncio.timeout(15):
        while match is None:
            line = (await process.stderr.readline()).decode()
            assert line, f"{service} exited:\n" + "".join(log)
            log.append(line)
            match = ready.search(line)

    async def drain() -> None:
        assert process.stderr is not None
        async for raw in process.stderr:
            log.append(raw.decode(errors="replace"))

    return process, match, log, asyncio.create_task(drain())


async def start_gateway(path: Path, env: dict[str, str] | None = None) -> Gateway:
    process, match, log, reader = await spawn_service("sipgw", path, READY, env)
    gw = Gateway(process, int(match.group(2)), match.group(3))
    gw.log, gw.reader = log, reader
    return gw


async def stop_gateway(gw: Gateway) -> None:
    if gw.process.returncode is None:
        gw.process.terminate()
        try:
            await asyncio.wait_for(gw.process.wait(), 10)
        except TimeoutError:
            gw.process.kill()
            await gw.process.wait()
    if gw.reader is not None:
        gw.reader.cancel()


def lone_gateway_config(
    tmp_path: Path, accounts: tuple[tuple[str, str], ...], sip: dict[str, object] | None = None, **extra: object
) -> Path:
    """The config of a gateway of its own (server alpha) with these phone accounts; ``sip`` adds
    keys to the sip section."""
    config = {
        "server": {"id": "alpha", "name": "Alpha office"},
        "listen": {"registry": "127.0.0.1:0", "sip": "127.0.0.1:0", "sipgw": "127.0.0.1:0"},
        "numbering": {"numbers": [{"number": n} for n, _ in accounts]},
        "sip": {"accounts": [{"number": n, "password": p} for n, p in accounts], **(sip or {})},
        **extra,
    }
    path = tmp_path / "alpha.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    gw = await start_gateway(lone_gateway_config(tmp_path, (ALICE, BOB)))
    try:
        yield gw
    finally:
        await stop_gateway(gw)


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


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


async def register_phone(gateway: Gateway, account: tuple[str, str], *extra: str) -> int:
    """One SIPp REGISTER for ``account``; returns the port it registered from."""
    port = free_port()
    done = await asyncio.to_thread(
        run, *sipp_args(gateway, "register.xml", port, account[0], "-au", account[0], "-ap", account[1], *extra)
    )
    assert done.returncode == 0, done.stdout[-1500:]
    return port


async def start_phone(
    gateway: Gateway, scenario: str, port: int, number: str, *extra: str
) -> asyncio.subprocess.Process:
    """A SIPp phone waiting on ``port`` (the port it registered from) with ``scenario``."""
    return await asyncio.create_subprocess_exec(
        *sipp_args(gateway, scenario, port, number, *extra),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


async def stop_phones(*processes: asyncio.subprocess.Process) -> None:
    """Ends SIPp phones still running. SIGTERM, as `timeout` passes it on to SIPp; SIGKILL would
    end only `timeout` and leave SIPp running."""
    for process in processes:
        if process.returncode is None:
            process.terminate()
    for process in processes:
        try:
            await asyncio.wait_for(process.wait(), 5)
        except TimeoutError:
            process.kill()
            await process.wait()


async def phones_done(*processes: asyncio.subprocess.Process, seconds: float = 40) -> list[int]:
    """Each SIPp phone's exit code once it has finished its scenario (stopped if it has not by then)."""
    try:
        return [await asyncio.wait_for(p.wait(), seconds) for p in processes]
    finally:
        await stop_phones(*processes)


def sipp_args(gateway: Gateway, scenario: str, port: int, service: str, *extra: str) -> list[str]:
    """SIPp running ``scenario`` once; a caller's number ([caller] in the scenarios) is the user it
    authenticates as (``-au``)."""
    caller = extra[extra.index("-au") + 1] if "-au" in extra else "100"
    return [
        "timeout", "40", tool("sipp"), gateway.sip, "-sf", str(SIPP_DIR / scenario), "-i", "127.0.0.1",
        "-p", str(port), "-m", "1", "-s", service, "-nostdin", "-timeout", "30s", "-key", "caller", caller, *extra,
    ]  # fmt: skip


CALLS = {
    "plain": ("caller.xml", "callee.xml", "hung up by caller"),
    "hold-and-resume": ("caller_hold.xml", "callee_hold.xml", "hung up by caller"),
    "callee-hangs-up": ("caller_hungup.xml", "callee_hangup.xml", "hung up by callee"),
    "callee-busy": ("caller_busy.xml", "callee_busy.xml", "ended: 486 Busy Here"),
}


async def sipp_call(
    caller_gw: Gateway,
    callee_gw: Gateway,
    caller: tuple[str, str],
    callee: tuple[str, str],
    caller_xml: str,
    callee_xml: str,
) -> None:
    """The callee phone registers on ``callee_gw`` and waits; the caller dials it through ``caller_gw``."""
    callee_port, caller_port = free_port(), free_port()
    registered = await asyncio.to_thread(
        run, *sipp_args(callee_gw, "register.xml", callee_port, callee[0], "-au", callee[0], "-ap", callee[1])
    )
    assert registered.returncode == 0, registered.stdout[-1500:]
    # The callee answers on the port it registered from.
    answering = await asyncio.create_subprocess_exec(
        *sipp_args(callee_gw, callee_xml, callee_port, callee[0]),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await asyncio.sleep(0.5)
        calling = await asyncio.to_thread(
            run, *sipp_args(caller_gw, caller_xml, caller_port, callee[0], "-au", caller[0], "-ap", caller[1])
        )
        assert calling.returncode == 0, calling.stdout[-2000:] + calling.stderr[-2000:]
        assert await asyncio.wait_for(answering.wait(), 30) == 0
    finally:
        await stop_phones(answering)


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

    callee_port = free_port()
    registered = await asyncio.to_thread(
        run, *sipp_args(gateway, "register.xml", callee_port, BOB[0], "-au", BOB[0], "-ap", BOB[1])
    )
    assert registered.returncode == 0, registered.stdout[-1500:]
    callee = await asyncio.create_subprocess_exec(
        *sipp_args(gateway, "callee_cancel.xml", callee_port, BOB[0]),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    await asyncio.sleep(0.5)
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

    callee_port, caller_port = free_port(), free_port()
    registered = await asyncio.to_thread(
        run, *sipp_args(gateway, "register.xml", callee_port, BOB[0], "-au", BOB[0], "-ap", BOB[1])
    )
    assert registered.returncode == 0
    watch = CallWatch(gateway)
    phones = []
    try:
        await asyncio.wait_for(watch.synced.wait(), 5)
        for args in (
            sipp_args(gateway, "callee.xml", callee_port, BOB[0]),
            sipp_args(gateway, "caller_hungup.xml", caller_port, BOB[0], "-au", ALICE[0], "-ap", ALICE[1]),
        ):
            phones.append(
                await asyncio.create_subprocess_exec(
                    *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
                )
            )
            await asyncio.sleep(0.3)
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
