"""The plane with real worker processes and real UDP phones on 127.0.0.1."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import socket
import sys
import time
import warnings
import wave
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest

from services.media import g711, wav
from services.media.plane import MUSIC_ON_HOLD, Digit, LegFreed, Plane, PlayFinished, RecordingClosed, RecordingFailed
from tests.harness.wait import wait_for
from tests.unit.media.phones import PCMU_ONLY, Events, Phone, dominant_frequency, sine, started

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

REPOSITORY = str(Path(__file__).resolve().parents[3])
NewPhone = Callable[[], Awaitable[Phone]]


async def call(plane: Plane, new_phone: NewPhone, codecs_a=PCMU_ONLY, codecs_b=PCMU_ONLY, call_id: str = "c1"):  # type: ignore[no-untyped-def]
    """Two phones on two connected legs; A is the home party."""
    a, b = await new_phone(), await new_phone()
    leg_a, leg_b = await plane.open_legs(2, "gw")
    a.attach(plane, leg_a, codecs_a)
    b.attach(plane, leg_b, codecs_b)
    plane.connect(call_id, leg_a.leg_id, leg_b.leg_id)
    await plane.settled()
    return a, b


def write_wav(path: Path, samples: np.ndarray, rate: int = 8000) -> Path:
    with wave.open(str(path), "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(rate)
        file.writeframes(samples.astype("<i2").tobytes())
    return path


async def test_relay_both_ways_translates_payload_types_by_name(plane: Plane, new_phone: NewPhone) -> None:
    a, b = await call(
        plane,
        new_phone,
        [(0, "PCMU", 8000), (8, "PCMA", 8000), (101, "telephone-event", 8000)],
        [(98, "PCMU", 8000), (96, "telephone-event", 8000)],
    )
    a.send(b"\x11" * 160, 0)
    got = await b.next()
    assert (got.payload_type, got.payload) == (98, b"\x11" * 160)
    assert got.ssrc != a.ssrc
    a.send_event(5, False, 400, 9999, payload_type=101)
    assert (await b.next()).payload_type == 96
    b.send(b"\x22" * 160, 98)
    back = await a.next()
    assert (back.payload_type, back.payload) == (0, b"\x22" * 160)
    stats = {leg.leg_id: leg for leg in await plane.legs()}
    assert a.leg is not None and b.leg is not None
    assert (stats[a.leg.leg_id].packets_in, stats[a.leg.leg_id].packets_out) == (2, 1)
    assert stats[b.leg.leg_id].connected_to == a.leg.leg_id and stats[b.leg.leg_id].call_id == "c1"


async def test_a_party_without_the_law_gets_it_transcoded_bit_exact(plane: Plane, new_phone: NewPhone) -> None:
    a, b = await call(plane, new_phone, [(0, "PCMU", 8000)], [(8, "PCMA", 8000)])
    every = bytes(range(256))
    for part in (every[:128], every[128:]):
        a.send(part, 0)
    received = [await b.next(), await b.next()]
    assert {packet.payload_type for packet in received} == {8}
    assert b"".join(p.payload for p in received) == audioop.lin2alaw(audioop.ulaw2lin(every, 2), 2)
    b.send(every, 8)
    assert (await a.next()).payload == audioop.lin2ulaw(audioop.alaw2lin(every, 2), 2)


async def test_telephone_events_are_dropped_for_a_party_that_has_none(plane: Plane, new_phone: NewPhone) -> None:
    a, b = await call(plane, new_phone, PCMU_ONLY, [(0, "PCMU", 8000)])
    a.send_event(1, True, 800, 1000)
    a.send(b"\x33" * 160)
    assert (await b.next()).payload == b"\x33" * 160  # the event before it never came


async def test_packets_from_elsewhere_are_dropped_counted_and_not_recorded(
    plane: Plane, new_phone: NewPhone, events: Events, tmp_path: Path
) -> None:
    a, b = await call(plane, new_phone)
    stranger = await new_phone()
    assert a.leg is not None and stranger.transport is not None
    plane.record("c1", "c1/1", tmp_path / "c1.wav", time.time())
    tone = g711.encode(g711.PCMU, sine(440, 0.02, level=20000))
    for _ in range(20):
        stranger.transport.sendto(
            b"\x80\x00\x00\x01" + bytes(8) + tone, ("127.0.0.1", a.leg.rtp_port)
        )  # right port, wrong sender
        await asyncio.sleep(0.01)
    assert await b.gather(0.3) == []
    stats = {leg.leg_id: leg for leg in await plane.legs()}
    assert stats[a.leg.leg_id].packets_dropped == 20 and stats[a.leg.leg_id].packets_in == 0
    await counted(plane, "packets_dropped", 20)
    plane.stop_recording("c1", time.time())
    closed = await events.wait(RecordingClosed)
    assert isinstance(closed, RecordingClosed)
    with wave.open(str(closed.path)) as file:
        assert file.getnframes() > 0
        assert not any(file.readframes(file.getnframes()))


async def counted(plane: Plane, name: str, value: int) -> None:
    """Until the workers' counters (reported every second) show ``value`` for ``name``."""

    async def shown() -> bool:
        return plane.counters().get(name) == value

    await wait_for(shown, timeout=5, what=f"{name} counted {value}")


