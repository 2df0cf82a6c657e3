"""Calls that cross servers more than they need to: known by their correlation id wherever they
come back, and closed to the shortest path."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc.aio
import pytest

from pbxmesh.sipgw.v1 import sipgw_pb2 as pb
from pbxmesh.sipgw.v1 import sipgw_pb2_grpc as pb_grpc
from tests.harness.servers import Group
from tests.harness.sipp import phones_done, register_phone, start_phone, stop_phones
from tests.harness.site import Site, Spec, logs_of, running_sites
from tests.harness.wait import wait_for
from tests.integration.test_callstate import (
    ALICE,
    BOB,
    CAROL,
    Transferor,
    calls_of,
    get_call,
    lines_in_use,
    list_calls,
    place,
)


@pytest.fixture
async def pair_with_bob(group: Group) -> AsyncIterator[dict[str, Site]]:
    """alpha with Alice and Bob, beta with Carol only."""
    specs = {"alpha": Spec(ALICE, "sales", (BOB,)), "beta": Spec(CAROL, "support")}
    async with running_sites(group, specs, {"alpha": {"200"}, "beta": {"100", "101"}}) as made:
        yield made


async def test_a_call_from_another_server_transferred_back_here_is_closed_here(
    pair_with_bob: dict[str, Site], tmp_path: Path
) -> None:
    """Carol (beta) calls Alice (alpha) and transfers her to Bob, on alpha too: the call never
    started on alpha, yet alpha knows it by its correlation id, bridges Alice and Bob itself and
    tells Alice (not Bob) of her new party."""
    alpha, beta = pair_with_bob["alpha"], pair_with_bob["beta"]
    traces = {name: tmp_path / f"{name}.log" for name in ("alice", "bob")}
    phones: list[asyncio.subprocess.Process] = []
    try:
        alice, bob = await register_phone(alpha.gateway, ALICE), await register_phone(alpha.gateway, BOB)
        carol = await register_phone(beta.gateway, CAROL)
        phones = [
            await start_phone(alpha.gateway, "talker.xml", alice, ALICE[0], "-trace_msg", "-message_file",
                              str(traces["alice"])),
            await start_phone(alpha.gateway, "talker.xml", bob, BOB[0], "-trace_msg", "-message_file",
                              str(traces["bob"])),
            await start_phone(beta.gateway, "callee_refer.xml", carol, CAROL[0], "-key", "refer_to", BOB[0]),
        ]  # fmt: skip
        call = await place(beta.gateway, CAROL[0], ALICE[0])  # Carol's phone rings first, then Alice's
        assert await phones_done(phones[2]) == [0], logs_of(alpha, beta)  # Carol's part ended

        async def closed() -> bool:
            return await lines_in_use(alpha, beta) == [0, 0] and await calls_of(alpha) == [
                (BOB[0], ALICE[0], pb.CALL_KIND_LOCAL)
            ]

        await wait_for(closed, timeout=15, what="one local call Bob-Alice on alpha, no trunk line in use")
        assert await list_calls(beta.gateway) == []

        async def local_on_callstate() -> bool:
            record = await get_call(alpha.callstate, call.call_id)
            remote = record.remote_party
            return (record.local_party.number, remote.number, remote.server_id, record.cross_server) == (
                ALICE[0],
                BOB[0],
                "alpha",
                False,
            )

        await wait_for(local_on_callstate, timeout=5, what="alpha's callstate: Alice talks to Bob, on alpha")
        # One commutation (the transfer), however the news of it came: Carol, then Bob.
        record = await get_call(alpha.callstate, call.call_id)
        assert [s.remote_party.number for s in record.segments] == [CAROL[0], BOB[0]]
        log = "".join(alpha.gateway.log)
        assert "it came back over the trunk (path alpha,beta)" in log, log
        assert log.count(f"phone told its party is now {BOB[0]}") == 1, log
        async with grpc.aio.insecure_channel(alpha.gateway.api) as channel:
            await pb_grpc.SipGatewayServiceStub(channel).HangUpCall(
                pb.HangUpCallRequest(call_id=call.call_id), timeout=5
            )
        assert await phones_done(*phones[:2]) == [0, 0]  # both still in the call until the hang-up
    finally:
        await stop_phones(*phones)
    told_alice, told_bob = (traces[name].read_text() for name in ("alice", "bob"))
    assert f"P-Asserted-Identity: <sip:{BOB[0]}@" in told_alice
    assert "P-Asserted-Identity" not in told_bob


ERIN = ("201", "erin-pw-201")  # on gamma


@pytest.fixture
async def trio(group: Group) -> AsyncIterator[dict[str, Site]]:
    specs = {"alpha": Spec(ALICE, "sales", (BOB,)), "beta": Spec(CAROL, "support"), "gamma": Spec(ERIN, "service")}
    plans = {"alpha": {"200", "201"}, "beta": {"100", "201"}, "gamma": {"100", "200"}}
    async with running_sites(group, specs, plans) as made:
        yield made


async def test_a_server_left_in_the_middle_hands_the_call_over(trio: dict[str, Site]) -> None:
    """Alice (alpha) talks to Carol (beta), who transfers her to Erin (gamma): beta steps out,
    alpha and gamma talk over one direct trunk leg, beta's lines are free, and neither phone
    notices anything but its new party."""
    alpha, beta, gamma = trio["alpha"], trio["beta"], trio["gamma"]
    phones: list[asyncio.subprocess.Process] = []
    try:
        alice, carol = await register_phone(alpha.gateway, ALICE), await register_phone(beta.gateway, CAROL)
        erin = await register_phone(gamma.gateway, ERIN)
        phones = [
            await start_phone(alpha.gateway, "talker.xml", alice, ALICE[0]),
            await start_phone(beta.gateway, "callee_refer.xml", carol, CAROL[0], "-key", "refer_to", ERIN[0]),
            await start_phone(gamma.gateway, "talker.xml", erin, ERIN[0]),
        ]
        call = await place(alpha.gateway, ALICE[0], CAROL[0])
        assert await phones_done(phones[1]) == [0], logs_of(alpha, beta, gamma)  # Carol's part ended

        async def direct() -> bool:
            return (
                await lines_in_use(alpha, beta, gamma) == [1, 0, 1]
                and await calls_of(alpha) == [(ALICE[0], ERIN[0], pb.CALL_KIND_TRUNK_OUT)]
                and await calls_of(gamma) == [(ALICE[0], ERIN[0], pb.CALL_KIND_TRUNK_IN)]
                and await calls_of(beta) == []
            )

        await wait_for(direct, timeout=15, what="alpha and gamma direct, beta out of the call")

        async def callstates_follow() -> bool:
            a, g = await get_call(alpha.callstate, call.call_id), await get_call(gamma.callstate, call.call_id)
            return (a.peer_server_id, a.remote_party.number, a.remote_party.server_id) == (
                "gamma",
                ERIN[0],
                "gamma",
            ) and (g.peer_server_id, g.remote_party.number, g.remote_party.server_id) == ("alpha", ALICE[0], "alpha")

        await wait_for(callstates_follow, timeout=5, what="alpha's and gamma's callstates name each other")
        on_alpha = await get_call(alpha.callstate, call.call_id)
        # The hand-over is no commutation: Alice-Carol, then Alice-Erin, and no third segment.
        assert [s.remote_party.number for s in on_alpha.segments] == [CAROL[0], ERIN[0]]

        async def same_current_segment() -> bool:
            a, g = await get_call(alpha.callstate, call.call_id), await get_call(gamma.callstate, call.call_id)
            return (a.segments[-1].segment_id, a.segments[-1].started_at) == (
                g.segments[-1].segment_id,
                g.segments[-1].started_at,
            ) and a.segments[-1].segment_id == f"{call.call_id}/2"

        # gamma came in with the transfer: the segment both now share has one id and one start.
        await wait_for(same_current_segment, timeout=5, what="alpha and gamma on the same segment 2")
        assert on_alpha.remote_party.display_name == "gamma phone 201"
        assert "handed over: now directly to server gamma" in "".join(alpha.gateway.log)
        assert "handed over: the servers on both sides talk directly" in "".join(beta.gateway.log)
        async with grpc.aio.insecure_channel(alpha.gateway.api) as channel:
            await pb_grpc.SipGatewayServiceStub(channel).HangUpCall(
                pb.HangUpCallRequest(call_id=call.call_id), timeout=5
            )
        assert await phones_done(phones[0], phones[2]) == [0, 0]  # both talked on until the hang-up
        assert await lines_in_use(alpha, beta, gamma) == [0, 0, 0]
    finally:
        await stop_phones(*phones)


FRANK = ("301", "frank-pw-301")  # on delta


async def test_a_chain_through_four_servers_closes_to_the_direct_pair(group: Group) -> None:
    """Alice (alpha) -> Carol (beta), transferred to Erin (gamma), transferred to Frank (delta):
    each server left in the middle hands the call over; alpha and delta end up direct."""
    specs = {
        "alpha": Spec(ALICE, "sales"),
        "beta": Spec(CAROL, "support"),
        "gamma": Spec(ERIN, "service"),
        "delta": Spec(FRANK, "field"),
    }
    plans = {"alpha": {"200", "201", "301"}, "beta": {"201"}, "gamma": {"301"}, "delta": {"100"}}
    async with running_sites(group, specs, plans) as sites:
        alpha, beta, gamma, delta = (sites[name] for name in ("alpha", "beta", "gamma", "delta"))
        phones: list[asyncio.subprocess.Process] = []
        try:
            alice, carol = await register_phone(alpha.gateway, ALICE), await register_phone(beta.gateway, CAROL)
            erin, frank = await register_phone(gamma.gateway, ERIN), await register_phone(delta.gateway, FRANK)
            phones = [
                await start_phone(alpha.gateway, "talker.xml", alice, ALICE[0]),
                await start_phone(beta.gateway, "callee_refer.xml", carol, CAROL[0], "-key", "refer_to", ERIN[0]),
                await start_phone(gamma.gateway, "callee_refer.xml", erin, ERIN[0], "-key", "refer_to", FRANK[0]),
                await start_phone(delta.gateway, "talker.xml", frank, FRANK[0]),
            ]
            call = await place(alpha.gateway, ALICE[0], CAROL[0])
            assert await phones_done(*phones[1:3]) == [0, 0], logs_of(alpha, beta, gamma, delta)

            async def direct() -> bool:
                calls = [(caller, callee) for caller, callee, _ in await calls_of(alpha)]
                return await lines_in_use(alpha, beta, gamma, delta) == [1, 0, 0, 1] and calls == [(ALICE[0], FRANK[0])]

            await wait_for(direct, timeout=20, what="alpha and delta direct, beta and gamma out of the call")
            record = await get_call(alpha.callstate, call.call_id)
            assert record.peer_server_id == "delta"
            assert [s.remote_party.number for s in record.segments] == [CAROL[0], ERIN[0], FRANK[0]]
            async with grpc.aio.insecure_channel(alpha.gateway.api) as channel:
                await pb_grpc.SipGatewayServiceStub(channel).HangUpCall(
                    pb.HangUpCallRequest(call_id=call.call_id), timeout=5
                )
            assert await phones_done(phones[0], phones[3]) == [0, 0]
        finally:
            await stop_phones(*phones)


async def test_an_attended_transfer_joining_two_calls_of_one_server_is_joined_there(
    pair_with_bob: dict[str, Site],
) -> None:
    """Alice (alpha) talks to Carol (beta); Carol consults Bob (alpha) and transfers Alice to him:
    beta holds two legs to alpha, asks alpha to join its two calls, and steps out."""
    alpha, beta = pair_with_bob["alpha"], pair_with_bob["beta"]
    phones: list[asyncio.subprocess.Process] = []
    carol = await register_phone(beta.gateway, CAROL)
    transferor = Transferor(beta.gateway, carol, consult=BOB[0])
    try:
        alice, bob = await register_phone(alpha.gateway, ALICE), await register_phone(alpha.gateway, BOB)
        phones = [
            await start_phone(alpha.gateway, "talker.xml", alice, ALICE[0]),
            await start_phone(alpha.gateway, "talker.xml", bob, BOB[0]),
        ]
        carols_side = asyncio.create_task(asyncio.to_thread(transferor.run))
        call = await place(alpha.gateway, ALICE[0], CAROL[0])
        await asyncio.wait_for(carols_side, 20)
        assert "SIP/2.0 200 OK" in transferor.seen, transferor.seen

        async def joined() -> bool:
            return await lines_in_use(alpha, beta) == [0, 0] and await calls_of(alpha) == [
                (ALICE[0], BOB[0], pb.CALL_KIND_LOCAL)
            ]

        await wait_for(joined, timeout=15, what="one local call Alice-Bob on alpha, no trunk line in use")
        assert await list_calls(beta.gateway) == []
        assert "handed over: joining call" in "".join(alpha.gateway.log), logs_of(alpha, beta)
        async with grpc.aio.insecure_channel(alpha.gateway.api) as channel:
            await pb_grpc.SipGatewayServiceStub(channel).HangUpCall(
                pb.HangUpCallRequest(call_id=call.call_id), timeout=5
            )
        assert await phones_done(*phones) == [0, 0]
    finally:
        transferor.close()
        await stop_phones(*phones)
