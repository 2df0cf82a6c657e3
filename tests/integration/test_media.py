"""The media plane with real softphones: every call's audio runs through its servers' media
services, each server records every segment of it (channel 1 its own party, channel 2 the other),
a held party hears the music, a stranger's packets are neither heard nor recorded, and a media
service killed mid-call leaves the phones talking directly.

Each baresip phone sends its own tone; what each phone heard and what each server recorded is
checked by spectrum. The music on hold is a tone of its own here, so that it is recognised too.
"""

from __future__ import annotations

import asyncio
import functools
import io
import math
import socket
import struct
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from pbxmesh.callstate.v1 import callstate_pb2 as cs
from pbxmesh.media.v1 import media_pb2 as md
from pbxmesh.media.v1 import media_pb2_grpc as md_grpc
from services.runtime.embedded_etcd import free_port
from tests.harness.baresip import Baresip, samples, tone_level
from tests.harness.servers import Group, Media
from tests.harness.sipp import register_phone
from tests.harness.site import Site, Spec, logs_of, running_sites
from tests.harness.tls import channel as api_channel
from tests.harness.wait import wait_for
from tests.integration.test_callstate import ALICE, BOB, CAROL, DAVE, Transferor, Watch, place

ALICE_TONE, BOB_TONE, CAROL_TONE, DAVE_TONE, MUSIC_TONE, STRANGER_TONE = 440, 620, 1000, 1300, 760, 2300  # Hz
RATE = 8000


def write_tone(path: Path, hz: float, seconds: float = 2.0) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        n = int(seconds * RATE)
        out.writeframes(struct.pack(f"<{n}h", *(int(8000 * math.sin(2 * math.pi * hz * i / RATE)) for i in range(n))))
    return path


@pytest.fixture
async def sites(group: Group, tmp_path: Path) -> AsyncIterator[dict[str, Site]]:
    env = {"PBXMESH_MEDIA_MUSIC_ON_HOLD": str(write_tone(tmp_path / "music.wav", MUSIC_TONE))}
    specs = {
        "alpha": Spec(ALICE, "sales", (BOB,), env=env, media=True),
        "beta": Spec(CAROL, "support", (DAVE,), env=env, media=True),
    }
    async with running_sites(group, specs, {"alpha": {"200"}, "beta": {"100"}}) as made:
        yield made


# -- reading audio ------------------------------------------------------------------------------


def level(values: np.ndarray | list[int], hz: float) -> float:
    return tone_level([int(v) for v in values], hz)


