"""The recorder on its own, with arrival times given: placement, gaps, cuts, errors."""

from __future__ import annotations

import time
import wave
from pathlib import Path

import numpy as np

from services.media import g711
from services.media.recorder import HOME_CHANNEL, OTHER_CHANNEL, Recorder
from tests.unit.media.phones import dominant_frequency, sine


def read(path: Path) -> np.ndarray:
    with wave.open(str(path)) as file:
        assert (file.getnchannels(), file.getsampwidth(), file.getframerate()) == (2, 2, 8000)
        return np.frombuffer(file.readframes(file.getnframes()), dtype="<i2").reshape(-1, 2)


def feed(recorder: Recorder, channel: int, samples: np.ndarray, first_arrival: float) -> None:
    """Packets of 20 ms as if each arrived right after its audio."""
    recording = next(iter(recorder.recordings.values()))
    for index in range(len(samples) // 160):
        payload = g711.encode(g711.PCMU, samples[index * 160 : (index + 1) * 160])
        recording.add(channel, g711.PCMU, payload, first_arrival + (index + 1) * 0.02)


def test_a_stretch_without_packets_is_silence(tmp_path: Path) -> None:
    events: list[dict[str, object]] = []
    recorder = Recorder(events.append, {"bytes_recorded": 0, "recording_errors": 0})
    start = time.time() - 3.0
    recorder.record("c", "c/1", tmp_path / "c1.wav", start)
    feed(recorder, OTHER_CHANNEL, sine(440, 0.5), start)
    feed(recorder, OTHER_CHANNEL, sine(440, 0.5), start + 1.5)  # nothing from 0.5 s to 1.5 s
    recorder.stop("c", start + 2.0)
    audio = read(tmp_path / "c1.wav")
    assert len(audio) == 16000
    level = [np.abs(audio[i : i + 800, 0]).max() for i in range(0, 16000, 800)]  # per 0.1 s
    assert min(level[0:5]) > 5000 and min(level[15:20]) > 5000
    assert max(level[6:14]) == 0
    assert np.abs(audio[:, 1]).max() == 0  # nothing was heard by the home party
    assert events[-1]["frames"] == 16000


def test_jitter_does_not_chop_the_audio(tmp_path: Path) -> None:
    recorder = Recorder(lambda event: None, {"bytes_recorded": 0, "recording_errors": 0})
    start = time.time() - 2.0
    recorder.record("c", "c/1", tmp_path / "c1.wav", start)
    recording = recorder.recordings["c"]
    tone = sine(1000, 1.0)
    jitter = np.random.default_rng(1).uniform(0, 0.03, 50)
    for index in range(50):
        payload = g711.encode(g711.PCMU, tone[index * 160 : (index + 1) * 160])
        recording.add(HOME_CHANNEL, g711.PCMU, payload, start + (index + 1) * 0.02 + jitter[index])
    recorder.stop("c", start + 1.2)
    audio = read(tmp_path / "c1.wav")[:, 1]
    decoded = g711.decode(g711.PCMU, g711.encode(g711.PCMU, tone))
    assert np.array_equal(audio[: len(decoded)], decoded)  # every packet right after the one before


def test_a_cut_in_the_past_ends_the_file_exactly_and_moves_the_rest_to_the_next(tmp_path: Path) -> None:
    events: list[dict[str, object]] = []
    recorder = Recorder(events.append, {"bytes_recorded": 0, "recording_errors": 0})
    start = time.time() - 2.5
    recorder.record("c", "c/1", tmp_path / "c1.wav", start)
    feed(recorder, OTHER_CHANNEL, sine(440, 1.0), start)
    feed(recorder, OTHER_CHANNEL, sine(1000, 1.0), start + 1.0)
    recorder.flush()  # 2.2 s written already: the cut takes the file back
    cut = start + 1.0
    recorder.record("c", "c/2", tmp_path / "c2.wav", cut)
    recorder.stop("c", cut + 1.25)
    first, second = read(tmp_path / "c1.wav"), read(tmp_path / "c2.wav")
    assert len(first) == 8000 and len(second) == 10000
    assert [event["frames"] for event in events] == [8000, 10000]
    assert dominant_frequency(first[:, 0]) == 440
    assert abs(dominant_frequency(second[:8000, 0]) - 1000) < 2
    assert np.abs(second[8200:, 0]).max() == 0


def test_an_unwritable_place_reports_the_failure(tmp_path: Path) -> None:
    events: list[dict[str, object]] = []
    counters = {"bytes_recorded": 0, "recording_errors": 0}
    recorder = Recorder(events.append, counters)
    (tmp_path / "file").write_text("a file, not a directory")
    recorder.record("c", "c/1", tmp_path / "file" / "c1.wav", time.time())
    assert events == [{"event": "recording_failed", "call_id": "c", "segment_id": "c/1", "error": events[0]["error"]}]
    assert str(tmp_path / "file" / "c1.wav") in str(events[0]["error"])
    assert counters["recording_errors"] == 1 and not recorder.recordings
