"""A call whose other end vanished ends within seconds: the peer gateway killed, or restarted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pbxmesh.sipgw.v1 import sipgw_pb2 as pb
from tests.harness.servers import Group
from tests.harness.sipp import phones_done, register_phone, start_phone, stop_phones
from tests.harness.site import Site, Spec, running_sites
from tests.harness.wait import wait_for
from tests.integration.test_callstate import ALICE, CAROL, get_call, lines_in_use, list_calls, place


@pytest.fixture
async def pair(group: Group) -> AsyncIterator[dict[str, Site]]:
    specs = {"alpha": Spec(ALICE, "sales"), "beta": Spec(CAROL, "support")}
    async with running_sites(group, specs, {"alpha": {"200"}, "beta": {"100"}}) as made:
        yield made


@pytest.mark.parametrize("restart", [False, True], ids=["killed", "restarted"])
async def test_the_call_of_a_peer_gateway_that_died_ends_within_seconds(
    pair: dict[str, Site], tmp_path: Path, restart: bool
) -> None:
    alpha, beta = pair["alpha"], pair["beta"]
    trace = tmp_path / "alice.log"
    phones: list[asyncio.subprocess.Process] = []
    try:
        alice, carol = await register_phone(alpha.gateway, ALICE), await register_phone(beta.gateway, CAROL)
        phones = [
            await start_phone(alpha.gateway, "talker.xml", alice, ALICE[0], "-trace_msg", "-message_file", str(trace)),
            await start_phone(beta.gateway, "talker.xml", carol, CAROL[0]),
        ]
        call = await place(alpha.gateway, ALICE[0], CAROL[0])

        async def answered() -> bool:
            return [c.state for c in await list_calls(alpha.gateway)] == [pb.CALL_STATE_ANSWERED]

        await wait_for(answered, what="the call answered")
        beta.gateway.process.kill()  # kill -9: beta's gateway tells nobody
        await beta.gateway.process.wait_exit()
        if restart:
            await beta.gateway.process.start()  # back at once, knowing no call
        assert await phones_done(phones[0], seconds=20) == [0]  # Alice's phone got its BYE
        why = "restarted and lost the call" if restart else "does not answer"
        assert f'Reason: SIP;cause=503;text="server beta {why}"' in trace.read_text()
        assert await lines_in_use(alpha) == [0] and await list_calls(alpha.gateway) == []

        async def ended_on_callstate() -> bool:
            record = await get_call(alpha.callstate, call.call_id)
            return record.end_reason == f"server beta {why}"

        await wait_for(ended_on_callstate, what="the reason on alpha's callstate")
    finally:
        await stop_phones(*phones)
