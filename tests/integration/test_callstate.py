"""Two servers with all three services (registry, sipgw, callstate) on one etcd, SIPp phones:
each server's callstate knows who is behind the other server, through hold, restarts and faults."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
from collections.abc import AsyncIterator, Callable

import grpc.aio
import pytest

from pbxmesh.callstate.v1 import callstate_pb2 as cs
from pbxmesh.callstate.v1 import callstate_pb2_grpc as cs_grpc
from pbxmesh.sipgw.v1 import sipgw_pb2 as pb
from pbxmesh.sipgw.v1 import sipgw_pb2_grpc as pb_grpc
from services.runtime.embedded_etcd import free_port
from tests.harness.servers import CallState, Gateway, Group
from tests.harness.sipmsg import header, response
from tests.harness.sipp import phones_done, register_phone, run, sipp_args, start_phone, stop_phones
from tests.harness.site import SECRET, Site, Spec, logs_of, running_sites
from tests.harness.tls import channel as api_channel
from tests.otlp import ExportedSpan, otlp_receiver
from tests.support import wait_for

__all__ = ["ALICE", "CAROL", "DAVE", "SECRET", "Site", "Spec", "Watch", "running_sites"]

ALICE = ("100", "alice-pw-100")  # on alpha, department sales
CAROL = ("200", "carol-pw-200")  # on beta, department support
DAVE = ("201", "dave-pw-201")  # on beta, department support


def screen(stdout: str) -> str:
    """SIPp's last scenario screen (each message's counts: where the phone waited)."""
    start = stdout.rfind("Scenario Screen")
    return stdout[start : start + 3000] if start >= 0 else stdout[-3000:]


@pytest.fixture
async def sites(group: Group) -> AsyncIterator[dict[str, Site]]:
    specs = {"alpha": Spec(ALICE, "sales"), "beta": Spec(CAROL, "support", (DAVE,))}
    async with running_sites(group, specs, {"alpha": {"200"}, "beta": {"100"}}) as made:
        yield made


class Watch:
    """A callstate's WatchCalls stream, collected in the background."""

    def __init__(self, callstate: CallState):
        self.calls: list[cs.Call] = []
        self.synced = asyncio.Event()
        self._task = asyncio.create_task(self._run(callstate.address))

    async def _run(self, address: str) -> None:
        async with api_channel(address) as channel:
            async for message in cs_grpc.CallStateServiceStub(channel).WatchCalls(cs.WatchCallsRequest()):
                self.calls.extend(message.calls)
                self.synced.set()

    def phases(self) -> list[str]:
        names = [cs.CallPhase.Name(c.phase).removeprefix("CALL_PHASE_") for c in self.calls]
        return [name for i, name in enumerate(names) if i == 0 or names[i - 1] != name]

    async def seen(self, check: Callable[[cs.Call], bool], what: str) -> cs.Call:
        async def found() -> bool:
            return any(check(c) for c in self.calls)

        await wait_for(found, timeout=15, what=what)
        return next(c for c in self.calls if check(c))

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def get_call(callstate: CallState, call_id: str) -> cs.Call:
    async with api_channel(callstate.address) as channel:
        return (await cs_grpc.CallStateServiceStub(channel).GetCall(cs.GetCallRequest(call_id=call_id), timeout=5)).call


async def aligned(sites: dict[str, Site], call_id: str) -> dict[str, cs.Call]:
    """Both servers' records of an ended call once their segment timelines agree. Each server's
    ending record may predate the other's last share: the shares align them shortly after."""
    final: dict[str, cs.Call] = {}

    async def agree() -> bool:
        final.update({name: await get_call(site.callstate, call_id) for name, site in sites.items()})
        timelines = [[(s.segment_id, s.started_at, s.ended_at) for s in c.segments] for c in final.values()]
        return all(t == timelines[0] for t in timelines)

    await wait_for(agree, timeout=5, what=f"the same segment timeline on {', '.join(sites)}")
    return final