async def test_the_outbound_stream_goes_on_across_a_new_partner(plane: Plane, new_phone: NewPhone) -> None:
    a, b = await call(plane, new_phone)
    for _ in range(3):
        a.send(b"\x01" * 160)
        await asyncio.sleep(0.02)
    before = [await b.next() for _ in range(3)]
    c = await new_phone()
    (leg_c,) = await plane.open_legs(1, "gw")
    c.attach(plane, leg_c, PCMU_ONLY)
    assert b.leg is not None
    plane.connect("c1", leg_c.leg_id, b.leg.leg_id)  # a transfer: B now talks to C
    await plane.settled()
    await asyncio.sleep(0.1)
    c.send(b"\x02" * 160)
    after = await b.next()
    last = before[-1]
    assert after.payload == b"\x02" * 160
    assert after.ssrc == last.ssrc and after.marker and not before[1].marker
    assert after.sequence == (last.sequence + 1) & 0xFFFF
    assert 800 <= (after.timestamp - last.timestamp) % 2**32 <= 8000  # 0.1 s and a bit, never back
    a.send(b"\x01" * 160)
    assert await b.gather(0.2) == []  # A lost its partner


async def test_music_replaces_the_partner_and_the_stream_goes_on(plane: Plane, new_phone: NewPhone) -> None:
    a, b = await call(plane, new_phone, PCMU_ONLY, [(8, "PCMA", 8000)])
    assert b.leg is not None
    a.send(b"\x01" * 160)
    relayed = await b.next()
    plane.play(b.leg.leg_id, None, loop=True)
    await plane.settled()
    await asyncio.sleep(0.1)
    a.send(b"\x01" * 160)  # not sent to B while music plays
    music = await b.gather(0.3)
    assert len(music) >= 10
    assert all(p.payload_type == 8 and p.ssrc == relayed.ssrc for p in music)
    assert b.leg is not None
    hold = wav.read_pcm(MUSIC_ON_HOLD)
    assert music[0].payload == g711.encode(g711.PCMA, hold[:160])
    assert music[0].marker and music[0].sequence == (relayed.sequence + 1) & 0xFFFF
    assert [p.sequence for p in music] == [(music[0].sequence + i) & 0xFFFF for i in range(len(music))]
    assert all((q.timestamp - p.timestamp) % 2**32 == 160 for p, q in itertools.pairwise(music))
    assert 0 < (music[0].timestamp - relayed.timestamp) % 2**32 < 8000  # forward by the time elapsed
    plane.stop_play(b.leg.leg_id)
    await plane.settled()
    await asyncio.sleep(0.02)
    last_music = (music + b.flush())[-1]
    a.send(b"\x05" * 160)
    back = await b.next()
    while back.payload != b"\x05".translate(g711.ULAW_TO_ALAW) * 160:  # a music packet still on its way
        last_music = back
        back = await b.next()
    assert back.payload == b"\x05".translate(g711.ULAW_TO_ALAW) * 160 and back.marker
    assert back.ssrc == relayed.ssrc
    assert back.sequence == (last_music.sequence + 1) & 0xFFFF
    assert 0 < (back.timestamp - last_music.timestamp) % 2**32 < 8000


