"""Call recordings: one two-channel WAV per segment, placed by the audio's arrival time.

Channel 1 is what goes out of the call's other leg (what this server's party says, or the music
played to the other party), channel 2 what goes out of the home leg (what this server's party
hears): what was actually sent, after music and transcoding, so the file is what the parties heard.

A packet's audio lands where its arrival time says, relative to the segment's start: next to the
previous packet when it arrives about when expected (jitter does not chop the audio), further on
after a gap (a stretch without packets is silence, so the file's time is the call's time). Payloads
wait undecoded and are decoded in one batch per flush (a numpy lookup costs ~4 µs per packet, ~0.5
µs in batches). About every half second the frames older than ``HOLD`` seconds are written and the
header rewritten, so a killed worker leaves a valid file. A cut at time T ends the file at exactly
(T - start) * 8000 frames; audio past T starts the next file.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from services.media import g711
from services.media.wav import RATE, WavWriter

_log = logging.getLogger(__name__)

HOME_CHANNEL, OTHER_CHANNEL = 1, 0  # 0-based: channel 1 of the file is the other leg's output
HOLD = 0.3  # seconds of audio kept in memory for late packets before it is written
FLUSH_EVERY = 0.5
FLUSH_SLICES = 10
# A packet within this many samples of where the previous one ended follows it directly.
JITTER = 480
# Audio more than this many samples ahead of the clock (a burst after a stall) is dropped.
AHEAD = 1600


@dataclass
class Recording:
    """One segment's file and the audio not yet written to it."""

    call_id: str
    segment_id: str
    path: Path
    start: float
    writer: WavWriter
    flushed: int = 0  # frames written to the file
    buffer: np.ndarray = field(default_factory=lambda: np.zeros((RATE, 2), dtype=np.int16))
    next_frame: list[int] = field(default_factory=lambda: [0, 0])
    pending: list[tuple[int, int, str, bytes]] = field(default_factory=list)  # channel, frame, law, payload

    def add(self, channel: int, law: str, payload: bytes, arrival: float) -> None:
        count = len(payload)
        at = round((arrival - self.start) * RATE) - count
        frame = self.next_frame[channel]
        if at > frame + JITTER:
            frame = at  # a gap: what lies between stays silent
        elif frame > at + AHEAD:
            return
        frame = max(frame, self.flushed)
        self.pending.append((channel, frame, law, payload))
        self.next_frame[channel] = frame + count

    def settle(self) -> None:
        """Decodes the waiting payloads (one lookup per law) into the buffer."""
        if not self.pending:
            return
        end = max(frame + len(payload) for _channel, frame, _law, payload in self.pending) - self.flushed
        if end > len(self.buffer):
            grown = np.zeros((max(end, 2 * len(self.buffer)), 2), dtype=np.int16)
            grown[: len(self.buffer)] = self.buffer
            self.buffer = grown
        for law in g711.LAWS:
            items = [item for item in self.pending if item[2] == law]
            if not items:
                continue
            samples = g711.decode(law, b"".join(item[3] for item in items))
            size = len(items[0][3])
            if all(len(item[3]) == size for item in items):
                # The usual case (every packet 20 ms): one indexed store for all of them.
                starts = np.fromiter((item[1] for item in items), dtype=np.int64, count=len(items)) - self.flushed
                channels = np.fromiter((item[0] for item in items), dtype=np.int64, count=len(items))
                rows = (starts[:, None] + np.arange(size)).ravel()
                self.buffer[rows, np.repeat(channels, size)] = samples
                continue
            offset = 0
            for channel, frame, _law, payload in items:
                start = frame - self.flushed
                self.buffer[start : start + len(payload), channel] = samples[offset : offset + len(payload)]
                offset += len(payload)
        self.pending.clear()

    def write_until(self, frame: int) -> int:
        """Writes the frames up to ``frame`` (silence where nothing came); returns the bytes written."""
        count = frame - self.flushed
        if count <= 0:
            return 0
        self.settle()
        chunk = np.zeros((count, 2), dtype=np.int16)
        have = min(count, len(self.buffer))
        chunk[:have] = self.buffer[:have]
        self.writer.write(chunk.astype("<i2").tobytes())
        self.buffer = np.concatenate([self.buffer[have:], np.zeros((have, 2), dtype=np.int16)])
        self.flushed = frame
        return count * 4

    def tail(self, frame: int) -> np.ndarray:
        """The audio past ``frame`` (taken back from the file if already written), removed from here."""
        self.settle()
        if frame < self.flushed:
            taken = np.frombuffer(self.writer.take_tail(frame), dtype="<i2").reshape(-1, 2)
            self.buffer = np.concatenate([taken, self.buffer])
            self.flushed = frame
        end = max(*self.next_frame, frame) - self.flushed
        start = frame - self.flushed
        return self.buffer[start:end].copy()


