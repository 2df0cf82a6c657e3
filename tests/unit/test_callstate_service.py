"""The callstate service's gateway stream, driven directly (no network): commands made while no
gateway is connected reach the next one that connects."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from pbxmesh.callstate.v1 import callstate_pb2 as cs
from services.callstate.model import CallBook
from services.callstate.peers import Peers
from services.callstate.service import HOLD_COMMANDS, CallStateService


async def silent_gateway(stop: asyncio.Event) -> AsyncIterator[cs.ReportCallsRequest]:
    yield cs.ReportCallsRequest(replay=True)
    await stop.wait()


async def test_commands_made_without_a_gateway_reach_the_next_one() -> None:
    service = CallStateService(CallBook("alpha", "Alpha office"), Peers("127.0.0.1:1"))
    for n in range(3):
        service.command(cs.ReportCallsResponse(call_id=f"c{n}", hang_up="server beta left the group"))
    stop = asyncio.Event()
    stream = service.ReportCalls(silent_gateway(stop), context=None)  # type: ignore[arg-type]
    got = [await asyncio.wait_for(anext(stream), 2) for _ in range(3)]
    assert [c.call_id for c in got] == ["c0", "c1", "c2"]
    # Connected now: a new command goes straight to the stream, nothing is held.
    service.command(cs.ReportCallsResponse(call_id="c3", new_party=cs.Party(number="201")))
    assert (await asyncio.wait_for(anext(stream), 2)).new_party.number == "201"
    assert not service.held
    stop.set()
    await stream.aclose()  # type: ignore[attr-defined]  # an async generator underneath
    assert service.gateway is None


async def test_held_commands_are_bounded() -> None:
    service = CallStateService(CallBook("alpha", "Alpha office"), Peers("127.0.0.1:1"))
    for n in range(HOLD_COMMANDS + 5):
        service.command(cs.ReportCallsResponse(call_id=f"c{n}", hang_up="gone"))
    assert len(service.held) == HOLD_COMMANDS and service.held[0].call_id == "c5"
