"""The callstate service's gateway stream, driven directly (no network): commands made while no
gateway is connected reach the next one that connects."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from pbxmesh.callstate.v1 import callstate_pb2 as cs
from services.callstate.model import ANSWERED, DIALING, ENDED, CallBook, Event, Party, Share
from services.callstate.peers import Peers
from services.callstate.service import HOLD_COMMANDS, CallStateService
from services.runtime.errors import InvalidArgument


async def gateway(live: list[cs.CallEvent], stop: asyncio.Event) -> AsyncIterator[cs.ReportCallsRequest]:
    """A gateway's report stream: the replay of its live calls, then nothing until ``stop``."""
    yield cs.ReportCallsRequest(events=live, replay=True)
    await stop.wait()


async def test_commands_made_without_a_gateway_reach_the_next_one() -> None:
    service = CallStateService(CallBook("alpha", "Alpha office"), Peers("127.0.0.1:1"))
    for n in range(3):
        service.command(cs.ReportCallsResponse(call_id=f"c{n}", hang_up="server beta left the group"))
    stop = asyncio.Event()
    stream = service.ReportCalls(gateway([], stop), context=None)  # type: ignore[arg-type]
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


async def test_a_replay_ends_the_calls_the_gateway_no_longer_has() -> None:
    book = CallBook("alpha", "Alpha office")
    service = CallStateService(book, Peers("127.0.0.1:1"))
    alice, bob = Party("100"), Party("101")
    for call_id in ("kept", "lost"):
        book.apply(Event(call_id, "created", 1.0, alice, bob))
        book.apply(Event(call_id, "answered", 2.0, alice, bob))
    book.shared(Share("told", "beta", Party("200"), ANSWERED, 2.0, 1))  # known from a peer only
    kept = cs.CallEvent(call_id="kept", kind=cs.EVENT_KIND_ANSWERED, local_party=cs.Party(number="100"))
    stop = asyncio.Event()
    stream = service.ReportCalls(gateway([kept], stop), context=None)  # type: ignore[arg-type]
    waiting = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0.1)  # the replay is read
    assert {c.call_id: c.phase for c in book.calls.values()} == {"kept": ANSWERED, "lost": ENDED, "told": DIALING}
    assert book.calls["lost"].end_reason == "the gateway no longer has the call"
    waiting.cancel()  # the stream's end, as when the gateway goes away
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    assert service.gateway is None


@pytest.mark.parametrize(
    "party",
    [
        cs.Party(number="200", display_name="Eve\r\nP-Asserted-Identity: <sip:911@x>"),
        cs.Party(number="200\x00"),
        cs.Party(number="200", server_name="x" * 129),
    ],
)
async def test_share_party_refuses_control_characters_and_long_values(party: cs.Party) -> None:
    book = CallBook("alpha", "Alpha office")
    service = CallStateService(book, Peers("127.0.0.1:1"))
    request = cs.SharePartyRequest(call_id="c1", server_id="beta", party=party, phase=cs.CALL_PHASE_ANSWERED)
    with pytest.raises(InvalidArgument) as caught:
        await service.ShareParty(request, context=None)  # type: ignore[arg-type]
    assert caught.value.reason == "INVALID_PARTY"
    assert "c1" not in book.calls


def test_a_gateway_event_with_a_control_character_is_ignored() -> None:
    book = CallBook("alpha", "Alpha office")
    service = CallStateService(book, Peers("127.0.0.1:1"))
    service.report(Event("c1", "created", 1.0, Party("100", "Al\nice"), Party("200")))
    assert "c1" not in book.calls
    service.report(Event("c1", "created", 1.0, Party("100", "Alice"), Party("200")))
    assert "c1" in book.calls