class Recorder:
    """The recordings of one worker's calls; reports through ``emit`` and counts in ``counters``.

    The audio comes in batches (``taps``) that the relay kept, handed over by the worker every few
    tens of ms and by ``drain(call_id)`` (``None``: every call) before a cut, so that no audio
    reaches a file after its time. Work on the relay's loop is done in small pieces (a recording at
    a time, the loop's I/O in between): a packet waits for the piece in progress, not for all.
    """

    def __init__(
        self,
        emit: Callable[[dict[str, object]], None],
        counters: dict[str, int],
        drain: Callable[[str | None], None] = lambda call_id: None,
    ):
        self.emit = emit
        self.counters = counters
        self.drain = drain
        self.recordings: dict[str, Recording] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._flush_forever())

    def record(self, call_id: str, segment_id: str, path: Path, at: float) -> None:
        """Starts (or cuts to) a new file at wall time ``at``; a time ahead is waited for."""
        delay = at - time.time()
        if delay > 0.001:
            asyncio.get_running_loop().call_later(delay, self._cut, call_id, at, (segment_id, path))
        else:
            self._cut(call_id, at, (segment_id, path))

    def stop(self, call_id: str, at: float) -> None:
        delay = at - time.time()
        if delay > 0.001:
            asyncio.get_running_loop().call_later(delay, self._cut, call_id, at, None)
        else:
            self._cut(call_id, at, None)

    def taps(
        self, call_id: str, channel: int, taps: Sequence[tuple[float, int, bytes]], names: Mapping[int, str]
    ) -> None:
        """Audio sent out of one of the call's legs: (wall time, encoding id, payload), in order."""
        recording = self.recordings.get(call_id)
        if recording is not None:
            for arrival, encoding, payload in taps:
                recording.add(channel, names[encoding], payload, arrival)

    def close_all(self, error: str) -> None:
        self.drain(None)
        now = time.time()
        for call_id in list(self.recordings):
            self._cut(call_id, now, None, error)
        if self._task is not None:
            self._task.cancel()

    def flush(self) -> None:
        self.drain(None)
        now = time.time()
        for recording in list(self.recordings.values()):
            self._write(recording, now)

    def _cut(self, call_id: str, at: float, then: tuple[str, Path] | None, error: str = "") -> None:
        self.drain(call_id)
        carried = np.zeros((0, 2), dtype=np.int16)
        next_frame = [0, 0]
        old = self.recordings.pop(call_id, None)
        if old is not None:
            frames = max(round((at - old.start) * RATE), 0)
            try:
                carried = old.tail(frames)
                next_frame = [max(frame - frames, 0) for frame in old.next_frame]
                self.counters["bytes_recorded"] += old.write_until(frames)
                old.writer.close()
            except OSError as failure:
                self._fail(old, failure)
            else:
                self.emit(
                    {
                        "event": "recording_closed",
                        "call_id": call_id,
                        "segment_id": old.segment_id,
                        "path": str(old.path),
                        "frames": old.writer.frames,
                        "error": error,
                    }
                )
        if then is None:
            return
        segment_id, path = then
        try:
            writer = WavWriter(path)
        except OSError as failure:
            self._report_failure(call_id, segment_id, path, failure)
            return
        recording = Recording(call_id, segment_id, path, at, writer, next_frame=next_frame)
        if len(carried):
            recording.buffer = np.concatenate([carried, np.zeros((RATE, 2), dtype=np.int16)])
        self.recordings[call_id] = recording

    def _fail(self, recording: Recording, error: OSError) -> None:
        recording.writer.close()
        self.recordings.pop(recording.call_id, None)
        self._report_failure(recording.call_id, recording.segment_id, recording.path, error)

    def _report_failure(self, call_id: str, segment_id: str, path: Path, error: OSError) -> None:
        self.counters["recording_errors"] += 1
        reason = f"{path}: {error.strerror or error}"
        _log.error("recording %s stopped: %s", segment_id, reason)
        self.emit({"event": "recording_failed", "call_id": call_id, "segment_id": segment_id, "error": reason})

    async def _flush_forever(self) -> None:
        """Each recording is written about every FLUSH_EVERY, a slice of them at a time: writing
        them all at once stalled the relay (its packets wait) for as long as it took."""
        turn = 0
        while True:
            await asyncio.sleep(FLUSH_EVERY / FLUSH_SLICES)
            turn = (turn + 1) % FLUSH_SLICES
            for recording in [r for i, r in enumerate(self.recordings.values()) if i % FLUSH_SLICES == turn]:
                if self.recordings.get(recording.call_id) is recording:  # not cut meanwhile
                    self._write(recording, time.time())
                await asyncio.sleep(0)

    def _write(self, recording: Recording, now: float) -> None:
        upto = int((now - HOLD - recording.start) * RATE)
        try:
            self.counters["bytes_recorded"] += recording.write_until(upto)
        except OSError as error:
            self._fail(recording, error)