async def test_each_server_knows_who_is_behind_the_other_and_the_segments_line_up(sites: dict[str, Site]) -> None:
    alpha, beta = sites["alpha"], sites["beta"]
    watches = {name: Watch(site.callstate) for name, site in sites.items()}
    carol = await register_phone(beta.gateway, CAROL)
    phone = await start_phone(beta.gateway, "callee.xml", carol, CAROL[0])
    try:
        await asyncio.wait_for(asyncio.gather(*(w.synced.wait() for w in watches.values())), 5)
        calling = await asyncio.to_thread(
            run, *sipp_args(alpha.gateway, "caller.xml", free_port(), CAROL[0], "-au", ALICE[0], "-ap", ALICE[1])
        )
        assert calling.returncode == 0, calling.stderr[-2000:]
        assert await phones_done(phone) == [0]
        on_alpha = await watches["alpha"].seen(lambda c: c.phase == cs.CALL_PHASE_ENDED, "the call ended on alpha")
        on_beta = await watches["beta"].seen(lambda c: c.phase == cs.CALL_PHASE_ENDED, "the call ended on beta")
    finally:
        await stop_phones(phone)
        for watch in watches.values():
            await watch.close()
    assert on_alpha.call_id == on_beta.call_id and on_alpha.cross_server and on_alpha.outgoing
    # Each side knows the other's phone exactly: number, name, department, server.
    assert (on_alpha.remote_party.number, on_alpha.remote_party.display_name) == ("200", "beta phone 200")
    assert (on_alpha.remote_party.department, on_alpha.remote_party.server_id) == ("support", "beta")
    assert on_alpha.remote_party.server_name == "Beta office"
    assert (on_beta.remote_party.number, on_beta.remote_party.department) == ("100", "sales")
    assert (on_beta.remote_party.server_id, on_beta.remote_party.server_name) == ("alpha", "Alpha office")
    assert (on_beta.local_party.number, on_beta.peer_server_id, on_beta.outgoing) == ("200", "alpha", False)
    assert list(on_alpha.path) == ["alpha"] and list(on_beta.path) == ["alpha", "beta"]
    assert watches["alpha"].phases() == ["DIALING", "RINGING", "ANSWERED", "ENDED"]
    # One segment, the same id and the same times on both servers (each server's ending record
    # may predate the other's share: the records the API returns now are the merged ones).
    assert on_alpha.call_id == on_beta.call_id
    final = await aligned(sites, on_alpha.call_id)
    final_alpha, final_beta = final["alpha"], final["beta"]
    assert [s.segment_id for s in final_alpha.segments] == [f"{on_alpha.call_id}/1"]
    assert [s.segment_id for s in final_beta.segments] == [f"{on_alpha.call_id}/1"]
    for field_name in ("started_at", "ended_at"):
        assert getattr(final_alpha.segments[0], field_name) == getattr(final_beta.segments[0], field_name), field_name
    assert list(final_alpha.segments[0].server_ids) == ["alpha", "beta"]


async def test_a_hold_on_the_other_server_shows_on_this_servers_stream(sites: dict[str, Site]) -> None:
    alpha, beta = sites["alpha"], sites["beta"]
    watch = Watch(alpha.callstate)
    alice = await register_phone(alpha.gateway, ALICE)
    phone = await start_phone(alpha.gateway, "callee_hold.xml", alice, ALICE[0])
    try:
        await asyncio.wait_for(watch.synced.wait(), 5)
        # Carol on beta calls Alice on alpha, holds, resumes, hangs up.
        calling = await asyncio.to_thread(
            run, *sipp_args(beta.gateway, "caller_hold.xml", free_port(), ALICE[0], "-au", CAROL[0], "-ap", CAROL[1])
        )
        assert calling.returncode == 0, calling.stderr[-2000:]
        assert await phones_done(phone) == [0]
        await watch.seen(lambda c: c.phase == cs.CALL_PHASE_ENDED, "the call ended")
    finally:
        await stop_phones(phone)
        await watch.close()
    assert watch.phases() == ["DIALING", "RINGING", "ANSWERED", "HELD", "ANSWERED", "ENDED"]
    held = next(c for c in watch.calls if c.phase == cs.CALL_PHASE_HELD)
    assert held.held_by == "remote" and held.remote_party.number == CAROL[0]
    # The hold and the resume are commutations: three segments, the middle one held, cut at the
    # same moments with the same ids on both servers.
    final = await aligned({"alpha": alpha, "beta": beta}, held.call_id)
    for record in final.values():
        assert [(s.segment_id, s.held) for s in record.segments] == [
            (f"{held.call_id}/1", False),
            (f"{held.call_id}/2", True),
            (f"{held.call_id}/3", False),
        ]


async def place(gateway: Gateway, first: str, to: str) -> pb.Call:
    async with api_channel(gateway.api) as channel:
        request = pb.PlaceCallRequest(from_number=first, to=to)
        return (await pb_grpc.SipGatewayServiceStub(channel).PlaceCall(request, timeout=5)).call


async def _answered_call(site: Site, call_id: str) -> bool:
    with contextlib.suppress(grpc.aio.AioRpcError):
        return (await get_call(site.callstate, call_id)).phase == cs.CALL_PHASE_ANSWERED
    return False