async def test_a_digit_is_reported_once_at_its_end(plane: Plane, new_phone: NewPhone, events: Events) -> None:
    a, _b = await call(plane, new_phone)
    assert a.leg is not None
    for duration in (160, 320, 480):
        a.send_event(5, False, duration, 4000)
    for _ in range(3):  # the end, sent three times
        a.send_event(5, True, 800, 4000)
    for _ in range(3):
        a.send_event(11, True, 1600, 6000)  # "#", a second press
    digit = await events.wait(Digit, lambda e: isinstance(e, Digit) and e.digit == "#")
    await asyncio.sleep(0.2)
    assert events.of(Digit) == [Digit(a.leg.leg_id, "5", 100), digit]
    assert digit == Digit(a.leg.leg_id, "#", 200)


async def test_a_file_plays_to_its_end_or_loops(
    plane: Plane, new_phone: NewPhone, events: Events, tmp_path: Path
) -> None:
    a, b = await call(plane, new_phone)
    assert a.leg is not None and b.leg is not None
    short = write_wav(tmp_path / "short.wav", sine(500, 0.1))  # five frames
    plane.play(a.leg.leg_id, short, loop=False)
    leg_a = a.leg.leg_id
    await events.wait(PlayFinished, lambda e: isinstance(e, PlayFinished) and e.leg_id == leg_a)
    played = await a.gather(0.1)
    assert len(played) == 5
    assert b"".join(p.payload for p in played) == g711.encode(g711.PCMU, sine(500, 0.1))
    plane.play(b.leg.leg_id, short, loop=True)
    looped = await b.gather(0.5)
    assert len(looped) >= 15 and looped[5].payload == looped[0].payload
    assert not [e for e in events.of(PlayFinished) if isinstance(e, PlayFinished) and e.leg_id == b.leg.leg_id]
    (tmp_path / "bad.wav").write_text("no audio here")
    plane.play(b.leg.leg_id, tmp_path / "bad.wav", loop=False)
    failed = await events.wait(PlayFinished, lambda e: isinstance(e, PlayFinished) and bool(e.error))
    assert "bad.wav" in failed.error if isinstance(failed, PlayFinished) else False


async def test_the_recording_holds_each_side_on_its_channel(
    plane: Plane, new_phone: NewPhone, events: Events, tmp_path: Path
) -> None:
    a, b = await call(plane, new_phone, PCMU_ONLY, [(8, "PCMA", 8000)])
    start = time.time()
    plane.record("c1", "c1/1", tmp_path / "rec" / "c1-1.wav", start)
    await asyncio.gather(a.stream(sine(440, 1.0)), b.stream(sine(1000, 1.0), g711.PCMA, 8))
    end = time.time()
    plane.stop_recording("c1", end)
    closed = await events.wait(RecordingClosed)
    assert isinstance(closed, RecordingClosed) and closed.segment_id == "c1/1" and not closed.error
    with wave.open(str(closed.path)) as file:
        assert (file.getnchannels(), file.getframerate()) == (2, 8000)
        assert file.getnframes() == closed.frames == round((end - start) * 8000)
        audio = np.frombuffer(file.readframes(file.getnframes()), dtype="<i2").reshape(-1, 2)
    middle = slice(1600, 6400)
    assert abs(dominant_frequency(audio[middle, 0]) - 440) < 5  # channel 1: what A (home) says
    assert abs(dominant_frequency(audio[middle, 1]) - 1000) < 5  # channel 2: what A hears