def strongest(values: np.ndarray, tones: tuple[int, ...]) -> int:
    """Which of ``tones`` dominates ``values`` (by FFT power near each frequency)."""
    spectrum = np.abs(np.fft.rfft(values.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(len(values), 1 / RATE)
    power = {hz: float(spectrum[(freqs > hz - 15) & (freqs < hz + 15)].sum()) for hz in tones}
    return max(power, key=lambda hz: power[hz])


def channels(data: bytes) -> tuple[np.ndarray, np.ndarray, int]:
    """Channel 1, channel 2 and the frame rate of a two-channel 16-bit WAV."""
    with wave.open(io.BytesIO(data), "rb") as reader:
        assert (reader.getnchannels(), reader.getsampwidth()) == (2, 2), "two channels of 16-bit PCM"
        rate = reader.getframerate()
        frames = np.frombuffer(reader.readframes(reader.getnframes()), dtype="<i2")
    return frames[0::2], frames[1::2], rate


def middle(values: np.ndarray, trim: float = 0.3) -> np.ndarray:
    """Without the edges, where the commutation was in flight."""
    cut = int(trim * RATE)
    return values[cut:-cut] if len(values) > 3 * cut else values


async def heard_seconds(phone: Baresip, seconds: float) -> bool:
    files = phone.heard()
    return bool(files) and len(samples(files[-1])) >= seconds * RATE


async def wait_heard(phone: Baresip, more: float) -> None:
    """Until the phone has heard ``more`` seconds beyond what it has now."""
    files = phone.heard()
    now = len(samples(files[-1])) / RATE if files else 0.0
    await wait_for(functools.partial(heard_seconds, phone, now + more), what=f"{phone.number} hearing {more} s more")


# -- the media services' API --------------------------------------------------------------------


async def recordings(media: Media, call_id: str) -> list[md.Recording]:
    async with api_channel(media.address) as channel:
        stub = md_grpc.MediaServiceStub(channel)
        return list((await stub.ListRecordings(md.ListRecordingsRequest(call_id=call_id), timeout=5)).recordings)


async def finished(media: Media, call_id: str, count: int) -> list[md.Recording]:
    found: list[md.Recording] = []

    async def done() -> bool:
        found[:] = await recordings(media, call_id)
        return len(found) >= count and all(r.sha256 for r in found)

    await wait_for(done, timeout=10, what=f"{count} finished recordings of {call_id}")
    return found


async def fetch(media: Media, segment_id: str) -> bytes:
    async with api_channel(media.address) as channel:
        stub = md_grpc.MediaServiceStub(channel)
        parts = [p async for p in stub.GetRecording(md.GetRecordingRequest(segment_id=segment_id), timeout=10)]
    assert parts[0].WhichOneof("part") == "recording"
    return b"".join(p.chunk for p in parts[1:])


async def legs(media: Media) -> list[md.LegState]:
    async with api_channel(media.address) as channel:
        stub = md_grpc.MediaServiceStub(channel)
        return list((await stub.ListLegs(md.ListLegsRequest(), timeout=5)).legs)


async def start_phones(tmp_path: Path, *phones: tuple[tuple[str, str], Site, int]) -> list[Baresip]:
    started: list[Baresip] = []
    try:
        for (number, password), site, tone in phones:
            folder = tmp_path / number
            started.append(await Baresip(folder, number, password, site.gateway.sip, tone).start())
    except BaseException:
        for phone in started:
            await phone.stop()
        raise
    return started


async def connect(caller: Baresip, callee: Baresip, number: str) -> None:
    await caller.dial(number)
    await caller.event("CALL_ESTABLISHED")
    await callee.event("CALL_ESTABLISHED")
    for phone in (caller, callee):
        await wait_heard(phone, 1.5)


# -- tests --------------------------------------------------------------------------------------


async def test_a_cross_server_call_is_anchored_recorded_per_segment_on_both_servers_with_music_on_hold(
    sites: dict[str, Site], tmp_path: Path
) -> None:
    alpha, beta = sites["alpha"], sites["beta"]
    watch = Watch(alpha.callstate)
    alice, carol = await start_phones(tmp_path, (ALICE, alpha, ALICE_TONE), (CAROL, beta, CAROL_TONE))
    try:
        await asyncio.wait_for(watch.synced.wait(), 5)
        await connect(alice, carol, CAROL[0])
        # The audio runs through both media services: each has two legs carrying packets both ways.
        for site in (alpha, beta):
            busy = [leg for leg in await legs(site.media) if leg.packets_in > 20 and leg.packets_out > 20]
            assert len(busy) == 2, (site.registry.id, await legs(site.media))
        heard_before_hold = len(samples(carol.heard()[-1]))
        await alice.command("hold")
        await watch.seen(lambda c: c.phase == cs.CALL_PHASE_HELD, "the call held on alpha")
        await wait_heard(carol, 2.0)
        heard_during_hold = len(samples(carol.heard()[-1]))
        held = len(watch.calls)
        await alice.command("resume")

        async def resumed() -> bool:
            return any(c.phase == cs.CALL_PHASE_ANSWERED for c in watch.calls[held:])

        await wait_for(resumed, timeout=10, what="the call resumed on alpha")
        await wait_heard(carol, 1.5)
        await alice.command("hangup")
        await carol.event("CALL_CLOSED")
        ended = await watch.seen(lambda c: c.phase == cs.CALL_PHASE_ENDED, "the call ended on alpha")
        call_id = ended.call_id
        on_alpha = await finished(alpha.media, call_id, 3)
        on_beta = await finished(beta.media, call_id, 3)
    except BaseException:
        print("alice:", alice.log(), "carol:", carol.log(), logs_of(alpha, beta), sep="\n")
        raise
    finally:
        await watch.close()
        for phone in (alice, carol):
            await phone.stop()

    # Carol, held behind the other server, heard the music while held; the tones around it.
    carol_heard = np.array(samples(carol.heard()[-1]))
    during = carol_heard[heard_before_hold + RATE // 2 : heard_during_hold - RATE // 4]
    assert strongest(during, (ALICE_TONE, MUSIC_TONE)) == MUSIC_TONE, level(during, MUSIC_TONE)
    assert level(carol_heard[:heard_before_hold], ALICE_TONE) > 0.2
    assert level(carol_heard[-RATE:], ALICE_TONE) > 0.2

    # The same segments on both servers: answered, held, resumed; durations within 100 ms.
    ids = [f"{call_id}/{n}" for n in (1, 2, 3)]
    for found in (on_alpha, on_beta):
        assert [r.segment_id for r in found] == ids
        assert [r.held for r in found] == [False, True, False]
        assert all(r.duration_ms > 500 and not r.error for r in found), found
    for a, b in zip(on_alpha, on_beta, strict=True):
        assert abs(a.duration_ms - b.duration_ms) <= 100, (a.segment_id, a.duration_ms, b.duration_ms)
        assert a.started_at == b.started_at, a.segment_id
    assert (on_alpha[0].local_number, on_alpha[0].remote_number) == (ALICE[0], CAROL[0])
    assert (on_beta[0].local_number, on_beta[0].remote_number) == (CAROL[0], ALICE[0])

    # Channel 1 is this server's party, channel 2 the other; the held stretch holds the music.
    tones = (ALICE_TONE, CAROL_TONE, MUSIC_TONE)
    expected: dict[str, list[tuple[int | None, int | None]]] = {
        "alpha": [(ALICE_TONE, CAROL_TONE), (MUSIC_TONE, None), (ALICE_TONE, CAROL_TONE)],
        "beta": [(CAROL_TONE, ALICE_TONE), (None, MUSIC_TONE), (CAROL_TONE, ALICE_TONE)],
    }
    for name, site in (("alpha", alpha), ("beta", beta)):
        for segment_id, (one, two) in zip(ids, expected[name], strict=True):
            first, second, rate = channels(await fetch(site.media, segment_id))
            assert rate == RATE
            if one is not None:
                assert strongest(middle(first), tones) == one, (name, segment_id, "channel 1")
            if two is not None:
                assert strongest(middle(second), tones) == two, (name, segment_id, "channel 2")


async def test_a_local_call_is_anchored_and_recorded_and_a_held_phone_of_the_server_hears_the_music(
    sites: dict[str, Site], tmp_path: Path
) -> None:
    alpha = sites["alpha"]
    watch = Watch(alpha.callstate)
    alice, bob = await start_phones(tmp_path, (ALICE, alpha, ALICE_TONE), (BOB, alpha, BOB_TONE))
    try:
        await asyncio.wait_for(watch.synced.wait(), 5)
        await connect(alice, bob, BOB[0])
        assert len([leg for leg in await legs(alpha.media) if leg.packets_in > 20]) == 2
        before_hold = len(samples(bob.heard()[-1]))
        await alice.command("hold")
        await watch.seen(lambda c: c.phase == cs.CALL_PHASE_HELD, "the call held")
        await wait_heard(bob, 2.0)
        during_hold = len(samples(bob.heard()[-1]))
        held = len(watch.calls)
        await alice.command("resume")

        async def resumed() -> bool:
            return any(c.phase == cs.CALL_PHASE_ANSWERED for c in watch.calls[held:])

        await wait_for(resumed, timeout=10, what="the call resumed")
        await wait_heard(bob, 1.5)
        await bob.command("hangup")
        await alice.event("CALL_CLOSED")
        ended = await watch.seen(lambda c: c.phase == cs.CALL_PHASE_ENDED, "the call ended")
        recorded = await finished(alpha.media, ended.call_id, 3)
    except BaseException:
        print("alice:", alice.log(), "bob:", bob.log(), logs_of(alpha), sep="\n")
        raise
    finally:
        await watch.close()
        for phone in (alice, bob):
            await phone.stop()
    bob_heard = np.array(samples(bob.heard()[-1]))
    assert level(samples(alice.heard()[-1]), BOB_TONE) > 0.2 and level(bob_heard[:before_hold], ALICE_TONE) > 0.2
    # Bob, held by a phone of his own server, heard the music, then Alice again.
    during = bob_heard[before_hold + RATE // 2 : during_hold - RATE // 4]
    assert strongest(during, (ALICE_TONE, MUSIC_TONE)) == MUSIC_TONE
    assert level(bob_heard[-RATE:], ALICE_TONE) > 0.2
    assert [r.held for r in recorded] == [False, True, False]
    tones = (ALICE_TONE, BOB_TONE, MUSIC_TONE)
    for recording, one, two in zip(
        recorded, (ALICE_TONE, MUSIC_TONE, ALICE_TONE), (BOB_TONE, None, BOB_TONE), strict=True
    ):
        first, second, _ = channels(await fetch(alpha.media, recording.segment_id))
        assert strongest(middle(first), tones) == one, recording.segment_id
        if two is not None:
            assert strongest(middle(second), tones) == two, recording.segment_id


def tone_packets(hz: float, count: int, ssrc: int = 0x5EED) -> list[bytes]:
    """RTP packets (PCMU, 20 ms each) of a loud tone."""
    import audioop

    packets = []
    for k in range(count):
        pcm = struct.pack(
            "<160h", *(int(20000 * math.sin(2 * math.pi * hz * (k * 160 + i) / RATE)) for i in range(160))
        )
        header = struct.pack("!BBHII", 0x80, 0, k & 0xFFFF, k * 160, ssrc)
        packets.append(header + audioop.lin2ulaw(pcm, 2))
    return packets


async def test_packets_from_an_address_the_sdp_did_not_name_are_neither_heard_nor_recorded(
    sites: dict[str, Site], tmp_path: Path
) -> None:
    alpha, beta = sites["alpha"], sites["beta"]
    watch = Watch(alpha.callstate)
    alice, carol = await start_phones(tmp_path, (ALICE, alpha, ALICE_TONE), (CAROL, beta, CAROL_TONE))
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger.bind(("127.0.0.1", 0))
    try:
        await asyncio.wait_for(watch.synced.wait(), 5)
        await connect(alice, carol, CAROL[0])
        targets = [(leg.leg.address, leg.leg.rtp_port) for leg in await legs(alpha.media)]
        for packet in tone_packets(STRANGER_TONE, 100):  # two seconds, into every leg of alpha
            for target in targets:
                stranger.sendto(packet, target)
            await asyncio.sleep(0.02)
        await wait_heard(alice, 0.5)
        dropped = sum(leg.packets_dropped for leg in await legs(alpha.media))
        await alice.command("hangup")
        await carol.event("CALL_CLOSED")
        ended = await watch.seen(lambda c: c.phase == cs.CALL_PHASE_ENDED, "the call ended")
        (recording,) = await finished(alpha.media, ended.call_id, 1)
    except BaseException:
        print("alice:", alice.log(), "carol:", carol.log(), logs_of(alpha, beta), sep="\n")
        raise
    finally:
        stranger.close()
        await watch.close()
        for phone in (alice, carol):
            await phone.stop()
    assert dropped >= 2 * 100, dropped  # every one of them, counted
    for phone in (alice, carol):
        heard = samples(phone.heard()[-1])
        assert level(heard, STRANGER_TONE) < 0.01, (phone.number, level(heard, STRANGER_TONE))
    first, second, _ = channels(await fetch(alpha.media, recording.segment_id))
    for channel in (first, second):
        assert level(channel, STRANGER_TONE) < 0.01


async def test_a_media_service_killed_mid_call_leaves_the_phones_talking_directly(
    sites: dict[str, Site], tmp_path: Path
) -> None:
    alpha, beta = sites["alpha"], sites["beta"]
    watch = Watch(alpha.callstate)
    alice, carol = await start_phones(tmp_path, (ALICE, alpha, ALICE_TONE), (CAROL, beta, CAROL_TONE))
    try:
        await asyncio.wait_for(watch.synced.wait(), 5)
        await connect(alice, carol, CAROL[0])
        call = await watch.seen(lambda c: c.phase == cs.CALL_PHASE_ANSWERED, "the answer")
        written = alpha.media.recordings / call.call_id / "1.wav"

        async def recorded_a_second() -> bool:  # header + 1 s of two 16-bit channels, flushed
            return written.exists() and written.stat().st_size > 44 + RATE * 4

        await wait_for(recorded_a_second, timeout=10, what="a second of the call recorded on alpha")
        await alpha.media.stop(kill=True)

        async def moved() -> bool:
            return any("moved to direct media" in line for line in alpha.gateway.log)

        # The gateway sees its stream to the media service break and moves the calls at once.
        await wait_for(moved, timeout=2, what="alpha's gateway moving the call to direct media")
        await wait_heard(alice, 0.5)  # the re-INVITE and the first packets of the direct media
        marks = [len(samples(p.heard()[-1])) for p in (alice, carol)]
        for phone in (alice, carol):
            await wait_heard(phone, 2.0)
        alice_after = np.array(samples(alice.heard()[-1])[marks[0] :])
        carol_after = np.array(samples(carol.heard()[-1])[marks[1] :])
        await alice.command("hangup")
        await carol.event("CALL_CLOSED")
    except BaseException:
        print("alice:", alice.log(), "carol:", carol.log(), logs_of(alpha, beta), sep="\n")
        raise
    finally:
        await watch.close()
        for phone in (alice, carol):
            await phone.stop()
    assert level(alice_after, CAROL_TONE) > 0.2, level(alice_after, CAROL_TONE)
    assert level(carol_after, ALICE_TONE) > 0.2, level(carol_after, ALICE_TONE)
    # What alpha recorded before it was killed is a valid WAV (its header kept up to date).
    (path,) = (alpha.media.recordings / call.call_id).glob("1.wav")
    with wave.open(str(path), "rb") as reader:
        assert reader.getnchannels() == 2 and reader.getnframes() >= RATE // 2
    # Started again, the media service lists it, finished, and says why it is short; the gateway
    # attaches again (it opens its legs ahead).
    await alpha.media.start()
    (recording,) = await finished(alpha.media, call.call_id, 1)
    assert recording.error == "the media service stopped during the recording" and recording.duration_ms >= 500

    async def attached_again() -> bool:
        return len(await legs(alpha.media)) >= 2

    await wait_for(attached_again, timeout=10, what="alpha's gateway attached to the new media service")


async def check_transferred(sites: dict[str, Site], call_id: str, alice: Baresip, mark: int) -> None:
    """After Carol (beta) handed Alice's call to Dave (beta): Alice heard Dave from then on, and
    both servers recorded two segments, Carol then Dave, with the same ids and durations."""
    alpha, beta = sites["alpha"], sites["beta"]
    after = np.array(samples(alice.heard()[-1])[mark:])
    assert strongest(middle(after), (CAROL_TONE, DAVE_TONE)) == DAVE_TONE
    on_alpha, on_beta = await finished(alpha.media, call_id, 2), await finished(beta.media, call_id, 2)
    ids = [f"{call_id}/1", f"{call_id}/2"]
    assert [r.segment_id for r in on_alpha] == [r.segment_id for r in on_beta] == ids
    for a, b in zip(on_alpha, on_beta, strict=True):
        assert abs(a.duration_ms - b.duration_ms) <= 100, (a.segment_id, a.duration_ms, b.duration_ms)
    assert [r.remote_number for r in on_alpha] == [CAROL[0], DAVE[0]]
    assert [r.local_number for r in on_beta] == [CAROL[0], DAVE[0]]
    first, second, _ = channels(await fetch(alpha.media, ids[1]))
    assert strongest(middle(first), (ALICE_TONE, DAVE_TONE)) == ALICE_TONE
    assert strongest(middle(second), (ALICE_TONE, CAROL_TONE, DAVE_TONE)) == DAVE_TONE
    first, second, _ = channels(await fetch(beta.media, ids[1]))
    assert strongest(middle(first), (ALICE_TONE, DAVE_TONE)) == DAVE_TONE
    assert strongest(middle(second), (ALICE_TONE, DAVE_TONE)) == ALICE_TONE


async def test_a_blind_transfer_on_the_other_server_reconnects_the_media_and_the_recordings_line_up(
    sites: dict[str, Site], tmp_path: Path
) -> None:
    alpha, beta = sites["alpha"], sites["beta"]
    watch = Watch(alpha.callstate)
    alice, carol, dave = await start_phones(
        tmp_path, (ALICE, alpha, ALICE_TONE), (CAROL, beta, CAROL_TONE), (DAVE, beta, DAVE_TONE)
    )
    try:
        await asyncio.wait_for(watch.synced.wait(), 5)
        await connect(alice, carol, CAROL[0])
        await carol.command("transfer", DAVE[0])
        await dave.event("CALL_ESTABLISHED")
        await watch.seen(lambda c: c.remote_party.number == DAVE[0], "Dave on alpha's stream")
        mark = len(samples(alice.heard()[-1]))
        await wait_heard(alice, 2.0)
        await alice.command("hangup")
        await dave.event("CALL_CLOSED")
        ended = await watch.seen(lambda c: c.phase == cs.CALL_PHASE_ENDED, "the call ended on alpha")
        await check_transferred(sites, ended.call_id, alice, mark)
    except BaseException:
        print("alice:", alice.log(), "carol:", carol.log(), "dave:", dave.log(), logs_of(alpha, beta), sep="\n")
        raise
    finally:
        await watch.close()
        for phone in (alice, carol, dave):
            await phone.stop()


async def test_an_attended_transfer_on_the_other_server_reconnects_the_media_and_the_recordings_line_up(
    sites: dict[str, Site], tmp_path: Path
) -> None:
    """Carol (beta) answers Alice (alpha), calls Dave (beta) herself, then REFERs Alice to Dave
    with Replaces: beta joins the two calls, and Alice hears Dave."""
    alpha, beta = sites["alpha"], sites["beta"]
    watch = Watch(alpha.callstate)
    (alice,) = await start_phones(tmp_path, (ALICE, alpha, ALICE_TONE))
    (dave,) = await start_phones(tmp_path, (DAVE, beta, DAVE_TONE))
    transferor = Transferor(beta.gateway, await register_phone(beta.gateway, CAROL))
    try:
        await asyncio.wait_for(watch.synced.wait(), 5)
        carols_side = asyncio.create_task(asyncio.to_thread(transferor.run))
        await alice.dial(CAROL[0])
        await alice.event("CALL_ESTABLISHED")
        await dave.event("CALL_ESTABLISHED")
        await watch.seen(lambda c: c.remote_party.number == DAVE[0], "Dave on alpha's stream")
        await asyncio.wait_for(carols_side, 20)
        mark = len(samples(alice.heard()[-1]))
        await wait_heard(alice, 2.0)
        await alice.command("hangup")
        await dave.event("CALL_CLOSED")
        ended = await watch.seen(lambda c: c.phase == cs.CALL_PHASE_ENDED, "the call ended on alpha")
        await check_transferred(sites, ended.call_id, alice, mark)
    except BaseException:
        print("alice:", alice.log(), "dave:", dave.log(), transferor.seen, logs_of(alpha, beta), sep="\n")
        raise
    finally:
        transferor.close()
        await watch.close()
        for phone in (alice, dave):
            await phone.stop()


async def test_a_call_placed_through_the_api_is_anchored_and_recorded(sites: dict[str, Site], tmp_path: Path) -> None:
    """RFC 3725 flow I: the gateway rings Alice, offers her SDP to Carol, ACKs Alice with the answer."""
    alpha, beta = sites["alpha"], sites["beta"]
    alice, carol = await start_phones(tmp_path, (ALICE, alpha, ALICE_TONE), (CAROL, beta, CAROL_TONE))
    try:
        call = await place(alpha.gateway, ALICE[0], CAROL[0])
        for phone in (alice, carol):
            await phone.event("CALL_ESTABLISHED")
            await wait_heard(phone, 1.5)
        await carol.command("hangup")
        await alice.event("CALL_CLOSED")
        (recording,) = await finished(alpha.media, call.call_id, 1)
    except BaseException:
        print("alice:", alice.log(), "carol:", carol.log(), logs_of(alpha, beta), sep="\n")
        raise
    finally:
        for phone in (alice, carol):
            await phone.stop()
    assert level(samples(alice.heard()[-1]), CAROL_TONE) > 0.2
    assert level(samples(carol.heard()[-1]), ALICE_TONE) > 0.2
    first, second, _ = channels(await fetch(alpha.media, recording.segment_id))
    assert strongest(middle(first), (ALICE_TONE, CAROL_TONE)) == ALICE_TONE
    assert strongest(middle(second), (ALICE_TONE, CAROL_TONE)) == CAROL_TONE


async def test_without_a_media_service_calls_go_direct_unless_recording_is_required(
    group: Group, tmp_path: Path
) -> None:
    """listen.media names a port nothing listens on. On beta a call connects with direct media
    (and a warning); on alpha, with recording.required, a call gets 503 and PlaceCall UNAVAILABLE."""
    nowhere = {"PBXMESH_LISTEN_MEDIA": f"127.0.0.1:{free_port()}"}
    specs = {
        "alpha": Spec(ALICE, "sales", (BOB,), env={**nowhere, "PBXMESH_RECORDING_REQUIRED": "true"}),
        "beta": Spec(CAROL, "support", (DAVE,), env=nowhere),
    }
    async with running_sites(group, specs) as made:
        alpha, beta = made["alpha"], made["beta"]
        alice, bob, carol, dave = await start_phones(
            tmp_path,
            (ALICE, alpha, ALICE_TONE),
            (BOB, alpha, BOB_TONE),
            (CAROL, beta, CAROL_TONE),
            (DAVE, beta, DAVE_TONE),
        )
        try:
            await connect(carol, dave, DAVE[0])
            await carol.command("hangup")
            await alice.dial(BOB[0])
            closed = await alice.event("CALL_CLOSED")
            assert "503" in str(closed.get("param")), closed
            assert not any(e.get("type") == "CALL_INCOMING" for e in bob.events)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await place(alpha.gateway, ALICE[0], BOB[0])
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            for phone in (alice, bob, carol, dave):
                await phone.stop()
        assert level(samples(dave.heard()[-1]), CAROL_TONE) > 0.2
        assert any("direct media, not recorded" in line for line in beta.gateway.log)
        assert any("refused: recording.required" in line for line in alpha.gateway.log)


async def test_a_call_transferred_back_to_its_server_is_closed_there_with_its_media(
    sites: dict[str, Site], tmp_path: Path
) -> None:
    """Alice (alpha) calls Carol (beta), who transfers her to Bob (alpha): the call came back and
    is closed on alpha into a local call; Alice hears Bob without being asked anything, and
    alpha's second segment is Alice and Bob."""
    alpha, beta = sites["alpha"], sites["beta"]
    watch = Watch(alpha.callstate)
    alice, bob, carol = await start_phones(
        tmp_path, (ALICE, alpha, ALICE_TONE), (BOB, alpha, BOB_TONE), (CAROL, beta, CAROL_TONE)
    )
    try:
        await asyncio.wait_for(watch.synced.wait(), 5)
        await connect(alice, carol, CAROL[0])
        await carol.command("transfer", BOB[0])
        await bob.event("CALL_ESTABLISHED")
        await watch.seen(lambda c: c.remote_party.number == BOB[0] and not c.cross_server, "a local call on alpha")
        mark = len(samples(alice.heard()[-1]))
        await wait_heard(alice, 2.0)

        async def beta_left() -> bool:  # its legs are closed shortly after its part of the call ended
            return not [leg for leg in await legs(beta.media) if leg.remote]

        await wait_for(beta_left, timeout=5, what="beta's media legs of the call closed")
        await alice.command("hangup")
        await bob.event("CALL_CLOSED")
        ended = await watch.seen(
            lambda c: c.phase == cs.CALL_PHASE_ENDED and c.remote_party.number == BOB[0], "the call ended on alpha"
        )
        on_alpha = await finished(alpha.media, ended.call_id, 2)
    except BaseException:
        print("alice:", alice.log(), "bob:", bob.log(), "carol:", carol.log(), logs_of(alpha, beta), sep="\n")
        raise
    finally:
        await watch.close()
        for phone in (alice, bob, carol):
            await phone.stop()
    after = np.array(samples(alice.heard()[-1])[mark:])
    assert strongest(middle(after), (BOB_TONE, CAROL_TONE)) == BOB_TONE
    assert [r.remote_number for r in on_alpha[:2]] == [CAROL[0], BOB[0]]
    first, second, _ = channels(await fetch(alpha.media, on_alpha[1].segment_id))
    assert strongest(middle(first), (ALICE_TONE, BOB_TONE)) == ALICE_TONE
    assert strongest(middle(second), (ALICE_TONE, BOB_TONE, CAROL_TONE)) == BOB_TONE


async def test_a_call_forked_to_two_phones_of_a_number_connects_the_one_that_answers(
    sites: dict[str, Site], tmp_path: Path
) -> None:
    """Bob is registered from two phones with tones of their own; Alice's call rings both, the
    first answer wins and Alice hears that phone (the other branch's media is not taken)."""
    alpha = sites["alpha"]
    alice, bob_desk = await start_phones(tmp_path, (ALICE, alpha, ALICE_TONE), (BOB, alpha, BOB_TONE))
    bob_mobile = await Baresip(tmp_path / "101-mobile", *BOB, alpha.gateway.sip, DAVE_TONE).start()
    phones = (alice, bob_desk, bob_mobile)
    try:
        await alice.dial(BOB[0])
        await alice.event("CALL_ESTABLISHED")
        await wait_heard(alice, 2.0)
        answered = [p for p in (bob_desk, bob_mobile) if p.heard() and len(samples(p.heard()[-1])) > RATE]
        await alice.command("hangup")
    except BaseException:
        print(*(p.log() for p in phones), logs_of(alpha), sep="\n")
        raise
    finally:
        for phone in phones:
            await phone.stop()
    assert len(answered) == 1, [p.tone_hz for p in answered]
    heard = np.array(samples(alice.heard()[-1]))
    assert strongest(middle(heard), (BOB_TONE, DAVE_TONE)) == answered[0].tone_hz