async def test_a_restarted_callstate_gets_the_live_calls_back(sites: dict[str, Site]) -> None:
    alpha, beta = sites["alpha"], sites["beta"]
    alice, carol = await register_phone(alpha.gateway, ALICE), await register_phone(beta.gateway, CAROL)
    phones = [
        await start_phone(alpha.gateway, "callee.xml", alice, ALICE[0]),
        await start_phone(beta.gateway, "callee.xml", carol, CAROL[0]),
    ]
    try:
        call = await place(alpha.gateway, ALICE[0], CAROL[0])
        await wait_for(lambda: _answered_call(alpha, call.call_id), what="answered on alpha's callstate")
        await alpha.callstate.stop(kill=True)
        await alpha.callstate.start()  # same address: the gateway's stream reconnects and replays
        await wait_for(lambda: _answered_call(alpha, call.call_id), what="the call back after the restart")
        again = await get_call(alpha.callstate, call.call_id)
        assert again.remote_party.number == CAROL[0] and again.cross_server

        async def details_again() -> bool:
            # The replay names Carol's number; her details come back from beta's answer to a share.
            return (await get_call(alpha.callstate, call.call_id)).remote_party.display_name == "beta phone 200"

        await wait_for(details_again, timeout=10, what="Carol's details from beta after the restart")
        cli = await asyncio.to_thread(
            run, sys.executable, "-m", "services.cli", "parties", "--callstate", alpha.callstate.address
        )
        assert cli.returncode == 0, cli.stderr
        assert (
            "100 alpha phone 100 (sales@Alpha office) <-> 200 beta phone 200 (support@Beta office)  answered"
            in cli.stdout
        )
        async with api_channel(alpha.gateway.api) as channel:
            await pb_grpc.SipGatewayServiceStub(channel).HangUpCall(
                pb.HangUpCallRequest(call_id=call.call_id), timeout=5
            )
        assert await phones_done(*phones) == [0, 0]
    finally:
        await stop_phones(*phones)


async def test_a_call_whose_other_server_dies_is_ended_cleanly(sites: dict[str, Site]) -> None:
    alpha, beta = sites["alpha"], sites["beta"]
    alice, carol = await register_phone(alpha.gateway, ALICE), await register_phone(beta.gateway, CAROL)
    phones = [
        await start_phone(alpha.gateway, "callee.xml", alice, ALICE[0]),
        await start_phone(beta.gateway, "callee.xml", carol, CAROL[0]),
    ]
    watch = Watch(alpha.callstate)
    try:
        await asyncio.wait_for(watch.synced.wait(), 5)
        call = await place(alpha.gateway, ALICE[0], CAROL[0])
        await wait_for(lambda: _answered_call(alpha, call.call_id), what="answered on alpha's callstate")
        assert beta.registry.process is not None
        beta.registry.process.kill()  # beta's lease expires within its 2 s TTL
        ended = await watch.seen(lambda c: c.phase == cs.CALL_PHASE_ENDED, "the call ended on alpha")
        assert ended.end_reason == "server beta left the group"
        # Alice got her BYE (so did Carol, through beta's gateway, which still runs).
        assert await phones_done(*phones) == [0, 0]
    finally:
        await stop_phones(*phones)
        await watch.close()


@pytest.mark.parametrize(
    "scenario", ["caller_transferred.xml", "caller_transferred_noupdate.xml"], ids=["update", "reinvite"]
)
async def test_a_blind_transfer_on_the_other_server_tells_the_phone_and_the_stream(
    sites: dict[str, Site], scenario: str
) -> None:
    alpha, beta = sites["alpha"], sites["beta"]
    watches = {name: Watch(site.callstate) for name, site in sites.items()}
    carol, dave = await register_phone(beta.gateway, CAROL), await register_phone(beta.gateway, DAVE)
    phones = [
        await start_phone(beta.gateway, "callee_refer.xml", carol, CAROL[0], "-key", "refer_to", DAVE[0]),
        await start_phone(beta.gateway, "callee.xml", dave, DAVE[0]),
    ]
    try:
        await asyncio.wait_for(asyncio.gather(*(w.synced.wait() for w in watches.values())), 5)
        # Alice on alpha calls Carol on beta; Carol transfers her to Dave; Alice is told, then hangs up.
        calling = await asyncio.to_thread(
            run,
            *sipp_args(
                alpha.gateway, scenario, free_port(), CAROL[0],
                "-au", ALICE[0], "-ap", ALICE[1],
            ),
        )  # fmt: skip
        assert calling.returncode == 0, screen(calling.stdout) + logs_of(alpha, beta)
        assert await phones_done(*phones) == [0, 0]
        ended = [await w.seen(lambda c: c.phase == cs.CALL_PHASE_ENDED, f"ended on {n}") for n, w in watches.items()]
    finally:
        await stop_phones(*phones)
        for watch in watches.values():
            await watch.close()
    call_id = ended[0].call_id
    # alpha's stream showed the new party as it changed, before the end.
    remotes = [c.remote_party.number for c in watches["alpha"].calls if c.phase == cs.CALL_PHASE_ANSWERED]
    assert remotes[0] == CAROL[0] and remotes[-1] == DAVE[0]
    final = await aligned(sites, call_id)
    assert final["alpha"].remote_party.number == DAVE[0] and final["alpha"].remote_party.department == "support"
    assert final["beta"].local_party.number == DAVE[0]
    # Two segments, cut at the same moment on both servers, with the same ids.
    for name in ("alpha", "beta"):
        assert [s.segment_id for s in final[name].segments] == [f"{call_id}/1", f"{call_id}/2"], name
    a, b = final["alpha"].segments, final["beta"].segments
    assert [(s.started_at, s.ended_at) for s in a] == [(s.started_at, s.ended_at) for s in b]
    assert a[0].ended_at == a[1].started_at
    assert (a[0].remote_party.number, a[1].remote_party.number) == (CAROL[0], DAVE[0])
    assert "phone told its party is now 201" in "".join(alpha.gateway.log)