async def test_cuts_give_files_exactly_as_long_as_their_segments(
    plane: Plane, new_phone: NewPhone, events: Events, tmp_path: Path
) -> None:
    a, _b = await call(plane, new_phone)
    start = time.time()
    plane.record("c1", "c1/1", tmp_path / "1.wav", start)
    streaming = asyncio.create_task(a.stream(sine(440, 1.6)))
    await asyncio.sleep(0.7)
    cut = time.time() - 0.05  # a moment ago: audio already buffered past it goes to the next file
    plane.record("c1", "c1/2", tmp_path / "2.wav", cut)
    await streaming
    end = time.time() + 0.2  # a little ahead: the cut waits for it
    plane.stop_recording("c1", end)
    await events.wait(RecordingClosed, lambda e: isinstance(e, RecordingClosed) and e.segment_id == "c1/2")
    first, second = events.of(RecordingClosed)
    assert isinstance(first, RecordingClosed) and isinstance(second, RecordingClosed)
    assert first.frames == round((cut - start) * 8000)
    assert second.frames == round((end - cut) * 8000)
    for closed in (first, second):
        with wave.open(str(closed.path)) as file:
            assert file.getnframes() == closed.frames
            audio = np.frombuffer(file.readframes(file.getnframes()), dtype="<i2").reshape(-1, 2)
        assert np.abs(audio[800:2400, 0]).max() > 5000  # the tone runs across the cut


async def test_a_gap_in_the_audio_is_silence_in_the_file(
    plane: Plane, new_phone: NewPhone, events: Events, tmp_path: Path
) -> None:
    a, _b = await call(plane, new_phone)
    start = time.time()
    plane.record("c1", "c1/1", tmp_path / "gap.wav", start)
    await a.stream(sine(440, 0.4))
    await asyncio.sleep(0.6)
    await a.stream(sine(440, 0.4))
    plane.stop_recording("c1", time.time())
    closed = await events.wait(RecordingClosed)
    assert isinstance(closed, RecordingClosed)
    with wave.open(str(closed.path)) as file:
        audio = np.frombuffer(file.readframes(file.getnframes()), dtype="<i2").reshape(-1, 2)[:, 0]
    assert 1.35 * 8000 < len(audio) < 1.6 * 8000
    assert np.abs(audio[500:3000]).max() > 5000
    assert np.abs(audio[4000:7500]).max() == 0  # 0.5 s to 0.94 s: no packets came
    assert np.abs(audio[8500:10500]).max() > 5000


async def test_a_killed_worker_leaves_a_valid_wav(plane: Plane, new_phone: NewPhone, tmp_path: Path) -> None:
    a, _b = await call(plane, new_phone)
    path = tmp_path / "killed.wav"
    plane.record("c1", "c1/1", path, time.time())
    await a.stream(sine(440, 1.3))
    os.kill(plane.workers[0].process.pid, signal.SIGKILL)
    await plane.workers[0].process.wait()
    with wave.open(str(path)) as file:
        frames = file.getnframes()
        assert file.getnchannels() == 2 and 0.4 * 8000 < frames < 1.3 * 8000
        audio = np.frombuffer(file.readframes(frames), dtype="<i2").reshape(-1, 2)
    assert len(audio) == frames and np.abs(audio[:, 0]).max() > 5000
    assert path.stat().st_size == wav.HEADER_SIZE + frames * 4
    assert wav.repair(path) == frames


async def test_an_unwritable_recording_fails_and_the_relay_goes_on(
    plane: Plane, new_phone: NewPhone, events: Events, tmp_path: Path
) -> None:
    a, b = await call(plane, new_phone)
    (tmp_path / "taken").write_text("a file where a directory should be")
    plane.record("c1", "c1/1", tmp_path / "taken" / "c1.wav", time.time())
    failed = await events.wait(RecordingFailed)
    assert isinstance(failed, RecordingFailed) and failed.segment_id == "c1/1" and failed.error
    a.send(b"\x44" * 160)
    assert (await b.next()).payload == b"\x44" * 160
    await counted(plane, "recording_errors", 1)


