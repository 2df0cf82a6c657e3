"""Real softphones on a group run with the default config: baresip phones register, call across
servers, hold, resume and hang up, and each hears the other's tone."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pbxmesh.callstate.v1 import callstate_pb2 as cs
from tests.harness.baresip import Baresip, samples, tone_level
from tests.harness.servers import Group
from tests.harness.site import Site, Spec, running_sites
from tests.harness.wait import wait_for
from tests.integration.test_callstate import ALICE, CAROL, DAVE, Watch

ALICE_TONE, CAROL_TONE = 440, 1000  # Hz: what each phone sends


@pytest.fixture
async def sites(group: Group) -> AsyncIterator[dict[str, Site]]:
    specs = {"alpha": Spec(ALICE, "sales"), "beta": Spec(CAROL, "support", (DAVE,))}
    async with running_sites(group, specs, {"alpha": {"200"}, "beta": {"100"}}) as made:
        yield made


async def heard_seconds(phone: Baresip, seconds: float) -> bool:
    files = phone.heard()
    return bool(files) and len(samples(files[-1])) >= seconds * 8000


async def test_baresip_phones_register_call_across_servers_hold_resume_and_hear_each_other(
    sites: dict[str, Site], tmp_path: Path
) -> None:
    alpha, beta = sites["alpha"], sites["beta"]
    watch = Watch(alpha.callstate)
    # The sites' sip section names accounts only: the digest algorithms are the defaults.
    alice = await Baresip(tmp_path / "alice", *ALICE, alpha.gateway.sip, ALICE_TONE).start()
    carol = await Baresip(tmp_path / "carol", *CAROL, beta.gateway.sip, CAROL_TONE).start()
    try:
        await alice.dial(CAROL[0])
        await alice.event("CALL_ESTABLISHED")
        await carol.event("CALL_ESTABLISHED")
        for phone in (alice, carol):
            await wait_for(functools.partial(heard_seconds, phone, 1.5), what=f"{phone.number} hearing 1.5 s")
        await alice.command("hold")
        await watch.seen(lambda c: c.phase == cs.CALL_PHASE_HELD, "the call held on alpha's callstate")
        held = len(watch.calls)
        await alice.command("resume")

        async def resumed() -> bool:
            return any(c.phase == cs.CALL_PHASE_ANSWERED for c in watch.calls[held:])

        await wait_for(resumed, timeout=10, what="the call resumed on alpha's callstate")
        await alice.command("hangup")
        await carol.event("CALL_CLOSED")
        ended = await watch.seen(lambda c: c.phase == cs.CALL_PHASE_ENDED, "the call ended on alpha")
    except BaseException:
        print("alice:", alice.log(), "carol:", carol.log(), sep="\n")
        raise
    finally:
        await watch.close()
        for phone in (alice, carol):
            await phone.stop()
    assert watch.phases() == ["DIALING", "RINGING", "ANSWERED", "HELD", "ANSWERED", "ENDED"]
    assert (ended.remote_party.number, ended.remote_party.server_id) == (CAROL[0], "beta")
    # Each phone heard the other's tone, not its own (media flows phone to phone).
    alice_heard, carol_heard = samples(alice.heard()[-1]), samples(carol.heard()[-1])
    assert tone_level(alice_heard, CAROL_TONE) > 0.2, tone_level(alice_heard, CAROL_TONE)
    assert tone_level(alice_heard, CAROL_TONE) > 10 * tone_level(alice_heard, ALICE_TONE)
    assert tone_level(carol_heard, ALICE_TONE) > 0.2, tone_level(carol_heard, ALICE_TONE)
    assert tone_level(carol_heard, ALICE_TONE) > 10 * tone_level(carol_heard, CAROL_TONE)