BOB = ("101", "bob-pw-101")  # on alpha, department sales (in the loop test)


async def usage(gateway: Gateway) -> pb.GetTrunkUsageResponse:
    async with api_channel(gateway.api) as channel:
        return await pb_grpc.SipGatewayServiceStub(channel).GetTrunkUsage(pb.GetTrunkUsageRequest(), timeout=5)


async def list_calls(gateway: Gateway) -> list[pb.Call]:
    async with api_channel(gateway.api) as channel:
        return list((await pb_grpc.SipGatewayServiceStub(channel).ListCalls(pb.ListCallsRequest(), timeout=5)).calls)


async def lines_in_use(*sites: Site) -> list[int]:
    """Each site's trunk lines in use, in order."""
    return [(await usage(site.gateway)).in_use for site in sites]


async def calls_of(site: Site) -> list[tuple[str, str, int]]:
    """A site's calls in progress as (caller, callee, kind)."""
    return [(c.caller, c.callee, c.kind) for c in await list_calls(site.gateway)]


@pytest.fixture
async def pair_with_bob(group: Group) -> AsyncIterator[dict[str, Site]]:
    """alpha with Alice and Bob, beta with Carol only."""
    specs = {"alpha": Spec(ALICE, "sales", (BOB,)), "beta": Spec(CAROL, "support")}
    async with running_sites(group, specs, {"alpha": {"200"}, "beta": {"100", "101"}}) as made:
        yield made


async def test_a_call_transferred_back_to_its_server_is_collapsed_there(pair_with_bob: dict[str, Site]) -> None:
    alpha, beta = pair_with_bob["alpha"], pair_with_bob["beta"]
    phones: list[asyncio.subprocess.Process] = []
    try:
        alice, bob = await register_phone(alpha.gateway, ALICE), await register_phone(alpha.gateway, BOB)
        carol = await register_phone(beta.gateway, CAROL)
        phones = [
            await start_phone(alpha.gateway, "talker.xml", alice, ALICE[0]),
            await start_phone(alpha.gateway, "talker.xml", bob, BOB[0]),
            await start_phone(beta.gateway, "callee_refer.xml", carol, CAROL[0], "-key", "refer_to", BOB[0]),
        ]
        # Alice (alpha) talks to Carol (beta); Carol transfers her to Bob, on alpha again:
        # alpha -> trunk -> beta -> trunk -> alpha, which alpha collapses into a call of its own.
        call = await place(alpha.gateway, ALICE[0], CAROL[0])
        assert await phones_done(phones[2]) == [0]  # Carol's part ended (NOTIFY 200, BYE)

        async def collapsed() -> bool:
            return await lines_in_use(alpha, beta) == [0, 0] and await calls_of(alpha) == [
                (ALICE[0], BOB[0], pb.CALL_KIND_LOCAL)
            ]

        await wait_for(collapsed, timeout=15, what="one local call Alice-Bob on alpha, no trunk line in use")
        assert await list_calls(beta.gateway) == []

        async def local_on_callstate() -> bool:
            # The gateway reports the collapse on its stream: the callstate follows it shortly.
            record = await get_call(alpha.callstate, call.call_id)
            return (record.remote_party.number, record.cross_server) == (BOB[0], False)

        await wait_for(local_on_callstate, timeout=5, what="alpha's callstate shows Alice-Bob as a local call")
        record = await get_call(alpha.callstate, call.call_id)
        assert [s.remote_party.number for s in record.segments] == [CAROL[0], BOB[0]]
        log = "".join(alpha.gateway.log)
        assert "the call came back over the trunk" in log
        # Told once, though the news comes twice (the collapse here, beta's transfer via callstate).
        assert log.count(f"phone told its party is now {BOB[0]}") == 1, log
        async with api_channel(alpha.gateway.api) as channel:
            await pb_grpc.SipGatewayServiceStub(channel).HangUpCall(
                pb.HangUpCallRequest(call_id=call.call_id), timeout=5
            )
        assert await phones_done(*phones[:2]) == [0, 0]  # both still in the call until the hang-up
    finally:
        await stop_phones(*phones)