async def test_a_disowned_leg_is_freed_once_idle(new_phone: NewPhone) -> None:
    events = Events()
    plane = await started(events, idle_seconds=0.6)
    try:
        a = await new_phone()
        busy, quiet = await plane.open_legs(2, "gw-1")
        (other_owner,) = await plane.open_legs(1, "gw-2")
        a.attach(plane, busy, PCMU_ONLY)
        plane.disown("gw-1")
        await plane.settled()
        started_at = time.monotonic()
        while time.monotonic() - started_at < 1.5:  # RTP keeps the busy leg alive
            a.send(b"\x01" * 160)
            await asyncio.sleep(0.05)
        assert events.of(LegFreed) == [LegFreed(quiet.leg_id, "idle")]
        await events.wait(LegFreed, lambda e: isinstance(e, LegFreed) and e.leg_id == busy.leg_id, timeout=3)
        assert [leg.leg_id for leg in await plane.legs()] == [other_owner.leg_id]
    finally:
        await plane.stop()


WORKERS_SCRIPT = """
import asyncio, os, sys
from pathlib import Path
from services.media.plane import Plane, MUSIC_ON_HOLD

async def main():
    plane = await Plane.start(address="127.0.0.1", ports=(int(sys.argv[1]), int(sys.argv[1]) + 19), workers=2,
                              music_on_hold=MUSIC_ON_HOLD, on_event=print)
    legs = await plane.open_legs(1, "gw")
    print(" ".join(str(w.process.pid) for w in plane.workers), legs[0].rtp_port, flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


async def test_workers_end_when_the_media_service_is_killed(tmp_path: Path) -> None:
    from tests.unit.media.phones import port_range

    first, _ = port_range()
    service = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        WORKERS_SCRIPT,
        str(first),
        stdout=asyncio.subprocess.PIPE,
        cwd=REPOSITORY,
    )
    assert service.stdout is not None
    line = (await asyncio.wait_for(service.stdout.readline(), 10)).split()
    pids, port = [int(pid) for pid in line[:2]], int(line[2])
    with pytest.raises(OSError):  # the leg holds its port
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).bind(("127.0.0.1", port))
    service.kill()
    await service.wait()
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    assert not any(_alive(pid) for pid in pids)
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", port))  # free again
    probe.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (the killed service never reaped it) has ended too.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[-1].split()[0] != "Z"


async def test_two_workers_share_the_ports_and_relay_across(new_phone: NewPhone, tmp_path: Path) -> None:
    events = Events()
    plane = await started(events, workers=2)
    try:
        (leg_a,) = await plane.open_legs(1, "gw")
        (leg_b,) = await plane.open_legs(1, "gw")  # the least loaded worker: the other one
        assert {leg_a.leg_id[:3], leg_b.leg_id[:3]} == {"w0-", "w1-"}
        for leg, worker in ((leg_a, plane.workers[0]), (leg_b, plane.workers[1])):
            assert worker.ports[0] <= leg.rtp_port < worker.ports[1]
        a, b = await new_phone(), await new_phone()
        a.attach(plane, leg_a, PCMU_ONLY)
        b.attach(plane, leg_b, [(8, "PCMA", 8000)])
        await plane.settled()
        b.send(b"\x55" * 160, 8)  # before the connect: no partner yet
        await asyncio.sleep(0.05)
        plane.connect("c1", leg_a.leg_id, leg_b.leg_id)
        plane.record("c1", "c1/1", tmp_path / "c1.wav", time.time())
        await plane.settled()
        a.send(b"\x11" * 160)
        got = await b.next()
        assert (got.payload_type, got.payload) == (8, b"\x11".translate(g711.ULAW_TO_ALAW) * 160)
        b.send(b"\x22" * 160, 8)
        assert (await a.next()).payload == b"\x22".translate(g711.ALAW_TO_ULAW) * 160
        stats = {leg.leg_id: leg for leg in await plane.legs()}
        assert stats[leg_a.leg_id].worker == stats[leg_b.leg_id].worker == 0  # B moved to A's worker
        assert stats[leg_b.leg_id].rtp_port == leg_b.rtp_port and stats[leg_b.leg_id].packets_in == 2
        plane.close_legs([leg_a.leg_id, leg_b.leg_id])
        assert await plane.legs() == []
    finally:
        await plane.stop()
    closed = events.of(RecordingClosed)
    assert len(closed) == 1 and isinstance(closed[0], RecordingClosed) and closed[0].frames > 0