class Transferor:
    """Carol's phone for an attended transfer, made of one UDP socket on the port Carol registered
    from: it answers a call, calls Dave itself (a consultation call through the gateway), then
    sends REFER with Replaces (RFC 3891) naming the consultation dialog as it sees it. SIPp runs
    one dialog per scenario, so this phone is written out here; its peers are SIPp phones."""

    def __init__(self, gateway: Gateway, port: int, consult: str = "201"):
        import socket

        self.consult = consult  # the number the consultation call goes to
        self.gateway = (gateway.sip.split(":")[0], gateway.sip_port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", port))
        self.sock.settimeout(10)
        self.local = f"127.0.0.1:{port}"
        self.seen: list[str] = []

    def _recv(self) -> str:
        return self.sock.recv(65536).decode()

    def _send(self, text: str) -> None:
        self.sock.sendto(text.encode(), self.gateway)

    @staticmethod
    def _field(message: str, name: str) -> str:
        value = header(message, name)
        assert value, (name, message)
        return value

    def _reply(self, request: str, status: str, extra: str = "", body: str = "") -> None:
        self._send(response(request, status, to_tag="carol-1", extra=extra, body=body))

    def _request(self, first_line: str, headers: str, body: str = "") -> None:
        self._send(f"{first_line}\r\n{headers}Content-Length: {len(body)}\r\n\r\n{body}")

    def run(self) -> None:
        sdp = "v=0\r\no=carol 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4010 RTP/AVP 0\r\n"
        invite = self._recv()
        while not invite.startswith("INVITE"):
            invite = self._recv()
        self._reply(invite, "180 Ringing")
        contact = f"Contact: <sip:200@{self.local}>\r\nContent-Type: application/sdp\r\n"
        self._reply(invite, "200 OK", contact, sdp)
        while not self._recv().startswith("ACK"):
            pass
        # The consultation call: Carol calls Dave through the gateway (407 first, as any phone).
        consult_id, uri = "consult-1@127.0.0.1", f"sip:{self.consult}@127.0.0.1"

        def consult(cseq: int, auth: str) -> str:
            return (
                f"Via: SIP/2.0/UDP {self.local};branch=z9hG4bKconsult{cseq};rport\r\nMax-Forwards: 70\r\n"
                f"From: <sip:200@127.0.0.1>;tag=carol-2\r\nTo: <{uri}>\r\nCall-ID: {consult_id}\r\n"
                f"CSeq: {cseq} INVITE\r\nContact: <sip:200@{self.local}>\r\n{auth}Content-Type: application/sdp\r\n"
            )

        self._request(f"INVITE {uri} SIP/2.0", consult(1, ""), sdp)
        challenge = self._recv()
        while not challenge.startswith("SIP/2.0 407"):
            challenge = self._recv()
        self._request(
            f"ACK {uri} SIP/2.0",
            f"Via: SIP/2.0/UDP {self.local};branch=z9hG4bKconsult1;rport\r\nMax-Forwards: 70\r\n"
            f"From: <sip:200@127.0.0.1>;tag=carol-2\r\nTo: {self._field(challenge, 'To')}\r\n"
            f"Call-ID: {consult_id}\r\nCSeq: 1 ACK\r\n",
        )
        from tests.integration.test_sipgw import _proxy_authorization

        self._request(f"INVITE {uri} SIP/2.0", consult(2, _proxy_authorization(challenge.encode(), uri, *CAROL)), sdp)
        answer = self._recv()
        while not answer.startswith("SIP/2.0 200"):
            answer = self._recv()
        consult_to = self._field(answer, "To")
        gateway_tag = consult_to.split("tag=")[1]
        self._request(
            f"ACK {uri} SIP/2.0",
            f"Via: SIP/2.0/UDP {self.local};branch=z9hG4bKconsultack;rport\r\nMax-Forwards: 70\r\n"
            f"From: <sip:200@127.0.0.1>;tag=carol-2\r\nTo: {consult_to}\r\nCall-ID: {consult_id}\r\nCSeq: 2 ACK\r\n",
        )
        # REFER in the first call: Dave replaces the consultation dialog as Carol sees it.
        # Escaped as RFC 3891 shows it: "@" and ";" are not allowed bare in a URI header value.
        replaces = f"{consult_id.replace('@', '%40')}%3Bto-tag%3D{gateway_tag}%3Bfrom-tag%3Dcarol-2"
        target = re.search(r"<([^>]+)>", self._field(invite, "Contact"))
        assert target is not None
        self._request(
            f"REFER {target.group(1)} SIP/2.0",
            f"Via: SIP/2.0/UDP {self.local};branch=z9hG4bKrefer1;rport\r\nMax-Forwards: 70\r\n"
            f"From: {self._field(invite, 'To')};tag=carol-1\r\nTo: {self._field(invite, 'From')}\r\n"
            f"Call-ID: {self._field(invite, 'Call-ID')}\r\nCSeq: 1 REFER\r\nContact: <sip:200@{self.local}>\r\n"
            f"Refer-To: <sip:{self.consult}@127.0.0.1?Replaces={replaces}>\r\n",
        )
        byes = 0
        while byes < 2:  # the gateway hangs up both of Carol's calls
            message = self._recv()
            first = message.split("\r\n", 1)[0]
            self.seen.append(first)
            if message.startswith("NOTIFY"):
                self.seen.append(message.split("\r\n\r\n", 1)[1].split("\r\n", 1)[0])
                self._reply(message, "200 OK")
            elif message.startswith("BYE"):
                byes += 1
                self._reply(message, "200 OK")

    def close(self) -> None:
        self.sock.close()


async def test_an_attended_transfer_on_the_other_server_tells_the_phone_and_the_stream(
    sites: dict[str, Site],
) -> None:
    alpha, beta = sites["alpha"], sites["beta"]
    watch = Watch(alpha.callstate)
    carol, dave = await register_phone(beta.gateway, CAROL), await register_phone(beta.gateway, DAVE)
    talker = await start_phone(beta.gateway, "talker.xml", dave, DAVE[0])
    transferor = Transferor(beta.gateway, carol)
    try:
        await asyncio.wait_for(watch.synced.wait(), 5)
        carols_side = asyncio.create_task(asyncio.to_thread(transferor.run))
        calling = await asyncio.to_thread(
            run,
            *sipp_args(
                alpha.gateway, "caller_transferred.xml", free_port(), CAROL[0], "-au", ALICE[0], "-ap", ALICE[1]
            ),
        )
        assert calling.returncode == 0, f"{transferor.seen}" + "".join(beta.gateway.log[-20:])
        await asyncio.wait_for(carols_side, 20)
        assert await phones_done(talker) == [0]  # Dave talked to Alice until her BYE
        await watch.seen(lambda c: c.phase == cs.CALL_PHASE_ENDED, "the call ended on alpha")
    finally:
        transferor.close()
        await stop_phones(talker)
        await watch.close()
    assert "SIP/2.0 100 Trying" in transferor.seen and "SIP/2.0 200 OK" in transferor.seen
    call_id = watch.calls[-1].call_id
    final = await aligned(sites, call_id)
    assert final["alpha"].remote_party.number == DAVE[0] and final["beta"].local_party.number == DAVE[0]
    a, b = final["alpha"].segments, final["beta"].segments
    assert [s.segment_id for s in a] == [s.segment_id for s in b] == [f"{call_id}/1", f"{call_id}/2"]
    assert [(s.started_at, s.ended_at) for s in a] == [(s.started_at, s.ended_at) for s in b]
    assert "attended transfer to 201" in "".join(beta.gateway.log)


ERIN = ("201", "erin-pw-201")  # on gamma, department service (in the three-server tests)


@pytest.fixture
async def trio(group: Group) -> AsyncIterator[dict[str, Site]]:
    specs = {"alpha": Spec(ALICE, "sales", (BOB,)), "beta": Spec(CAROL, "support"), "gamma": Spec(ERIN, "service")}
    plans = {"alpha": {"200", "201"}, "beta": {"100", "201"}, "gamma": {"101"}}
    async with running_sites(group, specs, plans) as made:
        yield made


async def test_a_transfer_to_a_third_server_tells_the_first(trio: dict[str, Site]) -> None:
    alpha, beta, gamma = trio["alpha"], trio["beta"], trio["gamma"]
    watch = Watch(alpha.callstate)
    carol, erin = await register_phone(beta.gateway, CAROL), await register_phone(gamma.gateway, ERIN)
    phones = [
        await start_phone(beta.gateway, "callee_refer.xml", carol, CAROL[0], "-key", "refer_to", ERIN[0]),
        await start_phone(gamma.gateway, "callee.xml", erin, ERIN[0]),
    ]
    try:
        await asyncio.wait_for(watch.synced.wait(), 5)
        # Alice (alpha) calls Carol (beta), who transfers her to Erin on gamma; Alice is told.
        calling = await asyncio.to_thread(
            run,
            *sipp_args(
                alpha.gateway, "caller_transferred.xml", free_port(), CAROL[0], "-au", ALICE[0], "-ap", ALICE[1]
            ),
        )
        assert calling.returncode == 0, screen(calling.stdout) + logs_of(alpha, beta, gamma)
        assert await phones_done(*phones) == [0, 0]
        ended = await watch.seen(lambda c: c.phase == cs.CALL_PHASE_ENDED, "the call ended on alpha")
    finally:
        await stop_phones(*phones)
        await watch.close()
    remotes = [
        (c.remote_party.number, c.remote_party.server_id) for c in watch.calls if c.phase == cs.CALL_PHASE_ANSWERED
    ]
    assert remotes[0] == (CAROL[0], "beta") and remotes[-1] == (ERIN[0], "gamma")

    async def told_by_gamma() -> cs.Call | None:
        final = await get_call(alpha.callstate, ended.call_id)
        return final if final.remote_party.server_name == "Gamma office" else None

    final = await wait_for(told_by_gamma, timeout=5, what="gamma's details of Erin on alpha")
    assert [s.remote_party.number for s in final.segments] == [CAROL[0], ERIN[0]]
    # beta passed on what gamma told of its phone: alpha knows Erin as exactly as gamma does.
    known = final.remote_party
    assert (known.display_name, known.department, known.server_id, known.server_name) == (
        "gamma phone 201",
        "service",
        "gamma",
        "Gamma office",
    )
    assert await lines_in_use(alpha, beta, gamma) == [0, 0, 0]


async def test_a_chain_through_three_servers_that_comes_back_is_collapsed(trio: dict[str, Site]) -> None:
    alpha, beta, gamma = trio["alpha"], trio["beta"], trio["gamma"]
    alice, bob = await register_phone(alpha.gateway, ALICE), await register_phone(alpha.gateway, BOB)
    carol, erin = await register_phone(beta.gateway, CAROL), await register_phone(gamma.gateway, ERIN)
    phones = [
        await start_phone(alpha.gateway, "talker.xml", alice, ALICE[0]),
        await start_phone(alpha.gateway, "talker.xml", bob, BOB[0]),
        await start_phone(beta.gateway, "callee_refer.xml", carol, CAROL[0], "-key", "refer_to", ERIN[0]),
        await start_phone(gamma.gateway, "callee_refer.xml", erin, ERIN[0], "-key", "refer_to", BOB[0]),
    ]
    try:
        # Alice -> Carol (beta) -> transferred to Erin (gamma) -> transferred to Bob, back on alpha.
        call = await place(alpha.gateway, ALICE[0], CAROL[0])
        assert await phones_done(*phones[2:]) == [0, 0]  # Carol's and Erin's parts ended

        async def collapsed() -> bool:
            return await lines_in_use(alpha, beta, gamma) == [0, 0, 0] and await calls_of(alpha) == [
                (ALICE[0], BOB[0], pb.CALL_KIND_LOCAL)
            ]

        await wait_for(collapsed, timeout=15, what="one local call Alice-Bob on alpha, no trunk line in use anywhere")
        assert await list_calls(beta.gateway) == [] and await list_calls(gamma.gateway) == []
        assert "(path alpha,beta,gamma)" in "".join(alpha.gateway.log)
        async with api_channel(alpha.gateway.api) as channel:
            await pb_grpc.SipGatewayServiceStub(channel).HangUpCall(
                pb.HangUpCallRequest(call_id=call.call_id), timeout=5
            )
        assert await phones_done(*phones[:2]) == [0, 0]
    finally:
        await stop_phones(*phones)


async def test_one_call_is_one_trace_across_both_servers(group: Group) -> None:
    """Alice on alpha calls Carol on beta, who transfers her to Dave: the setup on both gateways,
    the transfer on beta, beta's callstate telling alpha's, and alpha telling Alice's phone are
    spans of one trace."""
    async with otlp_receiver() as (receiver, env):
        specs = {"alpha": Spec(ALICE, "sales", env=env), "beta": Spec(CAROL, "support", (DAVE,), env)}
        async with running_sites(group, specs, {"alpha": {"200"}, "beta": {"100"}}) as made:
            alpha, beta = made["alpha"], made["beta"]
            phones: list[asyncio.subprocess.Process] = []
            try:
                carol, dave = await register_phone(beta.gateway, CAROL), await register_phone(beta.gateway, DAVE)
                phones = [
                    await start_phone(beta.gateway, "callee_refer.xml", carol, CAROL[0], "-key", "refer_to", DAVE[0]),
                    await start_phone(beta.gateway, "callee.xml", dave, DAVE[0]),
                ]
                calling = await asyncio.to_thread(
                    run,
                    *sipp_args(
                        alpha.gateway, "caller_transferred.xml", free_port(), CAROL[0], "-au", ALICE[0], "-ap", ALICE[1]
                    ),
                )
                assert calling.returncode == 0, screen(calling.stdout) + logs_of(alpha, beta)
                assert await phones_done(*phones) == [0, 0]

                def where(span: ExportedSpan) -> tuple[str, str, str]:
                    return (
                        span.name,
                        span.resource.get("service.name", ""),
                        span.resource.get("pbxmesh.server.id", ""),
                    )

                expected = {
                    ("sip call setup", "pbxmesh-sipgw", "alpha"),
                    ("sip call setup", "pbxmesh-sipgw", "beta"),
                    ("sip transfer", "pbxmesh-sipgw", "beta"),
                    ("callstate transferred", "pbxmesh-callstate", "beta"),
                    ("/pbxmesh.callstate.v1.CallStateService/ShareParty", "pbxmesh-callstate", "alpha"),
                    ("sip tell party", "pbxmesh-sipgw", "alpha"),
                    ("sip call end", "pbxmesh-sipgw", "alpha"),
                }

                async def whole() -> bool:
                    transfer = [s for s in receiver.spans if s.name == "sip transfer"]
                    if not transfer:
                        return False
                    in_trace = {where(s) for s in receiver.spans if s.trace_id == transfer[0].trace_id}
                    return expected <= in_trace

                await wait_for(whole, timeout=15, what="the call's spans from both servers in one trace")
                (transfer,) = [s for s in receiver.spans if s.name == "sip transfer"]
                assert transfer.attributes["pbxmesh.transfer.target"] == DAVE[0]
                setup = next(
                    s for s in receiver.spans if s.trace_id == transfer.trace_id and s.name == "sip call setup"
                )
                assert setup.attributes["pbxmesh.call.caller"] == ALICE[0]
                # No SDP, password or secret in any span.
                for span in receiver.spans:
                    text = repr(span.attributes)
                    assert "v=0" not in text and "alice-pw" not in text and SECRET not in text
            finally:
                await stop_phones(*phones)


def scrape(address: str) -> dict[str, float]:
    """A Prometheus endpoint's samples, by name with their labels (otel scope labels left out)."""
    import urllib.request

    text = urllib.request.urlopen(f"http://{address}/metrics", timeout=5).read().decode()
    samples = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name_labels, _, value = line.rpartition(" ")
        name, _, labels = name_labels.partition("{")
        kept = ",".join(p for p in labels.rstrip("}").split(",") if p and not p.startswith("otel_scope"))
        samples[f"{name}{{{kept}}}" if kept else name] = float(value)
    return samples


async def test_each_service_serves_its_metrics(group: Group) -> None:
    ports = {name: f"127.0.0.1:{free_port()}" for name in ("registry", "sipgw", "callstate")}
    env = {f"PBXMESH_TELEMETRY_METRICS_{name.upper()}": address for name, address in ports.items()}
    specs = {"alpha": Spec(ALICE, "sales", env=env), "beta": Spec(CAROL, "support")}
    async with running_sites(group, specs, {"alpha": {"200"}}) as made:
        alpha, beta = made["alpha"], made["beta"]
        phone: asyncio.subprocess.Process | None = None
        try:
            carol = await register_phone(beta.gateway, CAROL)
            phone = await start_phone(beta.gateway, "callee.xml", carol, CAROL[0])
            calling = await asyncio.to_thread(
                run, *sipp_args(alpha.gateway, "caller.xml", free_port(), CAROL[0], "-au", ALICE[0], "-ap", ALICE[1])
            )
            assert calling.returncode == 0, calling.stdout[-2000:]
            assert await phones_done(phone) == [0]
            sipgw = await asyncio.to_thread(scrape, ports["sipgw"])
            assert sipgw["pbxmesh_calls_setup_time_seconds_count"] == 1
            assert sipgw['pbxmesh_sip_responses_total{class="2xx"}'] >= 2  # the caller's 200 and the BYE's
            assert sipgw['pbxmesh_sip_responses_total{class="4xx"}'] >= 1  # the 407 challenge
            assert sipgw["pbxmesh_trunk_lines"] == 4 and sipgw["pbxmesh_trunk_rejected_total"] == 0
            assert sipgw["pbxmesh_trunk_refused_requests_total"] == 0
            assert sipgw['pbxmesh_calls_active{kind="trunk_out"}'] == 0
            registry = await asyncio.to_thread(scrape, ports["registry"])
            assert registry["pbxmesh_group_members"] == 2 and registry["pbxmesh_group_connected"] == 1
            assert registry["pbxmesh_plan_numbers"] == 2 and registry["pbxmesh_plan_conflicts"] == 0
            assert registry["pbxmesh_etcd_keepalive_failures_total"] == 0
            callstate = await asyncio.to_thread(scrape, ports["callstate"])
            assert callstate['pbxmesh_callstate_calls{cross_server="true"}'] == 0
        finally:
            if phone is not None:
                await stop_phones(phone)


async def test_the_demo_call_hold_resume_and_transfer_as_alphas_stream_shows_it(sites: dict[str, Site]) -> None:
    """What `make demo` runs: Alice (alpha) connected to Carol (beta) through the API; Carol holds,
    resumes and transfers to Dave; hung up through the API."""
    alpha, beta = sites["alpha"], sites["beta"]
    watch = Watch(alpha.callstate)
    alice, carol = await register_phone(alpha.gateway, ALICE), await register_phone(beta.gateway, CAROL)
    dave = await register_phone(beta.gateway, DAVE)
    phones = [
        await start_phone(alpha.gateway, "talker.xml", alice, ALICE[0]),
        await start_phone(beta.gateway, "talker.xml", dave, DAVE[0]),
        await start_phone(beta.gateway, "callee_hold_refer.xml", carol, CAROL[0], "-key", "refer_to", DAVE[0]),
    ]
    try:
        await asyncio.wait_for(watch.synced.wait(), 5)
        call = await place(alpha.gateway, ALICE[0], CAROL[0])
        assert await phones_done(phones[2]) == [0]  # Carol: answered, held, resumed, transferred
        await watch.seen(lambda c: c.remote_party.number == DAVE[0], "Dave on alpha's stream")
        async with api_channel(alpha.gateway.api) as channel:
            stub = pb_grpc.SipGatewayServiceStub(channel)
            (shown,) = (await stub.ListCalls(pb.ListCallsRequest(), timeout=5)).calls
            assert shown.callee == DAVE[0]  # the gateway's view follows what the phone was told
            await stub.HangUpCall(pb.HangUpCallRequest(call_id=call.call_id), timeout=5)
        assert await phones_done(*phones[:2]) == [0, 0]
        ended = await watch.seen(lambda c: c.phase == cs.CALL_PHASE_ENDED, "the end on alpha's stream")
    finally:
        await stop_phones(*phones)
        await watch.close()
    assert watch.phases() == ["DIALING", "RINGING", "ANSWERED", "HELD", "ANSWERED", "ENDED"]
    assert ended.remote_party.number == DAVE[0] and ended.end_reason == "hung up through the API"
    held = next(c for c in watch.calls if c.phase == cs.CALL_PHASE_HELD)
    assert (held.held_by, held.remote_party.number) == ("remote", CAROL[0])
    # No message repeats the one before it for the same call.
    assert all(a != b for a, b in zip(watch.calls, watch.calls[1:], strict=False))
